"""NATS JWTs and nkeys, as much as the authorization service needs (on the ``nkeys`` package).

A NATS JWT (version 2) is ``base64url(header) "." base64url(claims) "." base64url(signature)``,
no padding, the header ``{"typ":"JWT","alg":"ed25519-nkey"}`` and the signature an Ed25519
signature by the issuer's nkey over the first two parts. The service reads the server's
*authorization request* (signed by the server's nkey) and answers with an *authorization
response* holding a *user* JWT, both signed by the account nkey the servers name as the
``auth_callout`` issuer. Written here rather than depended upon: no vetted Python library for
NATS JWTs exists, and these three claims are all agentmesh uses (tested against nats-server in
``tests/python/test_nats_auth.py``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from .errors import HubError

__all__ = [
    "NkeyPair",
    "Permissions",
    "authorization_response",
    "decode_jwt",
    "new_account_seed",
    "new_user_seed",
    "user_jwt",
]

_HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}


def _nkeys() -> Any:
    try:
        import nkeys
    except ImportError as exc:
        raise HubError(
            "the NATS authorization service needs nkeys: pip install 'agentmesh[nats]'"
        ) from exc
    return nkeys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _new_seed(prefix: int) -> bytes:
    import nacl.signing

    return bytes(_nkeys().encode_seed(bytes(nacl.signing.SigningKey.generate()), prefix))


def new_account_seed() -> bytes:
    """A fresh account nkey seed (``SA...``): the issuer the servers trust for users."""
    return _new_seed(_nkeys().PREFIX_BYTE_ACCOUNT)


def new_user_seed() -> bytes:
    """A fresh user nkey seed (``SU...``): the service's own connection."""
    return _new_seed(_nkeys().PREFIX_BYTE_USER)


class NkeyPair:
    """An nkey from its seed: signs, and tells its public key (``A...``/``U...``)."""

    def __init__(self, seed: bytes | str) -> None:
        raw = seed.encode("ascii") if isinstance(seed, str) else bytes(seed)
        try:
            self._kp = _nkeys().from_seed(bytearray(raw.strip()))
        except Exception as exc:
            raise HubError(f"not an nkey seed: {exc}") from None
        self.seed = raw.strip()
        self.public_key: str = self._kp.public_key.decode("ascii")

    def sign(self, data: bytes) -> bytes:
        return bytes(self._kp.sign(data))


def _public_key_bytes(public_key: str) -> bytes:
    """The 32 raw bytes of a public nkey (prefix byte, key, CRC-16 checksum)."""
    nkeys = _nkeys()
    try:
        raw = base64.b32decode(public_key + "=" * (-len(public_key) % 8))
    except (binascii.Error, ValueError):
        raise HubError(f"not a public nkey: {public_key!r}") from None
    if len(raw) != 35 or nkeys.crc16_checksum(raw[:-2]) != raw[-2:]:
        raise HubError(f"not a public nkey (length or checksum): {public_key!r}")
    return raw[1:33]


def encode_jwt(claims: dict[str, Any], signer: NkeyPair) -> str:
    """Signs ``claims`` (``iss``, ``iat`` and ``jti`` are set here)."""
    body = dict(claims, iss=signer.public_key, iat=int(time.time()))
    body["jti"] = ""
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode("ascii").rstrip("=")
    head = _b64(json.dumps(_HEADER, separators=(",", ":")).encode())
    payload = _b64(json.dumps(body, separators=(",", ":")).encode())
    signature = signer.sign(f"{head}.{payload}".encode("ascii"))
    return f"{head}.{payload}.{_b64(signature)}"


def decode_jwt(token: str) -> dict[str, Any]:
    """The claims of a JWT whose signature verifies by its own ``iss`` nkey; HubError else."""
    import nacl.exceptions
    import nacl.signing

    parts = token.strip().split(".")
    if len(parts) != 3:
        raise HubError("not a JWT: it has no three dot-separated parts")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (ValueError, binascii.Error) as exc:
        raise HubError(f"not a JWT: {exc}") from None
    if not isinstance(claims, dict) or header.get("alg") != _HEADER["alg"]:
        raise HubError("not a NATS v2 JWT (alg ed25519-nkey)")
    key = nacl.signing.VerifyKey(_public_key_bytes(str(claims.get("iss", ""))))
    try:
        key.verify(f"{parts[0]}.{parts[1]}".encode("ascii"), signature)
    except nacl.exceptions.BadSignatureError:
        raise HubError("the JWT's signature does not verify by its issuer") from None
    return claims


@dataclass(frozen=True)
class Permissions:
    """Subjects a user may publish to and subscribe to (allow lists; all else is denied)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def user_jwt(
    *,
    user_nkey: str,
    name: str,
    account: str,
    permissions: Permissions,
    lifetime: float,
    issuer: NkeyPair,
) -> str:
    """A user JWT for the connection the server named ``user_nkey``, placed in ``account``,
    expiring ``lifetime`` seconds from now."""
    claims = {
        "sub": user_nkey,
        "name": name,
        "aud": account,
        "exp": int(time.time() + max(lifetime, 1.0)),
        "nats": {
            "pub": {"allow": list(permissions.publish)},
            "sub": {"allow": list(permissions.subscribe)},
            "subs": -1,
            "data": -1,
            "payload": -1,
            "type": "user",
            "version": 2,
        },
    }
    return encode_jwt(claims, issuer)


def authorization_response(
    *, user_nkey: str, server_id: str, issuer: NkeyPair, jwt: str = "", error: str = ""
) -> str:
    """The answer to one authorization request: the user JWT, or the reason for a refusal."""
    nats: dict[str, Any] = {"type": "authorization_response", "version": 2}
    if jwt:
        nats["jwt"] = jwt
    if error:
        nats["error"] = error
    return encode_jwt({"sub": user_nkey, "aud": server_id, "nats": nats}, issuer)
