"""Turning step outputs into bytes and back: strict JSON, pydantic for rich types, pickle."""

from __future__ import annotations

import functools
import json
import pickle
import typing
from typing import Any, Protocol

from nbdurable._preview import preview
from nbdurable._process import STATE
from nbdurable._types import NO_TYPE
from nbdurable.errors import OutputUnserializableError

SERIALIZERS = ("json", "pickle")

_JSON_NATIVE: frozenset[Any] = frozenset(
    {None, type(None), int, float, str, bool, dict, list, Any, object}
    | {"None", "int", "float", "str", "bool", "dict", "list", "Any", "object", "typing.Any"}
)
_FIX = (
    "Fix: return JSON data (dict, list, str, int, float, bool, None); or annotate the handler's "
    "return type (e.g. `-> MyModel`, `-> datetime`) or pass `output_type=`; or use "
    '`serializer="pickle"` on the client or function.'
)


def non_str_keys(data: Any) -> list[Any]:
    """The dict keys in ``data`` that are not a str (at most one: the first found)."""
    if isinstance(data, dict):
        for key, value in data.items():
            found = [key] if not isinstance(key, str) else non_str_keys(value)
            if found:
                return found
    elif isinstance(data, (list, tuple)):
        for value in data:
            found = non_str_keys(value)
            if found:
                return found
    return []


_SCALARS = frozenset({int, float, str, bool, type(None)})


class Codec(Protocol):
    """Bytes in, value out, for one serializer and output type."""

    name: str

    def dumps(self, value: Any, step_key: str) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JsonCodec:
    """Strict JSON: anything json cannot encode is refused, never silently coerced."""

    name = "json"

    def dumps(self, value: Any, step_key: str) -> bytes:
        try:
            # NaN and infinities (common in metrics) are kept, as Python's json writes and reads them.
            data = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError, RecursionError) as exc:
            problem = str(exc)
        else:
            if type(value) in _SCALARS:
                return data
            bad = non_str_keys(value)  # json would quietly turn them into str
            if not bad:
                return data
            problem = f"dict keys must be str, got {bad[0]!r}"
        msg = (
            f"step {step_key!r} returned {_describe(value)}, which the json serializer cannot store ({problem}). {_FIX}"
        )
        raise OutputUnserializableError(msg) from None

    def loads(self, data: bytes) -> Any:
        return _decode(data.decode())


class PydanticCodec:
    """Rich values (models, dataclasses, datetimes...) stored as JSON and rebuilt via pydantic."""

    name = "json"

    def __init__(self, tp: Any) -> None:
        import pydantic

        self.tp = tp
        self.adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(tp)

    def dumps(self, value: Any, step_key: str) -> bytes:
        try:
            return self.adapter.dump_json(value, warnings="error")
        except Exception as exc:  # noqa: BLE001 - pydantic raises several types here
            # pydantic's text starts with a heading ("Pydantic serializer warnings:"): show the detail.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = [line for line in lines if not line.endswith(":")]
            first = (detail or lines or [type(exc).__name__])[0]
            msg = (
                f"step {step_key!r} returned {_describe(value)}, which does not match its output type "
                f"{_type_name(self.tp)} ({first}). Fix: return a {_type_name(self.tp)}, or correct the "
                "handler's return annotation / `output_type=`."
            )
            raise OutputUnserializableError(msg) from None

    def loads(self, data: bytes) -> Any:
        return self.adapter.validate_json(data)


class PickleCodec:
    """Arbitrary Python objects; chosen explicitly with ``serializer="pickle"``."""

    name = "pickle"

    def dumps(self, value: Any, step_key: str) -> bytes:
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - pickling raises many types
            msg = (
                f"step {step_key!r} returned {_describe(value)}, which pickle cannot store ({exc}). "
                "Fix: return plain data, or an object that pickles (no open files, locks or lambdas)."
            )
            raise OutputUnserializableError(msg) from None

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)  # noqa: S301 - the user chose pickle for their own store


_decode = json.JSONDecoder().decode
JSON = JsonCodec()
PICKLE = PickleCodec()


def check_serializer(serializer: str) -> str:
    """Validate a serializer name."""
    if serializer not in SERIALIZERS:
        msg = f"serializer={serializer!r} is not one of {SERIALIZERS}"
        raise ValueError(msg)
    return serializer


@functools.lru_cache(maxsize=512)
def _pydantic_codec(tp: Any) -> PydanticCodec:
    return PydanticCodec(tp)


def codec_for(serializer: str, output_type: Any) -> Codec:
    """The codec for a serializer and an output type (``NO_TYPE`` when there is none)."""
    if serializer == "pickle":
        return PICKLE
    if output_type is NO_TYPE or output_type in _JSON_NATIVE:
        return JSON
    try:
        return _pydantic_codec(output_type)
    except TypeError:  # unhashable annotation objects
        pass
    try:
        return PydanticCodec(output_type)
    except Exception:  # noqa: BLE001 - a type pydantic cannot rebuild (an array, a frame): stored by value
        return JSON


def return_annotation(handler: Any) -> Any:
    """The handler's resolved return annotation, or ``NO_TYPE``; cached per code object and annotation."""
    fn = handler
    while isinstance(fn, functools.partial):
        fn = fn.func
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        call = getattr(type(fn), "__call__", None)  # noqa: B004 - a callable object
        code = getattr(call, "__code__", None)
        fn = call
        if code is None:
            return NO_TYPE
    ann = getattr(fn, "__annotations__", {}).get("return", NO_TYPE)
    # Closures made by one factory share a code object, not their return annotation.
    key = (code, ann)
    cacheable = True
    try:
        found = STATE.annotations.get(key)
    except TypeError:  # an unhashable annotation object: not cached
        cacheable, found = False, None
    if found is not None:
        return found
    if isinstance(ann, str) and ann not in _JSON_NATIVE:
        try:
            ann = typing.get_type_hints(fn).get("return", NO_TYPE)
        except Exception:  # noqa: BLE001 - unresolvable forward refs: fall back to plain JSON
            ann = NO_TYPE
    if isinstance(ann, str):
        ann = NO_TYPE
    if cacheable:
        STATE.annotations.put(key, ann)
    return ann


def _type_name(tp: Any) -> str:
    return getattr(tp, "__qualname__", None) or repr(tp)


def _describe(value: Any) -> str:
    return f"a {type(value).__module__}.{type(value).__qualname__} ({preview(value, 60)})"
