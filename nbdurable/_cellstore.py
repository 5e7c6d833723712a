"""Storing and restoring the names a ``%%step`` cell binds, each on its own.

Each name gets an entry in the cell step's manifest (plain JSON): a data file written by
its data codec (arrays, frames...) or by pickle for other objects, the source of a def,
class or lambda, or a module's name. A name whose value did not change since it was last
stored keeps its file (nothing is rewritten). A name pickle cannot store is left out, with
the reason; closed files and ``with`` targets are left out silently.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import pickle
import types
from typing import TYPE_CHECKING, Any, BinaryIO

from nbdurable import _records
from nbdurable._cellast import CellShape, definition_source
from nbdurable._codecs import DataCodec, codec_for, registry
from nbdurable._diskcompat import Unreadable
from nbdurable._hashing import content_digest
from nbdurable.errors import NonRetriableError, OutputUnserializableError

if TYPE_CHECKING:
    from nbdurable._store import Store

MMAP_FROM = 1 << 20


class UnpicklableVariableError(NonRetriableError, OutputUnserializableError):
    """A ``%%step --strict`` cell bound a name whose value cannot be stored."""


def _pickle_write(value: Any, fileobj: BinaryIO) -> None:
    pickle.dump(value, fileobj, protocol=pickle.HIGHEST_PROTOCOL)


def _pickle_read(path: str) -> Any:
    with open(path, "rb") as f:
        return pickle.load(f)  # noqa: S301 - cell steps load only from a store this user created (_trust)


PICKLE_FILE = DataCodec(name="pickle", suffix=".pkl", write=_pickle_write, read=_pickle_read)


def _json_write(value: Any, fileobj: BinaryIO) -> None:
    fileobj.write(json.dumps(value).encode())


def _json_read(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


OUTPUTS_FILE = DataCodec(name="outputs", suffix=".json", write=_json_write, read=_json_read)


def _codec_named(name: str) -> DataCodec:
    return {"pickle": PICKLE_FILE, "outputs": OUTPUTS_FILE}.get(name) or registry.named(name)


def _is_resource(var: str, value: Any, shape: CellShape) -> bool:
    """A closed file or the target of a ``with`` block: nothing anyone wants back."""
    if var in shape.with_targets:
        return True
    return isinstance(getattr(value, "closed", None), bool) and value.closed is True and hasattr(value, "read")


def _why_not(value: Any) -> str | None:
    """Why pickle cannot store ``value`` (None if it can), without keeping the pickle."""
    try:
        pickle.dump(value, _Discard(), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - pickling raises many types
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


class _Discard(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        return len(b)


def store_names(
    store: Store,
    folder: str,
    namespace: dict[str, Any],
    shape: CellShape,
    source: str,
    user_module: str,
    previous: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, str]]:
    """Store what a cell bound; the manifest entries, and the names left out with why."""
    entries: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for var in shape.binds:
        if var not in namespace:
            continue
        value = namespace[var]
        if _is_resource(var, value, shape):
            continue
        if isinstance(value, types.ModuleType):
            entries[var] = {"kind": "module", "name": value.__name__}
        elif var in shape.defs and getattr(value, "__module__", None) == user_module:
            entries[var] = {"kind": "source", "text": definition_source(source, shape.defs[var])}
        elif var in shape.lambdas and getattr(value, "__name__", "") == "<lambda>":
            entries[var] = {"kind": "lambda", "text": shape.lambdas[var]}
        else:
            entry = _store_value(store, folder, value, previous.get(var))
            if isinstance(entry, str):
                skipped[var] = entry
            else:
                entries[var] = entry
    return entries, skipped


def _unchanged(store: Store, before: Any, digest: str | None) -> bool:
    """Whether a name's stored file already holds this content (then it is not rewritten)."""
    if digest is None or not isinstance(before, dict) or before.get("kind") != "file":
        return False
    if before.get("digest") != digest:
        return False
    path = store.data.path(_records.DataRef(**before["ref"]))
    try:
        return path is not None and os.stat(path).st_size == before["ref"]["size"]
    except OSError:
        return False


def _store_value(store: Store, folder: str, value: Any, before: Any) -> dict[str, Any] | str:
    """The entry of one value (its file), or why it cannot be stored."""
    digest = content_digest(value)
    if _unchanged(store, before, digest):
        return dict(before)
    codec = codec_for(value)
    ref: _records.DataRef | None = None
    if codec is not None:
        with contextlib.suppress(OutputUnserializableError):
            ref = store.data.write(folder, codec, value)
    if ref is None:
        why = _why_not(value)
        if why is not None:
            return f"{type(value).__module__}.{type(value).__qualname__}: {why}"
        ref = store.data.write(folder, PICKLE_FILE, value)
    return {"kind": "file", "ref": ref.model_dump(exclude={"v"}), "digest": digest}


def restore_names(store: Store, entries: dict[str, Any], namespace: dict[str, Any], name: str) -> list[str]:
    """Put stored names back, in the order the cell bound them; the names that could not be read."""
    lost = []
    for var, entry in entries.items():
        try:
            value = load_entry(store, entry, namespace, f"<%%step {name}: {var}>")
        except Exception:  # noqa: BLE001 - one damaged entry must not stop the others
            lost.append(var)
            continue
        if value is not _SKIP:
            namespace[var] = value
    return lost


_SKIP = object()


def load_entry(store: Store, entry: dict[str, Any], namespace: dict[str, Any], filename: str) -> Any:
    """The value of one manifest entry (a def or class is executed into ``namespace``: ``_SKIP``)."""
    kind = entry.get("kind")
    if kind == "module":
        return importlib.import_module(entry["name"])
    if kind == "source":
        exec(compile(entry["text"], filename, "exec"), namespace)  # noqa: S102 - the user's own def, trusted store
        return _SKIP
    if kind == "lambda":
        return eval(compile(entry["text"], filename, "eval"), namespace)  # noqa: S307 - the user's own lambda
    ref = _records.DataRef(**entry["ref"])
    value = store.data.read(ref, _codec_named(ref.codec), mmap=ref.size >= MMAP_FROM)
    if isinstance(value, Unreadable):
        raise OSError(value.reason)
    return value


def entry_files(entries: dict[str, Any]) -> set[str]:
    """The data files a manifest's entries use."""
    return {e["ref"]["file"] for e in entries.values() if isinstance(e, dict) and e.get("kind") == "file"}


def store_outputs(store: Store, folder: str, outputs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Store a cell's recorded outputs in a file of their own (read only when the cell restores)."""
    if not outputs:
        return None
    return store.data.write(folder, OUTPUTS_FILE, outputs).model_dump(exclude={"v"})


def load_outputs(store: Store, ref: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Recorded outputs, or none when they cannot be read."""
    if ref is None:
        return []
    value = store.data.read(_records.DataRef(**ref), OUTPUTS_FILE, mmap=False)
    return value if isinstance(value, list) else []


def value_digest(value: Any) -> str | None:
    """The content fingerprint of a value a cell reads (objects by their pickled content)."""
    if isinstance(value, types.ModuleType):
        return f"module:{value.__name__}"
    return content_digest(value)
