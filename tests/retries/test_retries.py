"""DESIGN 3.4 and 3.5: per-step retries with backoff, and re-running retries failures."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

import nbdurable
from nbdurable.testing import FakeClock
from tests.durable import MODES, Counter, define


@pytest.fixture
def client(tmp_path: Any, clock: FakeClock) -> Any:
    from nbdurable.testing import temporary_client

    backoff = nbdurable.Backoff(initial=1.0, factor=2.0, max=300.0, jitter=0)
    with temporary_client(tmp_path / "store", clock=clock, backoff=backoff) as c:
        yield c


@pytest.mark.parametrize("mode", MODES)
def test_failing_step_is_retried_until_it_succeeds(client: nbdurable.Client, clock: FakeClock, mode: str) -> None:
    """A step failing twice then succeeding takes 3 attempts, with backoff 1 s then 2 s."""
    count = Counter()
    fn = define(client, mode, lambda ctx: (yield ("flaky", count.failing("flaky", 2))), retries=4)
    assert fn.run() == "ok"
    assert count["flaky"] == 3
    assert clock.slept == [1.0, 2.0]
    step = client.get_run(client.runs("f")[0].id).steps[0]  # type: ignore[union-attr]
    assert step.attempts == 3


@pytest.mark.parametrize("mode", MODES)
def test_each_step_has_its_own_budget(client: nbdurable.Client, mode: str) -> None:
    """retries=2 gives every step 3 attempts of its own, not a shared pool."""
    count = Counter()

    def body(ctx: Any) -> Any:
        yield ("a", count.failing("a", 2))
        yield ("b", count.failing("b", 2))
        return "done"

    fn = define(client, mode, body, retries=2)
    assert fn.run() == "done"
    assert count.calls == {"a": 3, "b": 3}


@pytest.mark.parametrize("mode", MODES)
def test_exhausted_step_raises_step_error_at_call_site(client: nbdurable.Client, mode: str) -> None:
    """After retries+1 attempts the body gets StepError, whose cause is the original error."""
    count = Counter()
    caught: list[nbdurable.StepError] = []

    def body(ctx: Any) -> Any:
        try:
            yield ("doomed", count.failing("doomed", 99))
        except nbdurable.StepError as exc:
            caught.append(exc)
            return "handled"
        return "not reached"

    fn = define(client, mode, body, retries=2)
    assert fn.run() == "handled"
    assert count["doomed"] == 3
    assert caught[0].name == "ValueError"
    assert caught[0].message == "boom"
    assert caught[0].step_id == "doomed"
    assert isinstance(caught[0].__cause__, ValueError)


@pytest.mark.parametrize("mode", MODES)
def test_uncaught_step_error_fails_the_run_chained_to_the_real_error(client: nbdurable.Client, mode: str) -> None:
    """The run fails with RunFailedError whose __cause__ is the handler's exception."""
    count = Counter()
    fn = define(client, mode, lambda ctx: (yield ("doomed", count.failing("doomed", 99))), retries=1)
    with pytest.raises(nbdurable.RunFailedError) as info:
        fn.run()
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.step_id == "doomed"
    assert "doomed" in str(info.value)
    run = client.runs("f")[0]
    assert run.status is nbdurable.RunStatus.FAILED
    assert run.error is not None
    assert run.error.name == "ValueError"


@pytest.mark.parametrize("mode", MODES)
def test_non_retriable_error_is_not_retried(client: nbdurable.Client, clock: FakeClock, mode: str) -> None:
    """NonRetriableError fails the step on its first attempt and fails the run."""
    count = Counter()
    handler = count.failing("card", 99, exc=lambda: nbdurable.NonRetriableError("card declined"))
    fn = define(client, mode, lambda ctx: (yield ("card", handler)), retries=5)
    with pytest.raises(nbdurable.RunFailedError) as info:
        fn.run()
    assert count["card"] == 1
    assert clock.slept == []
    assert isinstance(info.value.__cause__, nbdurable.NonRetriableError)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("after", "expected"),
    [(5000, 5.0), (dt.timedelta(seconds=7), 7.0)],
)
def test_retry_after_error_sets_the_next_delay(
    client: nbdurable.Client, clock: FakeClock, mode: str, after: Any, expected: float
) -> None:
    """RetryAfterError replaces the backoff delay with its own."""
    count = Counter()
    handler = count.failing("limited", 1, exc=lambda: nbdurable.RetryAfterError("rate limited", after))
    fn = define(client, mode, lambda ctx: (yield ("limited", handler)))
    assert fn.run() == "ok"
    assert clock.slept == [expected]


def test_retry_after_a_datetime(client: nbdurable.Client, clock: FakeClock) -> None:
    """RetryAfterError with a datetime waits until then."""
    count = Counter()
    at = dt.datetime.fromtimestamp(clock.now() + 30, tz=dt.timezone.utc)
    handler = count.failing("limited", 1, exc=lambda: nbdurable.RetryAfterError("later", at))
    fn = define(client, "sync", lambda ctx: (yield ("limited", handler)))
    assert fn.run() == "ok"
    assert clock.slept == [pytest.approx(30.0)]


def test_backoff_grows_and_is_capped() -> None:
    """Backoff doubles from its initial delay and stops at max."""
    backoff = nbdurable.Backoff(initial=1, factor=2, max=5, jitter=0)
    assert [backoff.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


def test_backoff_rejects_nonsense() -> None:
    """A negative or shrinking backoff is a clear ValueError."""
    with pytest.raises(ValueError, match="factor >= 1"):
        nbdurable.Backoff(factor=0.5)


@pytest.mark.parametrize("mode", MODES)
def test_rerun_retries_only_what_failed_with_a_fresh_budget(client: nbdurable.Client, mode: str) -> None:
    """A failed run re-run replays completed steps and gives the failed one its full budget again."""
    count = Counter()
    flaky = count.failing("flaky", 3)

    def body(ctx: Any) -> Any:
        a = yield ("a", count.returning("a", 1))
        b = yield ("flaky", flaky)
        return [a, b]

    fn = define(client, mode, body, retries=1)
    with pytest.raises(nbdurable.RunFailedError):
        fn.run()
    assert count.calls == {"a": 1, "flaky": 2}
    assert fn.run() == [1, "ok"]
    assert count.calls == {"a": 1, "flaky": 4}
    assert client.runs("f")[0].status is nbdurable.RunStatus.COMPLETED


def test_retry_after_a_naive_datetime_is_local_time(client: nbdurable.Client, clock: FakeClock) -> None:
    """A naive datetime means local time, as in sleep_until and Inngest (checked far from UTC)."""
    import os
    import time

    count = Counter()
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Tokyo"
    time.tzset()
    try:
        at = dt.datetime.fromtimestamp(clock.now() + 30)
        assert at.tzinfo is None
        handler = count.failing("limited", 1, exc=lambda: nbdurable.RetryAfterError("later", at))
        fn = define(client, "sync", lambda ctx: (yield ("limited", handler)))
        assert fn.run() == "ok"
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()
    assert clock.slept == [pytest.approx(30.0)]
