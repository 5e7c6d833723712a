"""Handing a durable function to a real Inngest deployment: the only ``inngest`` import."""

from __future__ import annotations

from typing import Any

from nbdurable._events import TriggerCron, TriggerEvent
from nbdurable._function import Function


def to_inngest(function: Function[Any], client: Any) -> Any:
    """Register a durable function's body, unchanged, on an Inngest client.

    The body's ``ctx.step`` calls mean the same on both, so a workflow prototyped in a
    notebook can be served by Inngest as it is. Triggers, retries, idempotency, cancel and
    concurrency options carry over.

    Args:
        function: an nbdurable ``Function``.
        client: an ``inngest.Inngest`` client (the ``inngest`` package must be installed).

    Returns:
        The ``inngest.Function``, ready for ``inngest.fast_api.serve`` or similar.

    Example:
        >>> import inngest
        >>> @client.create_function(fn_id="etl", trigger=nbdurable.TriggerEvent(event="app/etl"))
        ... async def etl(ctx: nbdurable.Context) -> int:
        ...     return await ctx.step.run("load", lambda: 7)
        >>> served = nbdurable.to_inngest(etl, inngest.Inngest(app_id="prod", is_production=False))
        >>> served.id
        'prod-etl'
    """
    try:
        import inngest
    except ImportError as exc:
        msg = "to_inngest needs the inngest package. Fix: pip install inngest"
        raise ImportError(msg) from exc
    if not isinstance(function, Function):
        msg = f"to_inngest takes an nbdurable Function, got {type(function).__name__}"
        raise TypeError(msg)
    triggers = [
        inngest.TriggerEvent(event=t.event, expression=t.expression)
        if isinstance(t, TriggerEvent)
        else inngest.TriggerCron(cron=t.cron)
        for t in function.triggers
        if isinstance(t, (TriggerEvent, TriggerCron))
    ]
    if not triggers:
        msg = (
            f"function {function.id!r} has no trigger, and Inngest needs one. Fix: "
            "create_function(..., trigger=nbdurable.TriggerEvent(event='app/...'))"
        )
        raise ValueError(msg)
    return client.create_function(
        fn_id=function.id,
        name=function.name,
        trigger=triggers[0] if len(triggers) == 1 else triggers,
        retries=function.retries,
        idempotency=function.idempotency,
        cancel=[inngest.Cancel(event=c.event, if_exp=c.if_exp, timeout=c.timeout) for c in function.cancel] or None,
        concurrency=[inngest.Concurrency(limit=c.limit, key=c.key) for c in function.concurrency] or None,
    )(function.handler)
