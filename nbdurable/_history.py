"""Reading runs back from the store: listing, one run with its steps and output, clearing, invalidating."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nbdurable import _index, _keys, _lease, _store
from nbdurable._codecs import registry
from nbdurable._diskcompat import Unreadable
from nbdurable._process import STATE
from nbdurable._run import Run, loaded_state
from nbdurable._serde import PICKLE, codec_for
from nbdurable._types import (
    CORRUPT,
    MISSING,
    NO_OUTPUT,
    NO_TYPE,
    ErrorInfo,
    RunStatus,
    StepInfo,
    StepStatus,
    duration_seconds,
)

if TYPE_CHECKING:
    from nbdurable._client import Client
    from nbdurable._records import DataRef, RunRecord, StepRecord


def load(client: Client, rec: RunRecord) -> Run[Any]:
    """The run of a record: the live one if an execution of it is in flight here, else a snapshot.

    A snapshot's steps and output are read from the store when first asked for.
    """
    with STATE.lock:
        live = STATE.in_flight.get((*client.where, rec.function_id, rec.run_id))
    if live is not None and not live.finished.is_set():
        return live.handle
    status = _lease.effective_status(rec, client.clock.now())
    loader = None
    if status is RunStatus.COMPLETED and rec.has_output:

        def loader() -> Any:
            got = client.store.get_run(_store.run_key(client.app_id, rec.function_id, rec.run_id))
            return NO_OUTPUT if got is MISSING or got is CORRUPT else stored_output(client, rec, got[1])

    return loaded_state(client, rec, status, steps=lambda: stored_steps(client, rec), output=loader).handle


def stored_output(client: Client, rec: RunRecord, payload: bytes) -> Any:
    """A completed run's stored output, rebuilt as its function (if defined here) would, or NO_OUTPUT.

    It lies in the run record, in a data file, or with the step that returned it. A pickled
    output is loaded only by a client or function that chose pickle, from a store this user
    created.
    """
    if rec.output_data is not None:
        return _read_data(client, rec.output_data)
    serializer_used = rec.serializer
    if rec.output_step is not None:
        got = client.store.get_step(_store.step_prefix(client.app_id, rec.function_id, rec.run_id) + rec.output_step)
        if got is MISSING or got is CORRUPT or got[0].status != "COMPLETED":
            return NO_OUTPUT
        if got[0].data is not None:
            return _read_data(client, got[0].data)
        payload, serializer_used = got[1], got[0].serializer
    fn = client.functions.get(rec.function_id)
    serializer = (fn.serializer if fn is not None else None) or client.serializer
    if serializer_used == "pickle" and (serializer != "pickle" or not client.store.trusted):
        if serializer == "pickle":
            client.store.warn_untrusted()
        return NO_OUTPUT
    output_type = fn.output_type if fn is not None and fn.output_type is not None else NO_TYPE
    codec = PICKLE if serializer_used == "pickle" else codec_for("json", output_type)
    try:
        return codec.loads(payload)
    except Exception:  # noqa: BLE001 - an unreadable output is shown as absent, never a crash
        return NO_OUTPUT


def _read_data(client: Client, ref: DataRef) -> Any:
    try:
        codec = registry.named(ref.codec)
    except KeyError:
        return NO_OUTPUT
    value = client.store.data.read(ref, codec, mmap=client.mmap)
    return NO_OUTPUT if isinstance(value, Unreadable) else value


def step_order(client: Client, rec: RunRecord) -> list[tuple[str, StepRecord]]:
    """A run's stored steps in execution order.

    First the latest execution's list, then any others (stored by an execution that never
    reached its end, e.g. a killed kernel) by start time.
    """
    prefix = _store.step_prefix(client.app_id, rec.function_id, rec.run_id)
    found: dict[str, StepRecord] = {}
    for full, raw in client.store.scan(prefix).items():
        got = client.store.decode_step(full, raw)
        if got is not MISSING and got is not CORRUPT:
            found[full[len(prefix) :]] = got[0]
    listed = [k for k in rec.steps if k in found]
    seen = set(listed)
    rest = sorted((k for k in found if k not in seen), key=lambda k: found[k].started_at)
    return [(k, found[k]) for k in listed + rest]


def step_sizes(client: Client, rec: RunRecord) -> dict[str, tuple[int, int]]:
    """Bytes on disk of each stored step of a run: its record (key and value), and its data file."""
    prefix = _store.step_prefix(client.app_id, rec.function_id, rec.run_id)
    out: dict[str, tuple[int, int]] = {}
    for full, raw in client.store.scan(prefix).items():
        size = len(full) + (len(raw) if raw is not None else client.store.value_bytes(full))
        got = client.store.decode_step(full, raw)
        data = got[0].data.size if got is not MISSING and got is not CORRUPT and got[0].data is not None else 0
        out[full[len(prefix) :]] = (size, data)
    return out


def stored_steps(client: Client, rec: RunRecord) -> list[StepInfo]:
    """What views show of a run's stored steps."""
    out = []
    for key, srec in step_order(client, rec):
        info = StepInfo(
            key=key,
            step_id=_keys.step_id_of(key),
            kind=srec.kind,
            status=StepStatus(srec.status),
            attempts=srec.attempts,
            started_at=srec.started_at,
            duration=srec.duration,
        )
        if srec.error is not None:
            info.error = ErrorInfo(srec.error.name, srec.error.message, srec.error.stack)
        if info.status in (StepStatus.SLEEPING, StepStatus.WAITING):
            info.deadline = srec.wake_at
        if srec.kind == "wait" and srec.meta is not None:
            info.event = srec.meta.get("event")
        out.append(info)
    if rec.current_step and rec.current_step not in {s.key for s in out}:
        out.append(
            StepInfo(
                key=rec.current_step,
                step_id=_keys.step_id_of(rec.current_step),
                status=StepStatus.INTERRUPTED,
                note="in flight when the run stopped",
            )
        )
    return out


