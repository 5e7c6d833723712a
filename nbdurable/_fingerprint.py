"""Fingerprints of step handlers and their arguments, to notice code changes on replay."""

from __future__ import annotations

import functools
import hashlib
import inspect
from typing import Any

from nbdurable._hashing import content_digest
from nbdurable._process import STATE

_PLAIN = frozenset({int, str, float, bool, type(None), bytes})


def _digest(text: bytes) -> str:
    return hashlib.blake2b(text, digest_size=8).hexdigest()


def _code_fingerprint(fn: Any) -> str:
    code = getattr(fn, "__code__", None)
    if code is None:
        call = getattr(type(fn), "__call__", None)  # noqa: B004 - a callable object
        code = getattr(call, "__code__", None)
        if code is None:  # builtins and C callables: their name is all there is
            return _digest(f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}".encode())
    found = STATE.code_fingerprints.get(code)
    if found is None:
        try:
            text = inspect.getsource(code).encode()
        except (OSError, TypeError):
            text = code.co_code + repr(code.co_consts).encode()
        found = _digest(text)
        STATE.code_fingerprints.put(code, found)
    return found


def plain_args_fingerprint(base: str, args: tuple[Any, ...]) -> str | None:
    """The fingerprint of a call of code ``base`` with plain arguments (None if any is not plain).

    The repr of plain values is stable and cheap.
    """
    if all(type(a) in _PLAIN for a in args):
        return _digest(f"{base}|{args!r}".encode())
    return None


def fingerprint(handler: Any, args: tuple[Any, ...]) -> str:
    """A short hash of the handler's source (or bytecode) and its arguments.

    The source hash is cached per code object, so replaying a step costs a dict lookup
    (plus hashing the arguments when there are any).
    """
    fn = handler
    kwargs: dict[str, Any] = {}
    while isinstance(fn, functools.partial):
        args = (*fn.args, *args)
        kwargs = {**fn.keywords, **kwargs}
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    base = _code_fingerprint(fn)
    if not args and not kwargs:
        return base
    if not kwargs:
        plain = plain_args_fingerprint(base, args)
        if plain is not None:
            return plain
    # Data (arrays, frames) by the content of their buffers, containers by their items, other
    # objects (a client, a model passed along) by their class.
    content = content_digest((args, sorted(kwargs.items())), objects=False)
    if content is None:  # something with no stable content (an open file, a generator): its types
        content = repr([type(a).__qualname__ for a in (*args, *kwargs.values())])
    return _digest(f"{base}|{content}".encode())
