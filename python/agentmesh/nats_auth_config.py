"""The keys of the agentmesh NATS authorization service, and the server config that trusts it.

Two nkeys, each a seed in its own owner-only file of one directory:

* ``issuer.nk``: an *account* nkey. Every server names its public key as the auth callout
  issuer, and accepts the users the service signs with it;
* ``service.nk``: a *user* nkey, the service's own connection. Every server lists it as a user
  (so it skips the callout) and as the callout's ``auth_users``. An nkey user also makes the
  servers send a nonce in their INFO, which the agents' proofs cover.

:func:`authorization_block` is the ``authorization { ... }`` part of a server config; the rest
of the config is unchanged (docs/nats.md, "Deployment with the authorization service").
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ._native import write_private_file
from .errors import HubError
from .nats_auth_jwt import NkeyPair, new_account_seed, new_user_seed
from .nats_auth_permissions import READER_REPLY_PREFIX, agent_permissions
from .nats_layout import NatsLayout

__all__ = ["AuthKeys", "authorization_block", "authorization_text", "static_user"]

ISSUER_FILE = "issuer.nk"
SERVICE_FILE = "service.nk"
#: Seconds a server waits for the service's answer before refusing a connection (the
#: service reads the directory and may create a consumer: a replicated write).
AUTH_TIMEOUT = 5.0


@dataclass(frozen=True)
class AuthKeys:
    """The issuer (account) and service (user) nkeys."""

    issuer: NkeyPair
    service: NkeyPair

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> AuthKeys:
        folder = Path(directory)
        try:
            issuer = (folder / ISSUER_FILE).read_bytes()
            service = (folder / SERVICE_FILE).read_bytes()
        except OSError as exc:
            raise HubError(
                f"cannot read the authorization service's keys in {folder}: {exc} "
                "(make them with: agentmesh nats-auth --keys DIR --new-keys)"
            ) from None
        keys = cls(NkeyPair(issuer), NkeyPair(service))
        kinds = keys.issuer.public_key[:1] + keys.service.public_key[:1]
        if kinds != "AU":
            raise HubError(
                f"{folder}: {ISSUER_FILE} must hold an account seed, {SERVICE_FILE} a user seed"
            )
        return keys

    @classmethod
    def create(cls, directory: str | os.PathLike[str]) -> AuthKeys:
        """New keys written to ``directory`` (owner-only files); refuses to replace any."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        for name in (ISSUER_FILE, SERVICE_FILE):
            if (folder / name).exists():
                raise HubError(f"{folder / name} exists: not replaced")
        write_private_file(str(folder / ISSUER_FILE), new_account_seed())
        write_private_file(str(folder / SERVICE_FILE), new_user_seed())
        return cls.load(folder)


def authorization_block(keys: AuthKeys) -> str:
    """The ``authorization`` block every server of the cluster needs."""
    return authorization_text(keys.service.public_key, keys.issuer.public_key)


def authorization_text(service: str, issuer: str) -> str:
    """The ``authorization`` block for the service's public nkey ``service`` and the issuer's
    public key ``issuer`` (docs/nats.md shows it with placeholders)."""
    return "\n".join(
        [
            "authorization {",
            f"  timeout: {AUTH_TIMEOUT:g}",
            f"  users: [ {{ nkey: {service} }} ]",
            "  auth_callout {",
            f"    issuer: {issuer}",
            f"    auth_users: [ {service} ]",
            "  }",
            "}",
        ]
    )


def static_user(layout: NatsLayout, agent_id: str, password: str) -> str:
    """One entry of a server's ``authorization { users: [...] }`` for ``agent_id`` without the
    service (small setups, docs/nats.md): the agent's permissions, plus creating its own
    consumer on its own inbox only, plus the lookups' replies, plus (no service answers them
    here) the inbox stream's and every consumer's information. It writes its own directory entry
    and prekeys itself, so a key it rotated away from keeps that right as long as the password."""
    allowed = agent_permissions(layout, agent_id, None)
    consumer = layout.consumer(agent_id)
    publish = [
        *allowed.publish,
        f"$JS.API.CONSUMER.CREATE.{layout.stream}.{consumer}.{layout.inbox_filter(agent_id)}",
        f"$JS.API.STREAM.INFO.{layout.stream}",
        f"$JS.API.CONSUMER.INFO.{layout.stream}.*",
    ]
    subscribe = [*allowed.subscribe, f"{READER_REPLY_PREFIX}.>"]
    return (
        f"{{ user: {json.dumps(agent_id)}, password: {json.dumps(password)}, permissions: {{ "
        f"publish: {{ allow: {json.dumps(publish)} }}, "
        f"subscribe: {{ allow: {json.dumps(subscribe)} }} }} }}"
    )

