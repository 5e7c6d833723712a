"""Which stores may hand pickles (and cell-step code) back to this user.

Unpickling runs code, so a pickled value, a ``%%step`` definition or module name is only
loaded from a store this user created on this machine. Creating a store writes a tag in
it: an HMAC, keyed by a secret private to the user (``~/.config/nbdurable/secret``, mode
0600), of the store folder's device and inode and the user's id. A store folder handed over
(cloned with a repository, unpacked from a download, planted by another local user) has
no valid tag: nothing pickled in it is loaded; the steps that stored such values execute
again. ``trust_store(path)`` (or ``python -m nbdurable trust PATH``) tags a store the user
vouches for, e.g. one written by an earlier version or moved to another disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets

TAG_FILE = "trusted-by-owner"
_KEY_BYTES = 32


def _config_dir() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "nbdurable")


def user_secret() -> bytes | None:
    """The user's secret (created on first use, readable by the user alone), or None if it cannot be."""
    path = os.path.join(_config_dir(), "secret")
    try:
        with open(path, "rb") as f:
            key = f.read()
        if len(key) == _KEY_BYTES:
            return key
    except OSError:
        pass
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb") as f:
            f.write(secrets.token_bytes(_KEY_BYTES))
        try:
            os.link(tmp, path)  # fails if another process made one first: theirs wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        with open(path, "rb") as f:
            key = f.read()
    except OSError:
        return None
    return key if len(key) == _KEY_BYTES else None


def _expected(path: str, key: bytes) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    uid = getattr(os, "getuid", lambda: -1)()
    message = f"nbdurable-store\x00{st.st_dev}\x00{st.st_ino}\x00{uid}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def trust_store(path: str) -> bool:
    """Vouch for a store: its pickled values and cell steps may be loaded from now on.

    Returns:
        True if the tag was written (False: no secret could be kept, or the folder is read-only).

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> is_trusted(folder), trust_store(folder), is_trusted(folder)
        (False, True, True)
    """
    key = user_secret()
    tag = _expected(path, key) if key is not None else None
    if tag is None:
        return False
    target = os.path.join(path, TAG_FILE)
    try:
        fd = os.open(target + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="ascii") as f:
            f.write(tag)
        os.replace(target + ".tmp", target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(target + ".tmp")
        return False
    return True


def is_trusted(path: str) -> bool:
    """Whether this user created (or vouched for) the store at ``path``, here."""
    try:
        with open(os.path.join(path, TAG_FILE), encoding="ascii") as f:
            found = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return False
    key = user_secret()
    expected = _expected(path, key) if key is not None else None
    return expected is not None and hmac.compare_digest(found, expected)
