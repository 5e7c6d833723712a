"""CEL expressions (``if_exp``, trigger ``expression``, ``idempotency``), via cel-python.

cel-python is imported only when an expression is used: ``import nbdurable`` stays cheap.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.lru_cache(maxsize=256)
def compile_cel(expr: str) -> Any:
    """Compile a CEL expression, or raise ``ValueError`` naming it and the parse error."""
    import celpy

    if not isinstance(expr, str) or not expr.strip():
        msg = f"a CEL expression must be a non-empty str, got {expr!r}"
        raise ValueError(msg)
    env = celpy.Environment()
    try:
        return env.program(env.compile(expr))
    except Exception as exc:  # noqa: BLE001 - cel-python raises its own parse error types
        msg = (
            f'invalid CEL expression {expr!r}: {str(exc).strip()}. Fix: e.g. "event.data.user_id == async.data.user_id"'
        )
        raise ValueError(msg) from None


def _to_python(value: Any) -> Any:
    import celpy

    if isinstance(value, celpy.celtypes.BoolType):
        return bool(value)
    if isinstance(value, celpy.celtypes.IntType | celpy.celtypes.UintType):
        return int(value)
    if isinstance(value, celpy.celtypes.DoubleType):
        return float(value)
    if isinstance(value, celpy.celtypes.StringType):
        return str(value)
    if isinstance(value, celpy.celtypes.MapType):
        return {_to_python(k): _to_python(v) for k, v in value.items()}
    if isinstance(value, celpy.celtypes.ListType):
        return [_to_python(v) for v in value]
    return value


def evaluate(expr: str, **variables: dict[str, Any] | None) -> Any:
    """Evaluate ``expr`` with JSON-like variables (e.g. ``event=...``, ``async_=...``).

    A trailing underscore is dropped from variable names, so ``async_`` binds ``async``.
    An evaluation error (a missing key, a type mismatch) is returned as ``None``.
    """
    import celpy.adapter

    program = compile_cel(expr)
    activation = {k.rstrip("_"): celpy.adapter.json_to_cel(v) for k, v in variables.items() if v is not None}
    try:
        result = program.evaluate(activation)
    except Exception:  # noqa: BLE001 - CEL errors mean "no match"
        return None
    if isinstance(result, Exception):
        return None
    return _to_python(result)
