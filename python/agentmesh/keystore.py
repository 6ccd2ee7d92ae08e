"""Persistence of an agent's identity, session state and pinned peer keys.

Layout, for ``keypair_path="alice.key"``:

* ``alice.key`` -- the identity (``AgentKeyPair.save``/``load``, optionally encrypted with a
  passphrase by the Rust core).
* ``alice.key.state`` -- everything else an agent must remember to continue its sessions after a
  restart: one ``CryptoSession.export_state()`` per peer, the pinned identity key of every peer
  (trust on first use) and the last bundle seen for each. The body is sealed at rest with a
  key derived from the identity (``agentmesh.crypto.seal_at_rest``), so with a passphrase on the
  identity both files are protected by it. After an identity rotation it also holds, for a
  grace period, the previous identity and the sessions the rotation retired.

Both files are written by one writer, ``agentmesh._native.write_private_file`` (the Rust core's
``private_file``): mode 0600 whatever was there before, a randomly named temp file created
exclusively in the same directory, no symlink followed or replaced, fsync, rename, fsync of the
directory, and no temp file left behind when anything fails.

A corrupt or unreadable file is a :class:`~agentmesh.errors.KeyFileError` and is never replaced:
the agent refuses to start rather than silently lose an identity or a session.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._native import write_private_file
from .errors import IdentityInUseError, KeyFileError

STATE_SUFFIX = ".state"
_MAGIC = b"AGENTMESH-STATE\x01"
_PLAIN = b"P"
_SEALED = b"S"
_STATE_VERSION = 1

__all__ = ["STATE_SUFFIX", "KeyStore", "PersistedState"]


def refuse_loose_permissions(path: Path, what: str) -> None:
    """Like ssh with a private key: a file that other users may read or write is refused,
    saying which ``chmod`` fixes it (this library writes its files 0600; a looser mode came
    from a copy or a hand edit, and someone else may have read, or swapped, the keys)."""
    if os.name != "posix":
        return
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return  # (the caller reports a missing file in its own words)
    except OSError:
        return  # (unreadable: the read that follows says why)
    loose = mode & 0o077
    if loose:
        raise KeyFileError(
            f"{what} {str(path)!r} is open to other users (mode {mode & 0o777:04o}): its keys "
            f"may have been read or replaced. If that is impossible here, make it private: "
            f"chmod 600 {str(path)!r}"
        )


def _crypto() -> Any:
    from . import crypto

    return crypto


def _as_passphrase(passphrase: str | bytes | None) -> str | bytes | None:
    if passphrase is None:
        return None
    if isinstance(passphrase, (str, bytes)):
        if not passphrase:
            raise ValueError("passphrase must not be empty (pass None for no passphrase)")
        return passphrase
    raise TypeError(f"passphrase must be str or bytes, not {type(passphrase).__name__}")


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


@dataclass
class PersistedState:
    """What survives a restart besides the identity itself."""

    #: peer id -> ``CryptoSession.export_state()`` bytes (SECRET)
    sessions: dict[str, bytes] = field(default_factory=dict)
    #: peer id -> base64 Ed25519 identity key pinned on first use
    pins: dict[str, str] = field(default_factory=dict)
    #: peer id -> last verified public bundle (lets a session be re-created without the hub)
    bundles: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: hub store id (``hub_id``) -> last delivery id handled from that store
    delivered: dict[bytes, int] = field(default_factory=dict)
    #: when the signed prekey ``signed_prekey_id`` was made (ms since the epoch; None: not
    #: recorded yet)
    signed_prekey_since: int | None = None
    signed_prekey_id: int | None = None
    #: peers whose session they opened and this agent never answered, oldest first
    inbound_only: list[str] = field(default_factory=list)
    #: group id -> the group's record (membership, signed record, sealed sender-key state;
    #: JSON-safe, see agent_groups.py)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: after an identity rotation: the previous identity (``AgentKeyPair.to_bytes()``, SECRET),
    #: the sessions retired by a rotation (this agent's or a peer's; sealed exports, SECRET),
    #: and until when (ms) they are kept to open what was sealed before it
    retired_identity: bytes | None = None
    retired_sessions: dict[str, bytes] = field(default_factory=dict)
    retired_until: int = 0


def _delivered_from_doc(value: Any) -> dict[bytes, int]:
    """The state file's ``delivered`` map (hex hub id -> delivery id), checked: a damaged entry
    could make the agent skip real deliveries, so it is an error, not a default."""
    out: dict[bytes, int] = {}
    for hub_id, delivery_id in dict(value).items():
        if type(delivery_id) is not int or delivery_id < 0:
            raise ValueError(f"delivered: bad delivery id {delivery_id!r}")
        out[bytes.fromhex(hub_id)] = delivery_id
    return out


def _optional_uint_from_doc(value: Any) -> int | None:
    """An optional non-negative integer field (a time in ms, or a key id)."""
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise ValueError(f"signed prekey record: bad value {value!r}")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _retired_to_doc(state: PersistedState) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "until": state.retired_until,
        "sessions": {p: _b64(v) for p, v in state.retired_sessions.items()},
    }
    if state.retired_identity is not None:
        doc["identity"] = _b64(state.retired_identity)
    return doc


def _retired_from_doc(value: Any, state: PersistedState) -> None:
    """The state file's ``retired`` record into ``state`` (nothing when there is none)."""
    if value is None:
        return
    record = dict(value)
    until = record.get("until")
    if type(until) is not int or until < 0:
        raise ValueError(f"retired: bad time {until!r}")
    state.retired_until = until
    state.retired_sessions = {
        str(p): base64.b64decode(v, validate=True)
        for p, v in dict(record.get("sessions", {})).items()
    }
    identity = record.get("identity")
    if identity is not None:
        state.retired_identity = base64.b64decode(identity, validate=True)


