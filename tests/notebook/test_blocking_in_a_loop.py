"""A blocking run inside a running loop (a Jupyter cell) loses no other task's callback.

Jupyter's kernel (ipykernel 7) runs every shell message as a task in one shared
``contextvars.Context``. A cell that blocks in ``fn.run()`` re-enters the kernel's loop
while that Context is entered; a message arriving meanwhile makes a task in the same
Context, which cannot run until the cell's step is left. Before the fix the loop logged
"cannot enter context: ... is already entered" and dropped it: a click on a run view's
button, or any request, was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from nbdurable._loop import run_blocking

needs_task_context = pytest.mark.skipif(
    sys.version_info < (3, 11), reason="create_task(context=...) appeared in Python 3.11"
)


Cell = Callable[[asyncio.AbstractEventLoop, contextvars.Context, list[str]], Coroutine[Any, Any, None]]


def _run_scenario(cell: Cell, expected: int) -> tuple[list[str], list[str]]:
    """Run ``cell`` as a task in a shared Context on a new loop; return what ran, in order, and what the loop logged.

    The loop runs in a daemon thread joined with a deadline: a task whose step the loop
    dropped stays pending forever (even ``asyncio.run``'s clean-up would wait for it).
    """
    done: dict[str, list[str]] = {}

    def main() -> None:
        loop = asyncio.new_event_loop()
        logged: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: logged.append(context))
        shared = contextvars.copy_context()  # what ipykernel gives every shell message
        order: list[str] = []

        async def go() -> None:
            await loop.create_task(cell(loop, shared, order), context=shared)
            while len(order) < expected:  # what was held back runs after the cell
                await asyncio.sleep(0.001)

        with contextlib.suppress(asyncio.TimeoutError):
            loop.run_until_complete(asyncio.wait_for(go(), 5))
        done["order"], done["logged"] = order, [str(c.get("exception") or c["message"]) for c in logged]

    thread = threading.Thread(target=main, name="scenario", daemon=True)
    thread.start()
    thread.join(30)
    assert done, "the scenario never finished"
    return done["order"], done["logged"]


@needs_task_context
def test_a_task_sharing_the_blocked_tasks_context_runs_after_the_blocking_call() -> None:
    """A task made in the Context of the task blocking in run_blocking runs once the call returns, nothing logged."""

    async def message(order: list[str]) -> None:
        order.append("message")

    async def cell(loop: asyncio.AbstractEventLoop, shared: contextvars.Context, order: list[str]) -> None:
        loop.call_soon(lambda: loop.create_task(message(order), context=shared))  # arrives while the cell blocks
        run_blocking(asyncio.sleep(0.02))
        order.append("cell")

    order, logged = _run_scenario(cell, expected=2)
    assert logged == []  # before the fix: "cannot enter context: ... is already entered"
    assert order == ["cell", "message"]  # before the fix: ["cell"], the message's step was dropped


@needs_task_context
def test_held_callbacks_wait_for_the_outermost_blocking_call_when_calls_nest() -> None:
    """A blocking call in a task run by another blocking call: the shared Context's task waits for both, then runs."""

    async def message(order: list[str]) -> None:
        order.append("message")

    async def background(loop: asyncio.AbstractEventLoop, shared: contextvars.Context, order: list[str]) -> None:
        loop.call_soon(lambda: loop.create_task(message(order), context=shared))
        run_blocking(asyncio.sleep(0.01))
        order.append("inner")
        await asyncio.sleep(0.01)  # the outer call turns the loop on past the inner one
        order.append("background")

    async def cell(loop: asyncio.AbstractEventLoop, shared: contextvars.Context, order: list[str]) -> None:
        run_blocking(loop.create_task(background(loop, shared, order)))  # its own Context
        order.append("cell")

    order, logged = _run_scenario(cell, expected=4)
    assert logged == []
    assert order == ["inner", "background", "cell", "message"]


@pytest.mark.kernel
def test_a_request_sent_while_a_cell_blocks_in_run_is_answered(tmp_path: Path) -> None:
    """In a real kernel, a kernel_info request sent while a cell blocks in run() gets its reply; nothing is printed."""
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env={**os.environ, "NBDURABLE_STORE": str(tmp_path / "store")})
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        setup = (
            "import datetime, nbdurable\n"
            "client = nbdurable.Client(app_id='bridge')\n"
            "@client.create_function(fn_id='waits')\n"
            "async def waits(ctx):\n"
            "    return await ctx.step.wait_for_event(\n"
            f"        'approval', event='app/never', timeout=datetime.timedelta(seconds={2.0!r}))\n"
        )
        assert kc.execute_interactive(setup, timeout=60)["content"]["status"] == "ok"
        cell = kc.execute("waits.run({'order': 8})")
        _until_the_view_is_shown(kc, cell)  # run() shows it, then blocks without yielding to the loop
        info = kc.kernel_info()  # arrives while the cell blocks in run()
        replies = _replies(kc, {cell, info}, timeout=60)
        assert replies == {cell: "execute_reply", info: "kernel_info_reply"}
        printed = _printed(kc)
        assert "cannot enter context" not in printed
        assert "Exception in callback" not in printed
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _until_the_view_is_shown(kc: Any, msg_id: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=60)
        data = msg["content"].get("data", {})
        if msg["parent_header"].get("msg_id") == msg_id and "application/vnd.jupyter.widget-view+json" in data:
            return
    msg = "run() never showed its view"
    raise AssertionError(msg)


def _replies(kc: Any, ids: set[str], timeout: float) -> dict[str, str]:
    replies: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while set(replies) != ids and time.monotonic() < deadline:
        try:
            msg = kc.get_shell_msg(timeout=1)
        except queue.Empty:
            continue
        if msg["parent_header"].get("msg_id") in ids:
            replies[msg["parent_header"]["msg_id"]] = msg["msg_type"]
    return replies


def _printed(kc: Any) -> str:
    texts = []
    while True:
        try:
            msg = kc.get_iopub_msg(timeout=0.5)
        except queue.Empty:
            return "".join(texts)
        content = msg["content"]
        texts.append(content.get("text", "") or "\n".join(content.get("traceback", [])))
