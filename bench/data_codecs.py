"""``python -m bench.data_codecs [--tiny] [--sizes 100KB,10MB,1GB]``: data codecs beside the references.

Measured side by side in one process, for a float64 array and a float64 DataFrame (8 columns)
of each size: writing a value to a file with its codec, against ``pickle.dumps`` + a file
write and ``np.save``; reading it back (whole, and memory-mapped), against ``pickle.load``,
``np.load`` and a ``joblib.Memory`` cache hit with and without ``mmap_mode="r"``. Then the
peak extra memory while writing a value of the largest size (each in a fresh subprocess), the
content fingerprint's throughput, and the time of a preview of large values.

Figures are medians over repeats (fewer for 1 GB values), with the range. Files go to
``bench/out`` next to the repository, on the disk a user's store would use. Each timed write
starts after an untimed ``os.sync``, so it is billed for its own writing into the page cache,
not for flushing the previous one; the page cache is warm for every reader alike (each file
was just written). Other work on the machine scatters figures: re-run a suspicious one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench._measure import timed
from bench._report import load

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"100KB": 100_000, "10MB": 10_000_000, "1GB": 1_000_000_000}


def repeats_for(nbytes: int, tiny: bool) -> int:
    if tiny:
        return 2
    if nbytes >= 500_000_000:
        return 5
    if nbytes >= 5_000_000:
        return 9
    return 31


@dataclasses.dataclass
class Figure:
    """The timings of one operation on one value."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def text(self) -> str:
        if len(self.times) == 1:
            return seconds(self.median)
        return f"{seconds(self.median)} ({seconds(min(self.times))}-{seconds(max(self.times))})"


def seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def make_value(kind: str, nbytes: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(0)
    if kind == "array":
        return rng.random(nbytes // 8)
    import pandas as pd

    rows = nbytes // 64
    return pd.DataFrame({f"c{i}": rng.random(rows) for i in range(8)})


def drop(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def measure(repeats: int, fn: Callable[[], Any], before: Callable[[], Any] | None = None) -> Figure:
    """Time ``fn`` ``repeats`` times; ``before`` runs untimed before each (e.g. removing the last file)."""
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        times.append(timed(fn))
    return Figure(times)


def codec_rows(kind: str, label: str, nbytes: int, workdir: str, tiny: bool) -> dict[str, Figure]:
    """Every write and read of one value, its codec beside the references."""
    import joblib
    import numpy as np

    from nbdurable._codecs import codec_for

    value = make_value(kind, nbytes)
    codec = codec_for(value)
    assert codec is not None
    n = repeats_for(nbytes, tiny)
    base = os.path.join(workdir, f"{kind}-{label}")
    path = base + codec.suffix
    pickle_path = base + ".pkl"
    npy_path = base + ".ref.npy"
    figures: dict[str, Figure] = {}

    def write_codec() -> None:
        with open(path, "wb") as f:
            codec.write(value, f)

    def write_pickle() -> None:
        with open(pickle_path, "wb") as f:
            f.write(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))

    # Writes alternate, so that a slow moment of the disk falls on every method alike, and
    # each starts with no dirty pages left by the last (os.sync, untimed): otherwise a 1 GB
    # write is billed for the writeback of the one before it.
    codec_times, pickle_times, npy_times = [], [], []
    for _ in range(n):
        drop(path)
        os.sync()
        codec_times.append(timed(write_codec))
        drop(pickle_path)
        os.sync()
        pickle_times.append(timed(write_pickle))
        if kind == "array":
            drop(npy_path)
            os.sync()
            npy_times.append(timed(np.save, npy_path, value))
    figures["write: codec"] = Figure(codec_times)
    figures["write: pickle.dumps + file write"] = Figure(pickle_times)
    if npy_times:
        figures["write: np.save"] = Figure(npy_times)

    def read_pickle() -> Any:
        with open(pickle_path, "rb") as f:
            return pickle.load(f)

    figures["read: codec"] = measure(n, lambda: codec.read(path, mmap=False))
    figures["read: codec, mmap"] = measure(n, lambda: codec.read(path, mmap=True))
    figures["read: pickle.load"] = measure(n, read_pickle)
    if kind == "array":
        figures["read: np.load"] = measure(n, lambda: np.load(npy_path))
        figures["read: np.load, mmap_mode='r'"] = measure(n, lambda: np.load(npy_path, mmap_mode="r"))

    for mmap_mode, name in ((None, "read: joblib.Memory hit"), ("r", "read: joblib.Memory hit, mmap_mode='r'")):
        memory = joblib.Memory(
            os.path.join(workdir, f"joblib-{kind}-{label}-{mmap_mode}"), mmap_mode=mmap_mode, verbose=0
        )

        def produce(key: str) -> Any:
            return value

        cached = memory.cache(produce)
        cached("k")  # the first call stores
        figures[name] = measure(n, lambda cached=cached: cached("k"))
        memory.clear(warn=False)
    for p in (path, pickle_path, npy_path):
        drop(p)
    return figures


PEAK_SCRIPT = """
import pickle, sys
sys.path.insert(0, {root!r})
from bench.data_codecs import make_value
from nbdurable._codecs import codec_for
kind, method, nbytes, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
value = make_value(kind, nbytes)

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current size: building the value is not counted
before = status("VmRSS")
with open(path, "wb") as f:
    if method == "codec":
        codec_for(value).write(value, f)
    else:
        f.write(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
print(before, status("VmHWM"))
"""


def peak_rows(nbytes: int, workdir: str) -> list[tuple[str, str]]:
    """Peak memory while writing, each in a fresh interpreter (Linux's VmHWM, reset after building the value)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return [("memory while writing", "not measured: needs Linux's /proc/self/clear_refs")]
    rows = []
    for kind in ("array", "frame"):
        for method in ("codec", "pickle"):
            path = os.path.join(workdir, f"peak-{kind}-{method}")
            out = subprocess.run(
                [sys.executable, "-c", PEAK_SCRIPT.format(root=ROOT), kind, method, str(nbytes), path],
                capture_output=True,
                text=True,
                check=True,
            )
            drop(path)
            before, peak = (int(x) for x in out.stdout.split())
            figure = (
                f"peak RSS {peak / 1e9:.2f} GB = {peak / nbytes:.2f}x the value's {nbytes / 1e9:.2f} GB "
                f"({(peak - before) / 1e6:,.0f} MB above the {before / 1e9:.2f} GB before writing)"
            )
            rows.append((f"{kind}: memory while writing, {method}", figure))
    return rows


def hashing_rows(nbytes: int, tiny: bool) -> list[tuple[str, str]]:
    import numpy as np
    import xxhash

    from nbdurable._hashing import content_digest

    n = repeats_for(nbytes, tiny)
    array = make_value("array", nbytes)
    frame = make_value("frame", nbytes)
    raw = memoryview(array).cast("B")
    rows = []
    for name, fn, size in (
        ("content_digest(array)", lambda: content_digest(array), array.nbytes),
        ("content_digest(DataFrame)", lambda: content_digest(frame), array.nbytes),
        ("content_digest(strided view)", lambda: content_digest(array[::2]), array.nbytes // 2),
        ("raw xxh3_128 of the buffer", lambda: xxhash.xxh3_128(raw).digest(), array.nbytes),
        ("raw blake2b of the buffer", lambda: hashlib.blake2b(raw, digest_size=16).digest(), array.nbytes),
    ):
        figure = measure(n, fn)
        rows.append((f"fingerprint: {name}", f"{size / figure.median / 1e9:.1f} GB/s ({figure.text()})"))
    del np
    return rows


def preview_rows(tiny: bool) -> list[tuple[str, str]]:
    import numpy as np
    import pandas as pd

    from nbdurable._preview import preview

    class SlowRepr:
        def __repr__(self) -> str:
            time.sleep(10)
            return "slow"

    deep: Any = "leaf"
    for _ in range(10_000):
        deep = {"k": deep, "l": [deep]}
    count = 1_000 if tiny else 1_000_000
    values = {
        "1 GB array (a broadcast view)": np.broadcast_to(np.float64(0), (1 << 27,)),
        f"list of {count:,} ints": list(range(count)),
        f"bytes of {count * 1000:,} B": bytes(count * 1000),
        "dict nested 10,000 deep": deep,
        "object whose repr takes 10 s": SlowRepr(),
        "DataFrame 1,000,000 x 12": pd.DataFrame(np.zeros((1000 if tiny else 1_000_000, 12)), copy=False),
        f"str of {count * 10:,} chars": "x" * (count * 10),
    }
    rows = []
    for name, value in values.items():
        calls = 1000
        times = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                preview(value)
            times.append((time.perf_counter() - start) / calls)
        rows.append((f"preview: {name}", f"{statistics.median(times) * 1e6:.1f} µs -> {preview(value)!r}"))
    return rows


def table(labels: list[str], results: dict[str, dict[str, dict[str, Figure]]]) -> str:
    lines = []
    for kind in ("array", "frame"):
        title = "float64 array" if kind == "array" else "float64 DataFrame, 8 columns"
        lines.append(f"\n### {title}\n")
        lines.append("| operation | " + " | ".join(labels) + " |")
        lines.append("| --- | " + " | ".join("---" for _ in labels) + " |")
        names = list(results[kind][labels[0]])
        lines.extend(
            f"| {name} | " + " | ".join(results[kind][label][name].text() for label in labels) + " |" for name in names
        )
        lines.append("")
        lines.append("| ratio (medians) | " + " | ".join(labels) + " |")
        lines.append("| --- | " + " | ".join("---" for _ in labels) + " |")
        pairs = [
            ("codec write / pickle.dumps + file write", "write: codec", "write: pickle.dumps + file write"),
            ("codec write / np.save", "write: codec", "write: np.save"),
            ("codec read / joblib.Memory hit", "read: codec", "read: joblib.Memory hit"),
            ("codec mmap read / joblib.Memory hit", "read: codec, mmap", "read: joblib.Memory hit"),
            (
                "codec mmap read / joblib.Memory hit, mmap_mode='r'",
                "read: codec, mmap",
                "read: joblib.Memory hit, mmap_mode='r'",
            ),
            ("codec read / pickle.load", "read: codec", "read: pickle.load"),
        ]
        for title_, ours, theirs in pairs:
            if theirs not in results[kind][labels[0]]:
                continue
            cells = [
                f"{results[kind][label][ours].median / results[kind][label][theirs].median:.2f}x" for label in labels
            ]
            lines.append(f"| {title_} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.data_codecs", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="100 KB values, two repeats: a smoke check")
    parser.add_argument("--sizes", default="100KB,10MB,1GB", help="comma-separated, of " + ", ".join(SIZES))
    args = parser.parse_args(argv)
    labels = ["100KB"] if args.tiny else [s.strip() for s in args.sizes.split(",")]
    largest = max(SIZES[label] for label in labels)
    base = os.path.join(ROOT, "bench", "out")
    os.makedirs(base, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="data-", dir=base)
    load_before = load()
    results: dict[str, dict[str, dict[str, Figure]]] = {"array": {}, "frame": {}}
    extra: list[tuple[str, str]] = []
    try:
        for label in labels:
            for kind in ("array", "frame"):
                print(f"bench.data_codecs: {kind} {label}...", file=sys.stderr, flush=True)
                results[kind][label] = codec_rows(kind, label, SIZES[label], workdir, args.tiny)
        print("bench.data_codecs: peak memory, fingerprints, previews...", file=sys.stderr, flush=True)
        extra += peak_rows(largest, workdir)
        extra += hashing_rows(largest, args.tiny)
        extra += preview_rows(args.tiny)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    print(
        f"## Data codecs (python {sys.version.split()[0]}, numpy {np.__version__}, pandas {pd.__version__}, "
        f"pyarrow {pa.__version__}; {os.cpu_count()} CPUs; load {load_before} before, {load()} after)"
    )
    print(table(labels, results))
    print(f"\n### Memory, fingerprints and previews ({', '.join(labels)} values; largest for memory and hashing)\n")
    print("| what | figure |")
    print("| --- | --- |")
    for name, figure in extra:
        print(f"| {name} | {figure} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
