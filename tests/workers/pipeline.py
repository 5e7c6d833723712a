"""A worker process for crash and contention tests.

Usage: python -m tests.workers.pipeline STORE LOGDIR [--die-in STEP] [--hang-in STEP]

Runs a 4-step pipeline; each step appends a line to LOGDIR/<step>.log when it starts.
``--die-in STEP`` calls ``os._exit(9)`` inside STEP after 0.6 s (the process dies mid-step);
``--hang-in STEP`` sleeps 60 s inside STEP (the test kills it). Prints the output as JSON, or
``LOCKED`` when another process owns the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nbdurable


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("logdir")
    parser.add_argument("--die-in")
    parser.add_argument("--hang-in")
    parser.add_argument("--step-seconds", type=float, default=0.0)
    args = parser.parse_args()
    logdir = Path(args.logdir)
    client = nbdurable.Client("crash", store=args.store)

    def step(name: str, value: int) -> int:
        with (logdir / f"{name}.log").open("a") as f:
            f.write(f"{os.getpid()}\n")
        if args.step_seconds:
            time.sleep(args.step_seconds)
        if name == args.die_in:
            time.sleep(0.6)
            os._exit(9)
        if name == args.hang_in:
            time.sleep(60)
        return value

    @client.create_function(fn_id="pipeline")
    def pipeline(ctx: nbdurable.ContextSync) -> int:
        a = ctx.step.run("a", step, "a", 1)
        b = ctx.step.run("b", step, "b", a + 1)
        c = ctx.step.run("c", step, "c", b * 10)
        return ctx.step.run("d", step, "d", c + 2)

    try:
        out = pipeline.run({"job": 1})
    except nbdurable.RunLockedError:
        print("LOCKED")
        return 0
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
