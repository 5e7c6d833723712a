"""Random sequences of step failures, interrupts, re-runs, code changes and restarts (hypothesis).

A three-step durable function is driven by a script of per-attempt outcomes (fail,
NonRetriableError, RetryAfterError, KeyboardInterrupt; success when the script is empty).
A plain-Python model predicts every handler call, every retry delay, every step status and
what the store holds; after each rule the runtime must agree with the model exactly.
Examples: 50 in the normal test run, 5 x ``NBDURABLE_TRIALS`` under ``make reliability``.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import nbdurable
from nbdurable import _store
from nbdurable._process import STATE
from nbdurable._store import Store
from nbdurable.testing import FakeClock, simulate_restart
from tests.reliability import workload as w

NAMES = ("a", "b", "c")
RETRIES = 2
MAX_ATTEMPTS = RETRIES + 1
BACKOFF = nbdurable.Backoff(initial=1.0, factor=2.0, max=300.0, jitter=0)
RETRY_AFTER_MS = 7000
KINDS = ("fail", "nonretriable", "retry_after", "interrupt")
RUN_ID = "machine"


class Script:
    """What each step's next attempts do; counts calls and successes per step."""

    def __init__(self) -> None:
        self.queue: dict[str, list[str]] = {n: [] for n in NAMES}
        self.calls: dict[str, int] = dict.fromkeys(NAMES, 0)
        self.successes: dict[str, int] = dict.fromkeys(NAMES, 0)

    def attempt(self, name: str, version: int) -> dict[str, Any]:
        self.calls[name] += 1
        kind = self.queue[name].pop(0) if self.queue[name] else None
        if kind == "fail":
            msg = f"{name} flaked"
            raise ValueError(msg)
        if kind == "nonretriable":
            raise nbdurable.NonRetriableError(f"{name} refused")
        if kind == "retry_after":
            raise nbdurable.RetryAfterError(f"{name} busy", retry_after=RETRY_AFTER_MS)
        if kind == "interrupt":
            raise KeyboardInterrupt
        self.successes[name] += 1
        return {"step": name, "v": version, "n": self.successes[name]}


# Two versions of the handler with different source: "the handler's code changes".
def handler_v0(script: Script, name: str) -> dict[str, Any]:
    return script.attempt(name, 0)


def handler_v1(script: Script, name: str) -> dict[str, Any]:
    return script.attempt(name, 1)  # a later edit of the same step


HANDLERS = (handler_v0, handler_v1)