def stored_statuses(want: RunStatus | None) -> tuple[str, ...] | None:
    """The stored statuses a run shown as ``want`` can have (an active run whose owner died shows INTERRUPTED)."""
    if want is None:
        return None
    if want.finished:
        return (want.value,)
    return _index.OPEN_STATUSES  # live here, a run may be ahead of its record


def runs(
    client: Client, fn_id: str | None = None, status: RunStatus | str | None = None, limit: int | None = None
) -> list[Run[Any]]:
    """Runs in the store, newest first, optionally of one function and one status, at most ``limit``.

    Read through the run index: the time taken follows the number of runs returned, not the
    number stored. Each run's steps are read when first asked for.
    """
    want = RunStatus(status) if status is not None else None
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        msg = f"limit must be None or an int >= 0, got {limit!r}"
        raise ValueError(msg)
    out: list[Run[Any]] = []
    if limit == 0:
        return out
    entries = _index.runs(client.store, client.app_id, fn_id, statuses=stored_statuses(want))
    for entry in entries:
        run = load(client, entry.record)
        if want is None or run.status is want:
            out.append(run)
            if limit is not None and len(out) >= limit:
                break
    return out


def get_run(client: Client, run_id: str) -> Run[Any] | None:
    """A run by id (any function), with its steps and output; ``None`` if the store has none."""
    found = _index.find(client.store, run_id, app=client.app_id)
    return load(client, found[0].record) if found else None


def refuse_if_live(client: Client, fn_id: str, run_id: str, doing: str) -> None:
    """Refuse to change the stored steps of a run executing in this process."""
    with STATE.lock:
        state = STATE.in_flight.get((*client.where, fn_id, run_id))
    if state is not None and not state.finished.is_set():
        msg = f"run {run_id!r} of {fn_id!r} is executing; wait for it (or cancel it) before {doing} it"
        raise RuntimeError(msg)