class KeyStore:
    """The files behind one ``keypair_path``."""

    def __init__(self, path: str | os.PathLike[str], passphrase: str | bytes | None = None):
        self.path = Path(os.fspath(path)).expanduser()
        self.state_path = self.path.with_name(self.path.name + STATE_SUFFIX)
        self._passphrase = _as_passphrase(passphrase)
        self._lock_fd: int | None = None
        self._finalizer: weakref.finalize | None = None

    def __repr__(self) -> str:
        return f"KeyStore({str(self.path)!r})"

    # -- exclusive use --------------------------------------------------------------------------

    def acquire(self) -> None:
        """Take the exclusive lock on this identity (``<path>.lock``) for the agent's lifetime.

        Two live agents -- in two processes or in one -- using the same identity would fork its
        session state: the state file would be overwritten by whichever saved last, and a
        rolled-back ratchet could reuse message keys. So the second one is refused. The lock is
        advisory (``flock``) and released by :meth:`release`, when the process exits, or when the
        agent object is garbage collected. Without ``fcntl`` (Windows) this is a no-op.
        """
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        if self._lock_fd is not None:
            return
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise KeyFileError(
                f"cannot open lock file {str(lock_path)!r}: {exc.strerror or exc}"
            ) from exc
        for attempt in range(2):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 0:
                    import gc

                    gc.collect()  # an unreachable, unclosed agent of this process lets go
                    continue
                try:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                except OSError:
                    holder = ""
                os.close(fd)
                who = f"process {holder}" if holder else "another agent"
                if holder == str(os.getpid()):
                    who = "another agent in this process (close() it first)"
                raise IdentityInUseError(
                    f"identity {str(self.path)!r} is in use by {who}; one identity's "
                    "sessions must never be driven by two agents at once"
                ) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
        self._lock_fd = fd
        self._finalizer = weakref.finalize(self, _close_fd, fd)

    def release(self) -> None:
        finalizer, self._finalizer = self._finalizer, None
        self._lock_fd = None
        if finalizer is not None:
            finalizer()

    # -- identity -------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.path.exists()

    def load_identity(self) -> Any:
        """Load the identity file; KeyFileError if it is corrupt, unreadable, locked or open to
        other users."""
        crypto = _crypto()
        if self.path.is_dir():
            raise KeyFileError(f"identity file {str(self.path)!r} is a directory")
        refuse_loose_permissions(self.path, "identity file")
        try:
            return crypto.AgentKeyPair.load(str(self.path), passphrase=self._passphrase)
        except KeyFileError:
            raise
        except OSError as exc:
            raise KeyFileError(
                f"cannot read identity file {str(self.path)!r}: {exc.strerror or exc}"
            ) from exc
        except (ValueError, TypeError) as exc:
            raise KeyFileError(f"identity file {str(self.path)!r} is not usable: {exc}") from exc

    def create_identity(self, agent_id: str) -> Any:
        """Generate a new identity and write it; refuses to overwrite an existing file."""
        crypto = _crypto()
        if self.path.exists() or self.path.is_symlink():
            raise FileExistsError(f"refusing to overwrite existing key file {str(self.path)!r}")
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        kp = crypto.AgentKeyPair.generate(agent_id)
        kp.save(str(self.path), passphrase=self._passphrase)
        return kp

    def save_identity(self, keypair: Any, if_revision: int | None = None) -> bool:
        """Rewrite the identity file atomically (same identity; its prekeys changed: new ones
        must survive a restart, used and rotated-out ones must leave the disk; or it remembers
        a new set-up). With ``if_revision``, only if the keypair is still at that revision;
        returns whether it wrote. Raises StateWriteError naming the file and the OS error."""
        return bool(
            keypair.save(str(self.path), passphrase=self._passphrase, if_revision=if_revision)
        )

    def load_or_create_identity(self, agent_id: str) -> tuple[Any, bool]:
        """Return ``(keypair, created)``. The identity's agent id must be ``agent_id``. A
        rotation that a crash interrupted is finished first, or undone if it had not reached
        its commit point (``keystore_rotation``)."""
        from . import keystore_rotation

        keystore_rotation.finish_interrupted(self)
        if self.path.exists() or self.path.is_symlink():
            kp = self.load_identity()
            keystore_rotation.attach_chain(self, kp)
            if kp.agent_id != agent_id:
                raise ValueError(
                    f"identity file {str(self.path)!r} belongs to agent {kp.agent_id!r}, "
                    f"not {agent_id!r}"
                )
            return kp, False
        return self.create_identity(agent_id), True

    # -- state ----------------------------------------------------------------------------------

    def load_state(self, keypair: Any) -> PersistedState:
        """Read the state file (an empty state if there is none yet)."""
        try:
            refuse_loose_permissions(self.state_path, "state file")
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return PersistedState()
        except OSError as exc:
            raise KeyFileError(
                f"cannot read state file {str(self.state_path)!r}: {exc.strerror or exc}"
            ) from exc
        where = f"state file {str(self.state_path)!r}"
        advice = (
            "; it was left untouched -- move it away to start with fresh sessions (peers set up "
            "new ones on their own)"
        )
        if not raw.startswith(_MAGIC) or len(raw) < len(_MAGIC) + 1:
            raise KeyFileError(f"{where} is not an agentmesh state file{advice}")
        kind = raw[len(_MAGIC) : len(_MAGIC) + 1]
        body = raw[len(_MAGIC) + 1 :]
        if kind == _SEALED:
            crypto = _crypto()
            if not hasattr(crypto, "open_at_rest"):
                raise KeyFileError(f"{where} is encrypted and this build cannot open it")
            try:
                body = crypto.open_at_rest(keypair, body)
            except Exception as exc:
                raise KeyFileError(
                    f"{where} cannot be decrypted with this identity (corrupt, or it belongs "
                    f"to another key){advice}"
                ) from exc
        elif kind != _PLAIN:
            raise KeyFileError(f"{where} has an unknown encoding{advice}")
        try:
            doc = json.loads(body.decode("utf-8"))
            if not isinstance(doc, dict) or doc.get("v") != _STATE_VERSION:
                raise ValueError("unsupported version")
            if doc.get("agent_id") != keypair.agent_id:
                raise KeyFileError(
                    f"{where} belongs to agent {doc.get('agent_id')!r}, not "
                    f"{keypair.agent_id!r}{advice}"
                )
            if doc.get("fingerprint") != keypair.fingerprint:
                raise KeyFileError(f"{where} belongs to another identity key{advice}")
            state = PersistedState(
                sessions={
                    str(p): base64.b64decode(v, validate=True)
                    for p, v in dict(doc.get("sessions", {})).items()
                },
                pins={str(p): str(v) for p, v in dict(doc.get("pins", {})).items()},
                bundles={str(p): dict(v) for p, v in dict(doc.get("bundles", {})).items()},
                delivered=_delivered_from_doc(doc.get("delivered", {})),
                signed_prekey_since=_optional_uint_from_doc(doc.get("signed_prekey_since")),
                signed_prekey_id=_optional_uint_from_doc(doc.get("signed_prekey_id")),
                inbound_only=[str(p) for p in list(doc.get("inbound_only", []))],
                groups={str(g): dict(v) for g, v in dict(doc.get("groups", {})).items()},
            )
            _retired_from_doc(doc.get("retired"), state)
        except KeyFileError:
            raise
        except (ValueError, TypeError, AttributeError, binascii.Error, UnicodeError) as exc:
            raise KeyFileError(f"{where} is corrupt ({exc}){advice}") from exc
        return state

    def save_state(self, keypair: Any, state: PersistedState, path: Path | None = None) -> None:
        """Write the whole state atomically (0600), sealed at rest when the build supports it
        (to ``path`` instead of the state file: a rotation prepares the next one)."""
        doc = {
            "v": _STATE_VERSION,
            "agent_id": keypair.agent_id,
            "fingerprint": keypair.fingerprint,
            "sessions": {p: base64.b64encode(v).decode("ascii") for p, v in state.sessions.items()},
            "pins": state.pins,
            "bundles": state.bundles,
            "delivered": {h.hex(): d for h, d in state.delivered.items()},
            "inbound_only": state.inbound_only,
            "groups": state.groups,
        }
        if state.retired_sessions or state.retired_identity is not None:
            doc["retired"] = _retired_to_doc(state)
        if state.signed_prekey_since is not None:
            doc["signed_prekey_since"] = state.signed_prekey_since
            doc["signed_prekey_id"] = state.signed_prekey_id
        body = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode("utf-8")
        crypto = _crypto()
        if hasattr(crypto, "seal_at_rest"):
            data = _MAGIC + _SEALED + crypto.seal_at_rest(keypair, body)
        elif self._passphrase is not None:
            raise KeyFileError(
                "this build cannot encrypt the state file (agentmesh.crypto.seal_at_rest is "
                "missing); refusing to write session secrets unencrypted next to a "
                "passphrase-protected identity"
            )
        else:
            data = _MAGIC + _PLAIN + body
        write_private_file(self.state_path if path is None else path, data)
