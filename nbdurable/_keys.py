"""Ids users give (apps, functions, runs, steps) and the step keys the store files them under.

The n-th repeat of a step id in one execution is keyed ``id:n`` and a step of a parallel
group member is keyed under the member's first step (``first/id``). So that no id a user
writes can equal another step's key, an id is escaped where it could be mistaken for one:
``%`` and ``/`` become ``%25`` and ``%2F``, and the ``:`` of a trailing ``:<digits>``
becomes ``%3A`` (the user's ``page:1`` is keyed ``page%3A1``; the second ``page`` is
``page:1``). Views show :func:`label` of a key, which undoes the escaping.

Runs stored before keys were escaped (``keys=1`` in their record) keep their old keys.

Example:
    >>> step_key(None, "page:1", 0), step_key(None, "page", 1), label("page%3A1")
    ('page%3A1', 'page:1', 'page:1')
"""

from __future__ import annotations

import re

_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SPECIAL = re.compile(r"[%/]|:\d+$")
_TRAILING_NUMBER = re.compile(r":(\d+)$")
_ESCAPES = re.compile(r"%(25|2F|3A)")
_UNESCAPED = {"25": "%", "2F": "/", "3A": ":"}
_MEMO = 4096
CHECKED: set[str] = set()
"""Ids already found usable (a loop checks the same id thousands of times): a bounded memo."""
ESCAPED: dict[str, str] = {}
"""Ids as keys, memoized likewise."""


def check_id(value: object, what: str, example: str) -> str:
    r"""``value`` if it is a usable id; a ``ValueError`` naming it and the fix otherwise.

    Args:
        value: the id given.
        what: what it is, for the message (e.g. ``"step id"``).
        example: a call showing a good id, for the message.

    Example:
        >>> check_id("fetch", "step id", "ctx.step.run('fetch', ...)")
        'fetch'
        >>> check_id("a\x1fb", "run id", "run_id='r1'")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: run id 'a\x1fb' contains the control character '\x1f' at position 1; ... run_id='r1'
    """
    if type(value) is str and value in CHECKED:
        return value
    if type(value) is not str or not value:
        msg = f"{what} must be a non-empty str, got {value!r}. Fix: {example}"
        raise ValueError(msg)
    bad = _FORBIDDEN.search(value)
    if bad is not None:
        char = bad.group()
        kind = "an unpaired surrogate" if "\ud800" <= char <= "\udfff" else "the control character"
        msg = (
            f"{what} {value!r} contains {kind} {char!r} at position {bad.start()}; ids must be printable "
            f"text. Fix: {example}"
        )
        raise ValueError(msg)
    if len(CHECKED) >= _MEMO:
        CHECKED.clear()
    CHECKED.add(value)
    return value


def escape(step_id: str) -> str:
    """A step id as it appears in keys: unchanged unless it holds ``%``, ``/`` or ends in ``:<digits>``."""
    found = ESCAPED.get(step_id)
    if found is None:
        found = step_id
        if _SPECIAL.search(step_id) is not None:
            found = _TRAILING_NUMBER.sub(r"%3A\1", step_id.replace("%", "%25").replace("/", "%2F"))
        if len(ESCAPED) >= _MEMO:
            ESCAPED.clear()
        ESCAPED[step_id] = found
    return found


def step_key(scope: str | None, step_id: str, repeat: int, *, legacy: bool = False) -> str:
    """The key of the ``repeat``-th use (0: the first) of ``step_id`` in a scope (None: the run's)."""
    base = step_id if legacy else escape(step_id)
    key = base if repeat == 0 else f"{base}:{repeat}"
    return key if scope is None else f"{scope}/{key}"


def label(key: str) -> str:
    """A key as users read it: the ids as they wrote them, with ``:n`` for repeats."""
    if "%" not in key:
        return key
    return "/".join(_ESCAPES.sub(lambda m: _UNESCAPED[m.group(1)], part) for part in key.split("/"))


def step_id_of(key: str) -> str:
    """The id a step key was made from (the last part, without its repeat number)."""
    last = key.rsplit("/", 1)[-1]
    found = _TRAILING_NUMBER.search(last)
    if found is not None:
        last = last[: found.start()]
    return label(last)
