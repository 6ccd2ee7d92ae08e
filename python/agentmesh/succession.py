"""Succession chains in bundles: the statements (``agentmesh/v1/sig/succession``, made and
checked by the Rust core) that carry an agent id from an identity key someone trusts to the key
a bundle presents. A bundle carries them as ``"succession"``: base64 statements, oldest first,
at most ``MAX_SUCCESSION_CHAIN``. Peers use them to follow a rotation without the
identity-changed error; hubs, to re-bind an id to its new key. Nothing here trusts the hub: the
chain must start at the key the checker itself pinned or bound."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ._native import MAX_SUCCESSION_CHAIN, follow_succession, verify_succession
from .errors import CryptoError, FormatError, IdentityError

__all__ = ["chain_of", "retired_by", "succession_problem", "successor_generation"]


def chain_of(bundle: dict[str, Any]) -> list[bytes]:
    """The statements a bundle carries (empty when it carries none); FormatError when the
    field is not a list of at most MAX_SUCCESSION_CHAIN base64 strings."""
    raw = bundle.get("succession")
    if raw is None:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_SUCCESSION_CHAIN:
        raise FormatError(
            f"bundle field 'succession' must be a list of at most {MAX_SUCCESSION_CHAIN} "
            "base64 statements"
        )
    chain = []
    for item in raw:
        if not isinstance(item, str):
            raise FormatError("bundle field 'succession' must hold base64 strings")
        try:
            chain.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise FormatError("bundle field 'succession' holds invalid base64") from None
    return chain


def _raw_key(key: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise FormatError(f"{what} is not valid base64") from None
    if len(raw) != 32:
        raise FormatError(f"{what} must decode to 32 bytes")
    return raw


def successor_generation(agent_id: str, trusted_key: str, bundle: dict[str, Any]) -> int:
    """The generation of the bundle's identity key when the bundle's chain carries
    ``agent_id`` from ``trusted_key`` (base64, the key the caller pinned or bound) to it. The
    bundle's own signature must have been verified already. Raises IdentityError (no chain,
    not from that key, another id, not to this key), SignatureError or FormatError."""
    chain = chain_of(bundle)
    if not chain:
        raise IdentityError(f"the bundle of {agent_id!r} carries no succession statement")
    return int(
        follow_succession(
            agent_id,
            _raw_key(trusted_key, "the trusted identity key"),
            _raw_key(str(bundle.get("identity_key")), "the bundle's identity key"),
            chain,
        )
    )


def succession_problem(agent_id: str, trusted_key: str, bundle: dict[str, Any]) -> str | None:
    """None when the bundle's chain carries ``agent_id`` from ``trusted_key`` to the bundle's
    key (see :func:`successor_generation`); otherwise what is wrong, in words."""
    try:
        successor_generation(agent_id, trusted_key, bundle)
    except (CryptoError, ValueError) as exc:  # (IdentityError, FormatError, SignatureError)
        return str(exc)
    return None


def retired_by(bundle: dict[str, Any], key: object) -> bool:
    """Whether ``key`` (base64) is an old identity key that the bundle's own succession
    statements moved away from. The bundle is one the caller already trusts (the pinned
    key's); a statement that does not verify counts as not retiring anything."""
    try:
        chain = chain_of(bundle)
        raw = _raw_key(str(key), "the presented identity key")
    except FormatError:
        return False
    for statement in chain:
        try:
            old = verify_succession(statement)["old_identity_key"]
            if _raw_key(str(old), "a statement's old identity key") == raw:
                return True
        except (CryptoError, ValueError):
            continue
    return False