class DurableRunMachine(RuleBasedStateMachine):
    """The runtime against a model of steps, retries, interrupts, code changes and restarts."""

    def __init__(self) -> None:
        super().__init__()
        fig = w.figures("state machine")
        fig["examples (sequences of rules)"] = fig.get("examples (sequences of rules)", 0) + 1
        for name in (
            "run COMPLETED",
            "run FAILED (ValueError)",
            "run FAILED (NonRetriableError)",
            "run FAILED (RetryAfterError)",
            "run INTERRUPTED",
            "handler calls",
            "steps replayed",
            "stale replays warned",
            "handler code changed",
            "store reopened",
        ):
            fig.setdefault(name, 0)
        self.path = tempfile.mkdtemp(prefix="nbdurable-machine-")
        self.clock = FakeClock()
        self.script = Script()
        self.versions = dict.fromkeys(NAMES, 0)
        # The model.
        self.queue: dict[str, list[str]] = {n: [] for n in NAMES}
        self.stored: dict[str, dict[str, Any]] = {}  # COMPLETED records: value, version, attempts
        self.failed: set[str] = set()  # FAILED records
        self.calls: dict[str, int] = dict.fromkeys(NAMES, 0)
        self.successes: dict[str, int] = dict.fromkeys(NAMES, 0)
        self.sleeps: list[float] = []
        self.status: nbdurable.RunStatus | None = None
        self.mode = "sync"
        self.on_change = "warn"
        self.client: nbdurable.Client | None = None
        self.fn: Any = None

    def teardown(self) -> None:
        Store.forget(self.path)
        shutil.rmtree(self.path, ignore_errors=True)

    def _define(self) -> None:
        assert self.client is not None
        script, versions = self.script, self.versions
        options: dict[str, Any] = {"fn_id": "machine", "retries": RETRIES, "on_change": self.on_change}
        if self.mode == "sync":

            def body(ctx: nbdurable.ContextSync) -> list[Any]:
                return [ctx.step.run(n, HANDLERS[versions[n]], script, n) for n in NAMES]

            self.fn = self.client.create_function(**options)(body)
        else:

            async def abody(ctx: nbdurable.Context) -> list[Any]:
                return [await ctx.step.run(n, HANDLERS[versions[n]], script, n) for n in NAMES]

            self.fn = self.client.create_function(**options)(abody)

    @initialize(mode=st.sampled_from(["sync", "async"]), on_change=st.sampled_from(["warn", "rerun"]))
    def start(self, mode: str, on_change: str) -> None:
        self.mode, self.on_change = mode, on_change
        self.client = nbdurable.Client("machine", store=self.path, clock=self.clock, backoff=BACKOFF)
        self._define()

    # -- rules -------------------------------------------------------------------------------

    @rule(name=st.sampled_from(NAMES), kind=st.sampled_from(KINDS), times=st.integers(1, 4))
    def script_outcomes(self, name: str, kind: str, times: int) -> None:
        """The step's next ``times`` attempts fail this way (a failure k times, then success)."""
        times = 1 if kind in ("interrupt", "nonretriable") else times
        self.script.queue[name] += [kind] * times
        self.queue[name] += [kind] * times

    @rule(name=st.sampled_from(NAMES))
    def change_code(self, name: str) -> None:
        """The step's handler is edited (or the edit is undone)."""
        fig = w.figures("state machine")
        fig["handler code changed"] = fig.get("handler code changed", 0) + 1
        self.versions[name] = 1 - self.versions[name]

    @rule()
    def reopen(self) -> None:
        """Kernel restart: the store is closed and reopened, the function defined again."""
        fig = w.figures("state machine")
        fig["store reopened"] = fig.get("store reopened", 0) + 1
        assert self.client is not None
        self.client = simulate_restart(self.client)
        self._define()
        seen = self.client.get_run(RUN_ID)
        if self.status is None:
            assert seen is None
        else:
            assert seen is not None
            assert seen.status is self.status

    @rule(plan=st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(KINDS), st.integers(1, 4)), max_size=2))
    def run(self, plan: list[tuple[str, str, int]]) -> None:
        """The run is executed again (a re-run cell), after scripting ``plan``: compare with the model."""
        for name, kind, times in plan:
            self.script_outcomes(name, kind, times)
        calls_before = sum(self.calls.values())
        expected_steps, warned, failure = self._predict()
        assert self.status is not None
        outcome_name = f"run {self.status.value}" + (f" ({failure[1].__name__})" if failure else "")
        event(outcome_name)
        fig = w.figures("state machine")
        fig[outcome_name] = fig.get(outcome_name, 0) + 1
        for name, value in (
            ("steps replayed", sum(s[1] is nbdurable.StepStatus.REPLAYED for s in expected_steps)),
            ("stale replays warned", warned),
            ("handler calls", sum(self.calls.values()) - calls_before),
        ):
            fig[name] = fig.get(name, 0) + value
        shown: list[nbdurable.Run[Any]] = []
        STATE.run_hooks.append(shown.append)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outcome: Any
            try:
                outcome = ("ok", self.fn.run(run_id=RUN_ID))
            except nbdurable.RunFailedError as exc:
                outcome = ("failed", exc)
            except KeyboardInterrupt:
                outcome = ("interrupted", None)
            finally:
                STATE.run_hooks.remove(shown.append)
        stale_warnings = [c for c in caught if issubclass(c.category, nbdurable.StaleStepWarning)]
        assert len(stale_warnings) == warned, [str(c.message) for c in caught]
        assert not [c for c in caught if c.category is RuntimeWarning], [str(c.message) for c in caught]

        if self.status is nbdurable.RunStatus.COMPLETED:
            assert outcome[0] == "ok", outcome
            assert outcome[1] == [self.stored[n]["value"] for n in NAMES]
        elif self.status is nbdurable.RunStatus.FAILED:
            assert outcome[0] == "failed", outcome
            step, cause = failure
            assert outcome[1].step_id == step
            assert type(outcome[1].__cause__) is cause
            assert step in str(outcome[1])
        else:
            assert outcome[0] == "interrupted", outcome

        assert self.client is not None
        (live,) = shown
        assert live.status is self.status
        got = [(s.key, s.status, s.attempts, s.stale) for s in live.steps]
        assert got == expected_steps
        if self.status is nbdurable.RunStatus.INTERRUPTED:
            assert live.steps[-1].note == "interrupted; run again to resume"

    # -- the model ---------------------------------------------------------------------------

    def _predict(self) -> tuple[list[Any], int, Any]:
        """Advance the model by one execution; return the expected steps, stale warnings, failure."""
        steps: list[Any] = []
        warned = 0
        failure: Any = None
        for name in NAMES:
            rec = self.stored.get(name)
            stale = rec is not None and rec["version"] != self.versions[name]
            if rec is not None and not (stale and self.on_change == "rerun"):
                warned += stale
                steps.append((name, nbdurable.StepStatus.REPLAYED, rec["attempts"], stale))
                continue
            failures = 0
            attempts = 0
            while True:
                attempts += 1
                self.calls[name] += 1
                kind = self.queue[name].pop(0) if self.queue[name] else None
                if kind is None:
                    self.successes[name] += 1
                    value = {"step": name, "v": self.versions[name], "n": self.successes[name]}
                    self.stored[name] = {"value": value, "version": self.versions[name], "attempts": attempts}
                    self.failed.discard(name)
                    steps.append((name, nbdurable.StepStatus.COMPLETED, attempts, False))
                    break
                if kind == "interrupt":
                    steps.append((name, nbdurable.StepStatus.INTERRUPTED, attempts, False))
                    self.status = nbdurable.RunStatus.INTERRUPTED
                    return steps, warned, None
                failures += 1
                if kind == "nonretriable" or failures >= MAX_ATTEMPTS:
                    self.stored.pop(name, None)  # a FAILED record replaces what was stored
                    self.failed.add(name)
                    steps.append((name, nbdurable.StepStatus.FAILED, attempts, False))
                    self.status = nbdurable.RunStatus.FAILED
                    cause = {
                        "fail": ValueError,
                        "nonretriable": nbdurable.NonRetriableError,
                        "retry_after": nbdurable.RetryAfterError,
                    }[kind]
                    return steps, warned, (name, cause)
                self.sleeps.append(RETRY_AFTER_MS / 1000 if kind == "retry_after" else BACKOFF.delay(failures))
        self.status = nbdurable.RunStatus.COMPLETED
        return steps, warned, failure

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def handlers_were_called_as_predicted(self) -> None:
        assert self.script.calls == self.calls
        assert self.script.successes == self.successes
        assert self.script.queue == self.queue

    @invariant()
    def retries_slept_as_predicted(self) -> None:
        assert self.clock.slept == self.sleeps

    @precondition(lambda self: self.client is not None)
    @invariant()
    def store_holds_what_was_completed_or_failed(self) -> None:
        assert self.client is not None
        prefix = _store.step_prefix("machine", "machine", RUN_ID)
        for name in NAMES:
            got = self.client.store.get_step(prefix + name)
            if name in self.stored:
                assert got is not _store.MISSING
                assert got is not _store.CORRUPT
                assert got[0].status == "COMPLETED"
                assert got[0].attempts == self.stored[name]["attempts"]
            elif name in self.failed:
                assert got is not _store.MISSING
                assert got[0].status == "FAILED"
            else:
                assert got is _store.MISSING


TestDurableRun = DurableRunMachine.TestCase
TestDurableRun.settings = settings(
    max_examples=max(50, 5 * w.TRIALS),
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
