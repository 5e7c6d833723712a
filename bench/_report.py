"""The machine description, the terminal table and the Markdown figures section."""

from __future__ import annotations

import datetime
import os
import platform
import sqlite3
import sys
from importlib import metadata

from bench._measure import Row

BEGIN = "<!-- figures:begin (python -m bench --write docs/BENCHMARKS.md rewrites this section) -->"
END = "<!-- figures:end -->"
COMMAND = "make bench    # = .venv/bin/python -m bench --write docs/BENCHMARKS.md"
PACKAGES = ("nbdurable", "diskcache", "pydantic", "dbos", "SQLAlchemy", "joblib", "ipywidgets", "distributed", "numpy")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _filesystem(path: str) -> str:
    """The filesystem type the stores were written to (tmpfs and disks differ a lot for writes)."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                mount = parts[1]
                if path.startswith(mount) and len(mount) > len(best):
                    best, kind = mount, parts[2]
    except OSError:
        pass
    return kind


def load() -> str:
    """The 1-minute load average: other work on the machine scatters the figures."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "unknown"


def machine(workdir: str, load_before: str) -> dict[str, str]:
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    return {
        "CPU": f"{_cpu_model()}, {os.cpu_count()} cores visible",
        "OS": platform.platform(),
        "Python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "SQLite": sqlite3.sqlite_version,
        "Packages": ", ".join(versions),
        "Stores on": f"{_filesystem(os.path.realpath(workdir))} (bench/out/ under the repository)",
        "Load average (1 min)": f"{load_before} before, {load()} after",
    }


def table(rows: list[Row], info: dict[str, str], started: datetime.datetime, *, tiny: bool) -> str:
    """The figures as a plain-text table, with the detail lines under it."""
    head = ("#", "row", "figure", "target", "result")
    # Tiny figures are noise: say the row ran, not whether it met a target.
    body = [(r.number, r.title, r.figure, r.target, "ran" if tiny and r.figure != "-" else r.result) for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [
        f"nbdurable benchmarks, {started:%Y-%m-%d %H:%M} UTC"
        + (" (TINY sizes: a smoke check, not figures)" if tiny else ""),
        *(f"  {k}: {v}" for k, v in info.items()),
        "",
        fmt.format(*head),
        fmt.format(*("-" * w for w in widths)),
    ]
    lines += [fmt.format(*line) for line in body]
    lines.append("")
    for r in rows:
        if r.detail:
            lines.append(f"[{r.number}] {r.detail}")
        if r.why:
            lines.append(f"[{r.number}] why: {r.why}")
    return "\n".join(lines)


def markdown(rows: list[Row], info: dict[str, str], started: datetime.datetime) -> str:
    lines = [
        BEGIN,
        "",
        f"Measured {started:%Y-%m-%d %H:%M} UTC. Reproduce with:",
        "",
        "```sh",
        COMMAND,
        "```",
        "",
        *(f"- **{k}**: {v}" for k, v in info.items()),
        "",
        "| # | row | figure | target | result |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r.number} | {r.title} | {r.figure} | {r.target} | {r.result} |" for r in rows]
    lines += ["", "Details (medians, with the range over the repeats):", ""]
    for r in rows:
        text = r.detail
        if r.why:
            text = f"{text}. **Why {r.result}:** {r.why}" if text else f"**{r.result.capitalize()}:** {r.why}"
        lines.append(f"- **{r.number}**: {text}")
    lines += ["", END]
    return "\n".join(lines)


def write(path: str, rows: list[Row], info: dict[str, str], started: datetime.datetime) -> None:
    """Replace the figures section of ``path`` (between the markers), keeping the prose around it."""
    section = markdown(rows, info, started)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    start = text.find(BEGIN)
    stop = text.find(END)
    if start < 0 or stop < start:
        msg = f"{path} has no figures section; add the two marker lines {BEGIN!r} and {END!r}"
        raise SystemExit(msg)
    text = text[:start] + section + text[stop + len(END) :]
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
