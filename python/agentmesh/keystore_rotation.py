"""The files of an identity rotation (``rotate_identity``), written so that a crash at any point
leaves the old identity or the new one usable, never neither. For ``keypair_path="alice.key"``:

* ``alice.key.succession`` -- the succession statements leading to the current key (JSON,
  base64, oldest first, at most ``MAX_SUCCESSION_CHAIN``): published in the bundle, so peers and
  hubs that know an older key follow. Writing it is the rotation's **commit point**.
* ``alice.key.next``, ``alice.key.state.next`` -- the new identity file and its state file
  (sealed with the new key), written before the commit point and renamed over ``alice.key`` and
  ``alice.key.state`` after it.

On the next load (:func:`finish_interrupted`): a ``.next`` identity whose key the statements
name is renamed into place (the commit point was passed); one they do not name is an unfinished
rotation and is deleted, with its state, and the old identity is used as if nothing happened.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._native import MAX_SUCCESSION_CHAIN, verify_succession, write_private_file
from .errors import KeyFileError

if TYPE_CHECKING:  # pragma: no cover
    from .keystore import KeyStore, PersistedState

__all__ = ["attach_chain", "commit_rotation", "finish_interrupted", "read_chain"]

_VERSION = 1


def _beside(store: KeyStore, suffix: str) -> Path:
    return store.path.with_name(store.path.name + suffix)


def succession_path(store: KeyStore) -> Path:
    return _beside(store, ".succession")


def _next_identity(store: KeyStore) -> Path:
    return _beside(store, ".next")


def _next_state(store: KeyStore) -> Path:
    return store.state_path.with_name(store.state_path.name + ".next")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_chain(store: KeyStore) -> list[bytes]:
    """The statements in the succession file (empty without one); KeyFileError if damaged."""
    path = succession_path(store)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise KeyFileError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(raw.decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("v") != _VERSION:
            raise ValueError("unsupported version")
        items = doc["chain"]
        if not isinstance(items, list) or not 0 < len(items) <= MAX_SUCCESSION_CHAIN:
            raise ValueError("the chain must hold 1 to MAX_SUCCESSION_CHAIN statements")
        return [base64.b64decode(str(item), validate=True) for item in items]
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError) as exc:
        raise KeyFileError(f"succession file {str(path)!r} is corrupt ({exc})") from exc


def _target(chain: list[bytes], where: Path) -> str:
    """The identity key (base64) the last statement hands over to."""
    try:
        return str(verify_succession(chain[-1])["new_identity_key"])
    except Exception as exc:
        raise KeyFileError(f"succession file {str(where)!r} does not verify ({exc})") from exc


def _key_of(keypair: Any) -> str:
    return base64.b64encode(bytes(keypair.identity_key)).decode("ascii")


def _remove(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def finish_interrupted(store: KeyStore) -> None:
    """Finish a rotation that passed its commit point, or drop one that did not (see the
    module). The caller holds the identity lock."""
    from . import crypto

    nxt, nxt_state = _next_identity(store), _next_state(store)
    if not nxt.exists() and not nxt_state.exists():
        return
    chain = read_chain(store)
    target = _target(chain, succession_path(store)) if chain else None
    if nxt.exists():
        candidate = crypto.AgentKeyPair.load(str(nxt), passphrase=store._passphrase)
        if target is not None and _key_of(candidate) == target:
            os.replace(nxt, store.path)
            if nxt_state.exists():
                os.replace(nxt_state, store.state_path)
            _fsync_dir(store.path)
            return
        _remove(nxt, nxt_state)  # a rotation that never reached its commit point
        return
    # the identity was renamed into place, its state not yet
    current = store.load_identity()
    if target is not None and _key_of(current) == target:
        os.replace(nxt_state, store.state_path)
        _fsync_dir(store.path)
    else:
        _remove(nxt_state)


def attach_chain(store: KeyStore, keypair: Any) -> None:
    """Publish the succession file's statements with ``keypair`` (they must end at its key)."""
    chain = read_chain(store)
    if not chain:
        return
    where = succession_path(store)
    if _target(chain, where) != _key_of(keypair):
        raise KeyFileError(
            f"succession file {str(where)!r} names another identity key than "
            f"{str(store.path)!r}; it was left untouched"
        )
    keypair.set_succession(chain)


def commit_rotation(
    store: KeyStore, keypair: Any, chain: list[bytes], state: PersistedState
) -> None:
    """Write the new identity ``keypair`` (whose statements are ``chain``) and its ``state``
    in the crash-safe order of the module. Raises StateWriteError/OSError; before the commit
    point nothing of the old identity has changed (the prepared files are removed)."""
    nxt, nxt_state = _next_identity(store), _next_state(store)
    try:
        keypair.save(str(nxt), passphrase=store._passphrase)
        store.save_state(keypair, state, path=nxt_state)
        doc = {"v": _VERSION, "chain": [base64.b64encode(s).decode("ascii") for s in chain]}
        write_private_file(succession_path(store), json.dumps(doc).encode("utf-8"))
    except BaseException:
        _remove(nxt, nxt_state)
        raise
    # past the commit point: a failure here is finished by the next load
    os.replace(nxt, store.path)
    os.replace(nxt_state, store.state_path)
    _fsync_dir(store.path)
