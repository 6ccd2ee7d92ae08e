"""The NATS JWTs of the authorization service: what it signs verifies by its issuer, and a JWT
changed in any part is refused (the service trusts a server's request only so). Their use
against a real nats-server is in test_nats_auth.py."""

from __future__ import annotations

import base64
import json

import pytest

pytest.importorskip("nkeys", reason="the authorization service needs nkeys (the dev extra)")

from agentmesh.errors import HubError
from agentmesh.nats_auth_jwt import (
    NkeyPair,
    Permissions,
    decode_jwt,
    encode_jwt,
    new_account_seed,
    new_user_seed,
    user_jwt,
)


def test_a_signed_jwt_verifies_and_says_what_was_signed():
    issuer = NkeyPair(new_account_seed())
    user = NkeyPair(new_user_seed())
    token = user_jwt(
        user_nkey=user.public_key,
        name="agent:alice",
        account="$G",
        permissions=Permissions(publish=("a.>",), subscribe=("_INBOX.x.>",)),
        lifetime=60,
        issuer=issuer,
    )
    claims = decode_jwt(token)
    assert claims["iss"] == issuer.public_key and claims["sub"] == user.public_key
    assert claims["nats"]["pub"] == {"allow": ["a.>"]}
    assert claims["exp"] - claims["iat"] in (59, 60, 61)
    assert issuer.public_key.startswith("A") and user.public_key.startswith("U")


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_a_changed_jwt_is_refused():
    issuer, other = NkeyPair(new_account_seed()), NkeyPair(new_account_seed())
    head, payload, sig = encode_jwt({"sub": "x"}, issuer).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = _b64(dict(claims, sub="y"))
    with pytest.raises(HubError, match="does not verify"):
        decode_jwt(f"{head}.{forged}.{sig}")
    reissued = _b64(dict(claims, iss=other.public_key))
    with pytest.raises(HubError, match="does not verify"):
        decode_jwt(f"{head}.{reissued}.{sig}")
    with pytest.raises(HubError, match="ed25519-nkey"):
        decode_jwt(f"{_b64({'alg': 'none'})}.{payload}.{sig}")
    last = issuer.public_key[-1]
    broken = issuer.public_key[:-1] + ("A" if last != "A" else "B")  # (its checksum fails)
    bad_key = _b64(dict(claims, iss=broken))
    with pytest.raises(HubError, match="public nkey"):
        decode_jwt(f"{head}.{bad_key}.{sig}")
    with pytest.raises(HubError, match="three"):
        decode_jwt("a.b")


def test_a_seed_that_is_none_is_refused():
    with pytest.raises(HubError, match="not an nkey seed"):
        NkeyPair(b"SAnotaseed")
