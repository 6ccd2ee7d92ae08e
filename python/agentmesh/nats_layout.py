"""Where agentmesh keeps things on a NATS JetStream cluster: names, subjects and settings.

One :class:`NatsLayout` (a prefix, default ``agentmesh``) names everything:

* ``<PREFIX>_INBOX``: the inbox stream, work-queue retention, subjects
  ``<prefix>.inbox.<recipient token>.<sender token>``; a durable pull consumer per recipient,
  ``inbox_<hash>``, filtered to ``<prefix>.inbox.<recipient token>.*`` (the sender's token in
  the subject lets an authorization service allow each agent to publish as itself only);
* ``<PREFIX>_DIRECTORY``: a KV bucket, key ``a.<token>`` holding the agent's bundle (the
  first create binds the id to its identity key);
* ``<PREFIX>_PREKEYS``: a KV bucket, key ``p.<token>`` holding the agent's one-time prekeys.

A token is the agent id's UTF-8 bytes in lowercase base32 without padding: subject tokens
and KV keys cannot hold ``.``, ``*``, ``>`` or spaces, and an id may. Every per-agent name
is a pure function of the id, so an authorization service can template permissions per agent
(docs/nats.md).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from dataclasses import dataclass

from .hub_protocol import DEFAULT_MAX_FRAME_SIZE

__all__ = [
    "ACK_WAIT",
    "DUPLICATE_WINDOW",
    "FETCH_BATCH",
    "MAX_PAYLOAD",
    "MIN_SERVER_VERSION",
    "NatsLayout",
    "id_of_token",
    "key_token",
    "token_of",
]

#: The servers' ``max_payload``: the largest envelope the network hub accepts (its frame limit)
#: plus room for headers. nats-server's own default (1 MiB) is too small.
MAX_PAYLOAD = 8 * 1024 * 1024
#: Largest envelope accepted for sending (the network hub's limit, so both hubs carry the same).
MAX_ENVELOPE = DEFAULT_MAX_FRAME_SIZE - 265
#: Resends within this window (same ``Nats-Msg-Id``) are dropped by the stream; it outlasts
#: any retry of a send (leader elections take seconds).
DUPLICATE_WINDOW = 120.0
#: Deliveries fetched at once, and the consumer's ``max_ack_pending``: equal, so the cluster
#: holds back what is newer while a batch is unacknowledged. (That alone does not keep a lost
#: delivery from being overtaken: the receiver's verification does, see nats_receiver.)
FETCH_BATCH = 256
#: Seconds a delivery may stay unacknowledged before the cluster hands it out again (an agent
#: that died holding it, or a cluster restarted meanwhile); a live agent that gives a batch back
#: says so at once (NAK), and one still handling a batch says so every third of this.
ACK_WAIT = 10.0
#: The oldest server release agentmesh runs on (per-subject discard, the fixes of 2.12+).
MIN_SERVER_VERSION = (2, 12, 0)
#: Per-recipient cap by default: the network hub's ``max_queued_per_agent``.
DEFAULT_MAX_QUEUED = 100_000


@functools.lru_cache(maxsize=4096)  # (every envelope's subject names two: keep the busy ones)
def token_of(agent_id: str) -> str:
    """The subject/KV token of ``agent_id``: lowercase base32 of its UTF-8, no padding."""
    return base64.b32encode(agent_id.encode("utf-8")).decode("ascii").rstrip("=").lower()


def id_of_token(token: str) -> str | None:
    """The agent id a token came from, or None if it is no token of ours."""
    padded = token.upper() + "=" * (-len(token) % 8)
    try:
        return base64.b32decode(padded.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None


def key_token(fingerprint: str) -> str:
    """The subject token of an identity key: its fingerprint's 32 hex digits."""
    return fingerprint.replace(":", "")


