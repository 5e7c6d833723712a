"""The run view over real waiting runs: the send button resolves the wait end to end."""

from __future__ import annotations

import datetime

import nbdurable
from nbdurable._view import RunView
from nbdurable.testing import FakeClock
from tests.waiting import eventually, waiting_step


def test_send_button_on_a_real_waiting_run_resolves_it(client, clock: FakeClock) -> None:
    """A background run waits for approval of its order; clicking the view's button sends it and the run completes."""

    @client.create_function(fn_id="approve")
    def approve(ctx):
        ev = ctx.step.wait_for_event(
            "approval", event="app/approved", if_exp="event.data.order == async.data.order", timeout=60_000
        )
        return None if ev is None else ev.data

    run = approve.start({"order": 7})
    view = RunView(run, clock=clock, min_interval=0)
    waiting_step(run)
    eventually(lambda: len(view.buttons.children) == 1)
    assert "times out in 60.0s" in view.text()
    view.buttons.children[0].click()
    assert run.wait(5) == {"order": 7}
    eventually(lambda: view.buttons.children == ())


def test_sleeping_step_shows_its_countdown(client, clock: FakeClock) -> None:
    """A step sleeping in a background run (real wait, fake time frozen) shows the time left in the view."""

    class Frozen(FakeClock):
        def sleep(self, seconds, wake=None):  # a real-looking sleep: wait for the wake-up (cancel)
            if wake is not None:
                wake._event.wait(5)

    frozen = Frozen()
    c = nbdurable.Client("t", store=client.store_path, clock=frozen)

    @c.create_function(fn_id="nap")
    def nap(ctx):
        ctx.step.sleep("nap", datetime.timedelta(seconds=90))

    run = nap.start()
    view = RunView(run, clock=frozen, min_interval=0)
    eventually(lambda: run.status is nbdurable.RunStatus.SLEEPING)
    eventually(lambda: "wakes in 90.0s" in view.text())
    run.cancel()
    eventually(lambda: run.done)