def clear(client: Client, fn_id: str | None, run_id: str | None = None, *, older_than: Any = None) -> int:
    """Delete runs with their steps and data files; how many were deleted.

    Which runs: one (``run_id``), or every run of a function (``fn_id``) or of the app, only
    those last updated more than ``older_than`` ago (ms or a ``timedelta``) when given. A run
    executing anywhere (in this process, or in another one whose lease is alive) is never
    touched: named one by one it is refused with ``RuntimeError``; picked by age it is skipped.
    """
    store = client.store
    app = client.app_id
    if run_id is not None:
        entries = _index.find(store, run_id, app=app, function_id=fn_id)
    elif older_than is not None:
        cutoff = client.clock.now() - duration_seconds(older_than, "older_than")
        entries = list(_index.runs(store, app, fn_id, before=cutoff))
    else:
        entries = list(_index.runs(store, app, fn_id))
    by_age = run_id is None and older_than is not None
    if not by_age:
        for entry in entries:
            refuse_if_live(client, entry.record.function_id, entry.record.run_id, "clearing")
    deleted = 0
    for entry in entries:
        rec = entry.record
        if by_age and _live_here(client, rec.function_id, rec.run_id):
            continue
        if _drop(client, rec, refuse=not by_age):
            client.forget_run(rec.function_id, rec.run_id)
            deleted += 1
    return deleted


def _live_here(client: Client, fn_id: str, run_id: str) -> bool:
    with STATE.lock:
        state = STATE.in_flight.get((*client.where, fn_id, run_id))
    return state is not None and not state.finished.is_set()


def _drop(client: Client, rec: RunRecord, *, refuse: bool) -> bool:
    """Delete one run in one transaction, unless another process holds it (then refuse, or skip)."""
    store = client.store
    key = _store.run_key(client.app_id, rec.function_id, rec.run_id)
    with store.write_transaction():
        got = store.get_run(key)
        if got is not MISSING and got is not CORRUPT:
            now = client.clock.now()
            cur = got[0]
            if cur.status.active and cur.owner is not None and _lease.effective_status(cur, now) is cur.status:
                if refuse:
                    msg = (
                        f"run {rec.run_id!r} of {rec.function_id!r} is executing in another process (host "
                        f"{cur.owner.host}, pid {cur.owner.pid}); wait for it (or stop it) before clearing it"
                    )
                    raise RuntimeError(msg)
                return False
        store.delete_prefix(_store.step_prefix(client.app_id, rec.function_id, rec.run_id))
        store.delete(key)
        store.data.delete_folder(store.data.folder(client.app_id, rec.function_id, rec.run_id))
    return True


def invalidate(client: Client, fn_id: str, run_id: str, from_step: str | None) -> list[str]:
    """Forget stored steps of a run (from one step on, in execution order) so they execute again."""
    refuse_if_live(client, fn_id, run_id, "invalidating")
    got = client.store.get_run(_store.run_key(client.app_id, fn_id, run_id))
    if got is MISSING or got is CORRUPT:
        msg = f"function {fn_id!r} has no stored run {run_id!r}. Fix: see {fn_id}.runs() for run ids."
        raise KeyError(msg)
    prefix = _store.step_prefix(client.app_id, fn_id, run_id)
    stored = step_order(client, got[0])
    order = [key for key, _ in stored]
    if from_step is not None:
        if from_step not in order:  # a step as views show it (its label), else unknown
            from_step = next((k for k in order if _keys.label(k) == from_step), from_step)
        if from_step not in order:
            msg = f"run {run_id!r} of {fn_id!r} has no stored step {from_step!r}; stored steps: {order}"
            raise KeyError(msg)
        order = order[order.index(from_step) :]
    files = {key: rec.data for key, rec in stored if rec.data is not None}
    for key in order:
        client.store.delete(prefix + key)
        if key in files:
            client.store.data.delete(files[key])
    return order
