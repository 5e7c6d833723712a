"""A step's stored value, read back and written: which codec may load it, data files, warnings.

``StepValues`` belongs to one execution: it loads a stored output only with a codec the
function chose (never a pickle for a JSON function, nor from a store this user did not
create), reads and writes data files (arrays, frames), and turns anything unreadable into a
warning and ``UNREADABLE`` so the step executes again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from nbdurable import _keys
from nbdurable._codecs import codec_for as data_codec_for
from nbdurable._codecs import registry
from nbdurable._diskcompat import Unreadable
from nbdurable._serde import JSON, PICKLE, Codec
from nbdurable._store import Store
from nbdurable._types import UNREADABLE
from nbdurable.errors import OutputUnserializableError

if TYPE_CHECKING:
    from nbdurable._records import DataRef

MMAP_FROM = 1 << 20
"""Data files from this size up are memory-mapped on replay (copy-on-write), when the client allows it."""
_PLAIN = frozenset({dict, list, tuple, str, int, float, bool, type(None), bytes})


class StepValues:
    """Reading and writing the stored values of one execution's steps.

    Args:
        store: the store.
        fn_id: the function (for messages).
        data_folder: the run's folder for data files.
        mmap: whether large data files may be memory-mapped on replay.
    """

    def __init__(self, store: Store, fn_id: str, data_folder: str, *, mmap: bool) -> None:
        self.store = store
        self.fn_id = fn_id
        self.data_folder = data_folder
        self.mmap = mmap

    def safe_codec(self, key: str, stored: str, codec: Codec) -> Codec | None:
        """The codec to rebuild a stored output with, or None when it must not be loaded.

        A pickle is loaded only where the reader chose pickle, and only from a store this user
        created (``_trust``): a store folder someone handed over never runs code here.
        """
        if stored == "pickle":
            if codec.name != "pickle":
                warnings.warn(
                    f"nbdurable: step {_keys.label(key)!r} of {self.fn_id!r} is stored as a pickle, but "
                    f"{self.fn_id!r} uses the json serializer, and pickles are loaded only where "
                    "serializer='pickle' was chosen; the step executes again.",
                    RuntimeWarning,
                    stacklevel=5,
                )
                return None
            if not self.store.trusted:
                self.store.warn_untrusted()
                return None
            return PICKLE
        return JSON if stored != codec.name else codec

    def read_data(self, key: str, ref: DataRef) -> Any:
        """A value stored in a data file, or ``UNREADABLE`` (with a warning) so the step executes again."""
        try:
            codec = registry.named(ref.codec)
        except KeyError:
            value: Any = Unreadable(f"its codec {ref.codec!r} is not registered in this process")
        else:
            value = self.store.data.read(ref, codec, mmap=self.mmap and ref.size >= MMAP_FROM)
        if isinstance(value, Unreadable):
            warnings.warn(
                f"nbdurable: the stored output of step {_keys.label(key)!r} cannot be read ({value.reason}); "
                "the step executes again.",
                RuntimeWarning,
                stacklevel=5,
            )
            return UNREADABLE
        return value

    def stored_value(self, key: str, load: Callable[[bytes], Any], payload: bytes) -> Any:
        """A stored output rebuilt by ``load``, or ``UNREADABLE`` (with a warning) so the step executes again."""
        try:
            return load(payload)
        except Exception as exc:  # noqa: BLE001 - an unreadable output is re-executed, never a crash
            warnings.warn(
                f"nbdurable: the stored output of step {_keys.label(key)!r} cannot be rebuilt "
                f"({type(exc).__name__}: {exc}); the step executes again.",
                RuntimeWarning,
                stacklevel=5,
            )
            return UNREADABLE

    def write_data(self, key: str, value: Any, codec: Codec) -> DataRef | None:
        """Store a data value (array, frame, table...) in a file of its own; None for other values."""
        if type(value) in _PLAIN:
            return None
        data_codec = data_codec_for(value)
        if data_codec is None:
            return None
        try:
            return self.store.data.write(self.data_folder, data_codec, value)
        except OutputUnserializableError as exc:
            if codec.name == "pickle":
                return None  # the user chose pickle: it stores what the data codec cannot
            msg = f"step {_keys.label(key)!r}: {exc}"
            raise OutputUnserializableError(msg) from None