@dataclass(frozen=True)
class NatsLayout:
    """The names of one agentmesh deployment on a NATS account (``prefix`` separates several
    deployments on one account)."""

    prefix: str = "agentmesh"

    def __post_init__(self) -> None:
        if not self.prefix or not all(c.isalnum() or c in "-_" for c in self.prefix):
            raise ValueError(
                f"NATS prefix must be letters, digits, '-' or '_', not {self.prefix!r}"
            )

    @property
    def stream(self) -> str:
        return f"{self.prefix.upper()}_INBOX"

    @property
    def directory_bucket(self) -> str:
        return f"{self.prefix.upper()}_DIRECTORY"

    @property
    def prekey_bucket(self) -> str:
        return f"{self.prefix.upper()}_PREKEYS"

    @property
    def inbox_subjects(self) -> str:
        return f"{self.prefix}.inbox.*.*"

    def inbox_subject(self, recipient: str, sender: str) -> str:
        """Where ``sender``'s envelopes for ``recipient`` are published."""
        return f"{self.prefix}.inbox.{token_of(recipient)}.{token_of(sender)}"

    def inbox_filter(self, agent_id: str) -> str:
        """Every subject of ``agent_id``'s inbox (its consumer's filter)."""
        return f"{self.prefix}.inbox.{token_of(agent_id)}.*"

    @staticmethod
    def agent_hash(agent_id: str) -> str:
        """A short name of ``agent_id`` for NATS names with a length limit that a long id's
        token would pass."""
        return hashlib.sha256(agent_id.encode("utf-8")).hexdigest()[:40]

    def consumer(self, agent_id: str) -> str:
        """The durable consumer of ``agent_id``'s inbox."""
        return "inbox_" + self.agent_hash(agent_id)

    def reply_prefix(self, agent_id: str) -> str:
        """The prefix of ``agent_id``'s reply subjects (nats-py's ``inbox_prefix``): only
        its own connection may subscribe under it when the authorization service runs."""
        return f"_INBOX.{self.agent_hash(agent_id)}"

    @property
    def service_ping(self) -> str:
        """Where the authorization service answers "are you there" (before a renewal)."""
        return f"{self.prefix}.svc.ping"

    @property
    def service_stream(self) -> str:
        """Where the authorization service answers with the inbox stream's settings and
        counts (no per-subject state: that would name who has queued envelopes for whom)."""
        return f"{self.prefix}.svc.stream"

    @property
    def service_presence(self) -> str:
        """Where the authorization service answers whether an agent is polling its inbox
        (another agent's consumer information would tell its traffic, not only that)."""
        return f"{self.prefix}.svc.presence"

    @property
    def claim_subjects(self) -> str:
        """Where the authorization service takes one-time prekey claims."""
        return f"{self.prefix}.svc.claim.*"

    def claim_subject(self, requester: str) -> str:
        """Where ``requester`` asks the authorization service for another's prekey."""
        return f"{self.prefix}.svc.claim.{token_of(requester)}"

    @property
    def write_subjects(self) -> str:
        """Where the authorization service takes agents' own directory writes (bundles and
        one-time prekeys): ``<prefix>.svc.write.<kind>.<agent token>.<key token>``."""
        return f"{self.prefix}.svc.write.*.*.*"

    def write_subject(self, kind: str, agent_id: str, fingerprint: str) -> str:
        """Where ``agent_id``, connected with the identity key of ``fingerprint``, asks the
        service to write its ``kind`` (``bundle`` or ``prekeys``): the key is in the subject
        (and in the permission), so the service knows which key the writer proved."""
        return f"{self.prefix}.svc.write.{kind}.{token_of(agent_id)}.{key_token(fingerprint)}"

    @staticmethod
    def directory_key(agent_id: str) -> str:
        return f"a.{token_of(agent_id)}"

    @staticmethod
    def prekey_key(agent_id: str) -> str:
        return f"p.{token_of(agent_id)}"

    @staticmethod
    def agent_of_directory_key(key: str) -> str | None:
        return id_of_token(key[2:]) if key.startswith("a.") else None
