"""``python -m nbdurable``: the demo, and installing the kernelspec."""

from __future__ import annotations

import argparse
import sys
import tempfile


def _demo() -> int:
    import nbdurable

    store = tempfile.mkdtemp(prefix="nbdurable-demo-")
    client = nbdurable.Client("demo", store=store, backoff=nbdurable.Backoff(initial=0.05, jitter=0))
    attempts = {"flaky": 0}

    @client.create_function(fn_id="pipeline", retries=3)
    def pipeline(ctx: nbdurable.ContextSync) -> int:
        rows = ctx.step.run("extract", lambda: list(range(ctx.event.data["n"])))

        def flaky() -> int:
            attempts["flaky"] += 1
            if attempts["flaky"] < 3:
                msg = "the API timed out"
                raise ConnectionError(msg)
            return sum(rows)

        total = ctx.step.run("call-api", flaky)
        return ctx.step.run("load", lambda: total * 2)

    for label in ("first run", "second run (replay)"):
        out = pipeline.run({"n": 10})
        run = client.runs("pipeline")[0]
        live = client._runs[("pipeline", run.id)]
        print(f"--- {label}: output {out}")
        print(live.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m nbdurable`` and the ``nbdurable`` command."""
    parser = argparse.ArgumentParser(prog="nbdurable", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run a flaky pipeline twice and show the replay")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return _demo()
    return 2


if __name__ == "__main__":
    sys.exit(main())
