"""Wire protocol of the agentmesh network hub: framing, frame types and body codecs.

Every frame on the wire (in both directions) is::

    u32 big-endian length | u8 frame type | body (length - 1 bytes)

``length`` counts the type byte plus the body, so it is never 0; a receiver refuses any length
above its frame limit before reading the body. All integers are big-endian. The full protocol,
frame by frame, is documented in ``docs/hub.md``; this module is the one place that encodes and
decodes it (server and client both use it).

The hub never looks inside an envelope beyond routing: the client names the recipient in the
SEND frame and the envelope bytes travel opaquely (the server may parse the envelope header to
check that the sender and recipient it carries match the connection and the stated recipient).
"""

from __future__ import annotations

import json
import struct
from enum import IntEnum
from typing import Any

from agentmesh.crypto import check_agent_id as _check_agent_id

# Defined with every other agentmesh exception; imported from here as well, as always.
from agentmesh.errors import HubRequestError, PeerNotFoundError, ProtocolError
from agentmesh.fanout import MAX_FANOUT_RECIPIENTS

__all__ = [
    "CLIENT_NONCE_SIZE",
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_PORT",
    "HEADER",
    "MAGIC",
    "PROTOCOL_VERSION",
    "UNKNOWN_OP",
    "ErrorCode",
    "FrameDecoder",
    "FrameType",
    "HubRequestError",
    "Op",
    "PeerNotFoundError",
    "ProtocolError",
    "Welcome",
    "check_agent_id",
    "decode_deliver",
    "decode_error",
    "decode_hello",
    "decode_register",
    "decode_request",
    "decode_response",
    "decode_send",
    "decode_send_ack",
    "decode_send_error",
    "decode_send_expiring",
    "decode_send_group",
    "decode_send_group_error",
    "decode_welcome",
    "encode_acks",
    "encode_deliver",
    "encode_error",
    "encode_frame",
    "encode_hello",
    "encode_recipient_block",
    "encode_register",
    "encode_request",
    "encode_response",
    "encode_send",
    "encode_send_ack",
    "encode_send_error",
    "encode_send_expiring",
    "encode_send_group",
    "encode_send_group_block",
    "encode_send_group_error",
    "encode_welcome",
    "error_for_code",
    "iter_acks",
]

#: First bytes of the client's HELLO body: "AgentMesh Hub".
MAGIC = b"AMHB"
#: Protocol version spoken by this build (HELLO and WELCOME carry it). Version 2 binds the
#: registration proof to the hub, a client nonce, the bundle and the TLS certificate; a client
#: of this build refuses to register with a hub of version 1 (whose proof a hostile hub could
#: relay), and a hub of this build refuses clients of version 1.
PROTOCOL_VERSION = 2
DEFAULT_PORT = 7700
#: Default largest frame (type byte + body) a peer accepts: 4 MiB of envelope plus headroom.
DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024 + 64 * 1024

HEADER = struct.Struct(">IB")
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
_SEND_HEAD = struct.Struct(">IBQB")  # frame header + client seq + recipient length
_SEND_EXPIRING_HEAD = struct.Struct(">IBQQB")  # ... + client seq + expires + recipient length
_DELIVER_HEAD = struct.Struct(">IBQ")  # frame header + delivery id
_SEND_GROUP_HEAD = struct.Struct(">IBQ")  # frame header + client seq
_ACK_FRAME = struct.Struct(">IBQ")
_HELLO = struct.Struct(">4sHH")
_WELCOME = struct.Struct(">H32s16sIII")
_REQ_HEAD = struct.Struct(">IB")  # request id + op
_RESP_HEAD = struct.Struct(">IB")  # request id + status
_SEND_ERR = struct.Struct(">QH")
_ERR = struct.Struct(">H")

CHALLENGE_SIZE = 32
#: Largest expiry a SEND_EXPIRING may carry (ms since the epoch; far beyond any real one).
MAX_EXPIRY_MS = 2**62
HUB_ID_SIZE = 16
SESSION_ID_SIZE = 16
CLIENT_NONCE_SIZE = 32
SIGNATURE_SIZE = 64
MAX_AGENT_ID_BYTES = 255


class FrameType(IntEnum):
    """The one-byte frame type. C = client to hub, S = hub to client."""

    HELLO = 0x01  # C: magic(4) | u16 version | u16 flags (0)
    # S: u16 version | challenge(32) | hub_id(16) | u32 max frame | u32 ping ms | u32 window
    WELCOME = 0x02
    # C: signature(64) | client session(16) | client nonce(32) | bundle JSON (UTF-8)
    REGISTER = 0x03
    LOOKUP = 0x04  # C: empty; an unauthenticated connection (get_bundle/list_agents/count only)
    # S: JSON object {"mode", "agent_id", "acked_seq", "queued", "next_seq", "prekeys",
    # "prekey_limit"}
    READY = 0x05
    SEND = 0x10  # C: u64 client seq | u8 recipient length | recipient (UTF-8) | envelope
    SEND_ACK = 0x11  # S: u64 client seq: every send of this connection up to it is resolved
    SEND_ERROR = 0x12  # S: u64 client seq | u16 error code | message (UTF-8)
    DELIVER = 0x13  # S: u64 delivery id | envelope
    DELIVERY_ACK = 0x14  # C: n x u64 delivery ids (n >= 1)
    # C: u64 client seq | u16 n (1..1000) | n x (u8 length | recipient) | group message without
    # its recipient field (agentmesh.fanout): one upload, a copy in each recipient's inbox
    SEND_GROUP = 0x15
    # S: u64 client seq | u16 error code | u8 length | recipient | message (UTF-8): one member
    # of a SEND_GROUP refused (the others' copies are stored; SEND_ACK covers the seq)
    SEND_GROUP_ERROR = 0x16
    # C: u64 client seq | u64 expires (ms since the epoch) | u8 recipient length | recipient |
    # envelope: a SEND the hub must not deliver after ``expires`` (it drops it then). Only to a
    # hub whose READY says ``expiry``.
    SEND_EXPIRING = 0x17
    PING = 0x20  # either: opaque body (<= 64 bytes), answered by PONG with the same body
    PONG = 0x21  # either: echo of the PING body
    REQUEST = 0x30  # C: u32 request id | u8 op | argument (UTF-8)
    RESPONSE = 0x31  # S: u32 request id | u8 status (0 ok, else error code low byte) | JSON
    # either: u32 channel | u8 frame type | body: a frame of one agent on a shared connection
    # (agentmesh.hub_channels). Only on a lookup connection whose READY says ``channels``.
    CHANNEL = 0x40
    ERROR = 0x7F  # S: u16 error code | message (UTF-8); connection-level, usually then closed


_KNOWN_TYPES = frozenset(int(t) for t in FrameType)


class Op(IntEnum):
    """REQUEST operations."""

    GET_BUNDLE = 1  # argument: agent id; response: bundle object or null
    # Argument: "" or the "next" of the previous answer; response: {"agents": [ids, sorted],
    # "next": where the following page starts, or null after the last page}
    LIST_AGENTS = 2
    MESSAGE_COUNT = 3  # no argument; response: int
    # Agent connections only. Argument: agent id; response: the bundle with one of the agent's
    # one-time prekeys ("one_time_prekey": {"id", "key"}), removed from the hub for good, or
    # the bundle alone when none is left; null for an unknown id.
    CLAIM_BUNDLE = 4
    # Agent connections only. Argument: JSON list of {"id": u32 > 0, "key": base64 of 32 bytes},
    # the caller's own one-time prekeys (an empty list just asks; at most
    # prekey_upload.MAX_PREKEY_UPLOAD); response: {"held": how many the hub now holds for the
    # caller, "limit": how many it keeps}.
    ADD_PREKEYS = 5
    # Agent connections only. Argument: the caller's new bundle (JSON; same id and identity
    # key, e.g. a rotated signed prekey); response: true. Later lookups and claims serve it.
    UPDATE_BUNDLE = 6
    # Argument: agent id; response: true when that agent is registered and connected now
    # (presence; any connection may ask, as it may list the agents). A hub of an earlier
    # version answers BAD_REQUEST "unknown op 7".
    IS_ONLINE = 7


class ErrorCode(IntEnum):
    """Codes carried by ERROR, SEND_ERROR and failed RESPONSE frames."""

    PROTOCOL = 1  # malformed frame or a frame not allowed in this state
    UNSUPPORTED_VERSION = 2
    FRAME_TOO_LARGE = 3
    UNKNOWN_FRAME = 4
    HANDSHAKE_TIMEOUT = 5
    IDLE_TIMEOUT = 6
    TOO_MANY_CONNECTIONS = 7
    BAD_REGISTRATION = 8  # invalid bundle or challenge signature
    ID_TAKEN = 9  # the id is bound to another identity key
    NOT_AUTHENTICATED = 10  # a lookup connection tried to send
    PEER_NOT_FOUND = 11
    INBOX_FULL = 12
    ENVELOPE_MISMATCH = 13  # envelope sender/recipient differ from the connection/stated recipient
    BAD_ENVELOPE = 14  # the envelope does not parse
    REPLACED = 15  # a newer connection registered the same agent
    SHUTTING_DOWN = 16
    INTERNAL = 17
    TOO_MANY_AGENTS = 18
    BAD_REQUEST = 19


#: How a hub's answer to a REQUEST op it does not know begins (followed by the op number).
UNKNOWN_OP = "unknown op"


def error_for_code(
    code: int, message: str, *, recipient: str | None = None, client_seq: int | None = None
) -> HubRequestError:
    """The exception a client raises for an error code received from the hub."""
    cls = PeerNotFoundError if code == ErrorCode.PEER_NOT_FOUND else HubRequestError
    return cls(code, message, recipient=recipient, client_seq=client_seq)


def check_agent_id(agent_id: object, what: str = "agent id") -> str:
    """Return ``agent_id`` if it is a valid id (non-empty, <= 255 UTF-8 bytes, no control
    characters: the core's rule, ``agentmesh.crypto.check_agent_id``), else ValueError."""
    _check_agent_id(agent_id, what)
    assert isinstance(agent_id, str)  # for the type checker: anything else was refused
    return agent_id


# --------------------------------------------------------------------------------------------
# Decoder


class FrameDecoder:
    """Incremental decoder: feed bytes, get back complete ``(type, body)`` frames.

    Refuses (with :class:`ProtocolError`) a length of 0, a length above ``max_frame_size`` (as
    soon as the 4-byte prefix is in, before buffering the body) and an unknown frame type. The
    buffer never holds more than one frame plus one read's worth of bytes.
    """

    __slots__ = ("_buf", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        frames: list[tuple[int, bytes]] = []
        off = 0
        end = len(buf)
        limit = self.max_frame_size
        unpack = HEADER.unpack_from
        try:
            while end - off >= 4:
                length = _U32.unpack_from(buf, off)[0]
                if length == 0:
                    raise ProtocolError(ErrorCode.PROTOCOL, "zero-length frame")
                if length > limit:
                    raise ProtocolError(
                        ErrorCode.FRAME_TOO_LARGE,
                        f"frame of {length} bytes exceeds the limit of {limit} bytes",
                    )
                if end - off < 4 + length:
                    break
                ftype = unpack(buf, off)[1]
                if ftype not in _KNOWN_TYPES:
                    raise ProtocolError(
                        ErrorCode.UNKNOWN_FRAME, f"unknown frame type 0x{ftype:02x}"
                    )
                frames.append((ftype, bytes(buf[off + 5 : off + 4 + length])))
                off += 4 + length
        finally:
            if off:
                del buf[:off]
        return frames


# --------------------------------------------------------------------------------------------
# Encoders and decoders of frame bodies


def encode_frame(ftype: int, body: bytes = b"") -> bytes:
    return HEADER.pack(len(body) + 1, ftype) + body


def encode_hello(version: int = PROTOCOL_VERSION) -> bytes:
    return encode_frame(FrameType.HELLO, _HELLO.pack(MAGIC, version, 0))


def decode_hello(body: bytes) -> int:
    """Return the client's protocol version; ProtocolError for anything but a HELLO."""
    if len(body) < _HELLO.size or body[:4] != MAGIC:
        raise ProtocolError(ErrorCode.PROTOCOL, "not an agentmesh hub client (bad magic)")
    _, version, _flags = _HELLO.unpack_from(body)
    return int(version)


class Welcome:
    """The hub's answer to HELLO."""

    __slots__ = ("challenge", "hub_id", "max_frame_size", "ping_interval", "version", "window")

    def __init__(
        self,
        version: int,
        challenge: bytes,
        hub_id: bytes,
        max_frame_size: int,
        ping_interval: float,
        window: int,
    ) -> None:
        self.version = version
        self.challenge = challenge
        self.hub_id = hub_id
        self.max_frame_size = max_frame_size
        self.ping_interval = ping_interval
        self.window = window


def encode_welcome(w: Welcome) -> bytes:
    return encode_frame(
        FrameType.WELCOME,
        _WELCOME.pack(
            w.version,
            w.challenge,
            w.hub_id,
            w.max_frame_size,
            max(1, round(w.ping_interval * 1000)),
            w.window,
        ),
    )


def decode_welcome(body: bytes) -> Welcome:
    if len(body) < _WELCOME.size:
        raise ProtocolError(ErrorCode.PROTOCOL, "short WELCOME frame")
    version, challenge, hub_id, max_frame, ping_ms, window = _WELCOME.unpack_from(body)
    return Welcome(version, challenge, hub_id, max_frame, ping_ms / 1000.0, window)


def encode_register(
    signature: bytes, session: bytes, client_nonce: bytes, bundle: dict[str, Any]
) -> bytes:
    if (
        len(signature) != SIGNATURE_SIZE
        or len(session) != SESSION_ID_SIZE
        or len(client_nonce) != CLIENT_NONCE_SIZE
    ):
        raise ValueError("bad signature, session id or client nonce size")
    data = json.dumps(bundle, separators=(",", ":"), sort_keys=True).encode()
    return encode_frame(FrameType.REGISTER, signature + session + client_nonce + data)


def decode_register(body: bytes) -> tuple[bytes, bytes, bytes, dict[str, Any]]:
    """Return (signature, client session id, client nonce, bundle dict)."""
    sig_end = SIGNATURE_SIZE
    session_end = sig_end + SESSION_ID_SIZE
    head = session_end + CLIENT_NONCE_SIZE
    if len(body) <= head:
        raise ProtocolError(ErrorCode.BAD_REGISTRATION, "short REGISTER frame")
    try:
        bundle = json.loads(body[head:].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError(ErrorCode.BAD_REGISTRATION, "bundle is not valid JSON") from None
    if not isinstance(bundle, dict):
        raise ProtocolError(ErrorCode.BAD_REGISTRATION, "bundle is not a JSON object")
    return body[:sig_end], body[sig_end:session_end], body[session_end:head], bundle


def encode_send(client_seq: int, recipient: bytes, envelope: bytes) -> bytes:
    """A SEND frame; ``recipient`` is the UTF-8 encoded id (1..255 bytes)."""
    rlen = len(recipient)
    return (
        _SEND_HEAD.pack(1 + 8 + 1 + rlen + len(envelope), FrameType.SEND, client_seq, rlen)
        + recipient
        + envelope
    )


def decode_send(body: bytes, at: int = 0) -> tuple[int, str, bytes]:
    """Return (client seq, recipient, envelope) of the SEND body starting at ``at`` (a
    channel's frame is read where it lies in the CHANNEL frame, without a copy)."""
    if len(body) < at + 10:
        raise ProtocolError(ErrorCode.PROTOCOL, "short SEND frame")
    seq = _U64.unpack_from(body, at)[0]
    rlen = body[at + 8]
    start = at + 9
    if rlen == 0 or len(body) < start + rlen:
        raise ProtocolError(ErrorCode.PROTOCOL, "bad recipient in SEND frame")
    try:
        recipient = body[start : start + rlen].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.PROTOCOL, "recipient is not UTF-8") from None
    return seq, recipient, body[start + rlen :]


def encode_send_expiring(
    client_seq: int, expires_ms: int, recipient: bytes, envelope: bytes
) -> bytes:
    """A SEND_EXPIRING frame: a SEND the hub drops, undelivered, after ``expires_ms`` (ms since
    the epoch)."""
    rlen = len(recipient)
    return (
        _SEND_EXPIRING_HEAD.pack(
            1 + 16 + 1 + rlen + len(envelope),
            FrameType.SEND_EXPIRING,
            client_seq,
            expires_ms,
            rlen,
        )
        + recipient
        + envelope
    )


def decode_send_expiring(body: bytes) -> tuple[int, int, str, bytes]:
    """Return (client seq, expires in ms since the epoch, recipient, envelope)."""
    if len(body) < 18:
        raise ProtocolError(ErrorCode.PROTOCOL, "short SEND_EXPIRING frame")
    expires = _U64.unpack_from(body, 8)[0]
    if expires > MAX_EXPIRY_MS:
        # (a store keeps it as a signed 64-bit integer: an out-of-range one must never reach it)
        raise ProtocolError(
            ErrorCode.PROTOCOL, f"SEND_EXPIRING expiry {expires} is out of range (0..2**62)"
        )
    seq, recipient, envelope = decode_send(body[:8] + body[16:])
    return seq, expires, recipient, envelope


def encode_send_group(client_seq: int, recipients: list[bytes], envelope: bytes) -> bytes:
    """A SEND_GROUP frame; ``recipients`` are UTF-8 encoded ids (1..255 bytes each), 1 to
    MAX_FANOUT_RECIPIENTS of them."""
    return encode_send_group_block(client_seq, encode_recipient_block(recipients), envelope)


def encode_recipient_block(recipients: list[bytes]) -> bytes:
    """``u16 n | (u8 length | id) x n``: the recipient list of a SEND_GROUP (kept by a sender
    that sends to the same members again)."""
    if not 1 <= len(recipients) <= MAX_FANOUT_RECIPIENTS:
        raise ValueError(f"a SEND_GROUP names 1..{MAX_FANOUT_RECIPIENTS} recipients")
    parts = [_U16.pack(len(recipients))]
    for rb in recipients:
        parts.append(bytes((len(rb),)))
        parts.append(rb)
    return b"".join(parts)


def encode_send_group_block(client_seq: int, block: bytes, envelope: bytes) -> bytes:
    """A SEND_GROUP frame from a recipient block (:func:`encode_recipient_block`)."""
    head = _SEND_GROUP_HEAD.pack(
        9 + len(block) + len(envelope), FrameType.SEND_GROUP, client_seq
    )
    return head + block + envelope


def decode_send_group(body: bytes) -> tuple[int, list[str], bytes]:
    """Return (client seq, recipients, unaddressed group message). ProtocolError for a
    malformed frame: no recipient or more than MAX_FANOUT_RECIPIENTS, an id empty, cut short,
    not UTF-8 or listed twice, no envelope after the list."""
    if len(body) < 11:
        raise ProtocolError(ErrorCode.PROTOCOL, "short SEND_GROUP frame")
    seq = _U64.unpack_from(body)[0]
    n = _U16.unpack_from(body, 8)[0]
    if not 1 <= n <= MAX_FANOUT_RECIPIENTS:
        raise ProtocolError(
            ErrorCode.PROTOCOL,
            f"SEND_GROUP names {n} recipients (1..{MAX_FANOUT_RECIPIENTS} allowed)",
        )
    off = 10
    recipients: list[str] = []
    for _ in range(n):
        rlen = body[off] if off < len(body) else 0
        if rlen == 0 or len(body) < off + 1 + rlen:
            raise ProtocolError(ErrorCode.PROTOCOL, "bad recipient in SEND_GROUP frame")
        try:
            recipients.append(body[off + 1 : off + 1 + rlen].decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(ErrorCode.PROTOCOL, "recipient is not UTF-8") from None
        off += 1 + rlen
    if len(set(recipients)) != n:
        raise ProtocolError(ErrorCode.PROTOCOL, "SEND_GROUP names a recipient twice")
    if off >= len(body):
        raise ProtocolError(ErrorCode.PROTOCOL, "SEND_GROUP frame without an envelope")
    return int(seq), recipients, body[off:]


def encode_send_group_error(client_seq: int, code: int, recipient: str, message: str) -> bytes:
    rb = recipient.encode("utf-8")
    return encode_frame(
        FrameType.SEND_GROUP_ERROR,
        _SEND_ERR.pack(client_seq, code) + bytes((len(rb),)) + rb + message.encode("utf-8"),
    )


def decode_send_group_error(body: bytes) -> tuple[int, int, str, str]:
    """Return (client seq, error code, recipient, message)."""
    head = _SEND_ERR.size
    if len(body) < head + 2 or body[head] == 0 or len(body) < head + 1 + body[head]:
        raise ProtocolError(ErrorCode.PROTOCOL, "short SEND_GROUP_ERROR frame")
    seq, code = _SEND_ERR.unpack_from(body)
    end = head + 1 + body[head]
    recipient = body[head + 1 : end].decode("utf-8", "replace")
    return int(seq), int(code), recipient, body[end:].decode("utf-8", "replace")


def encode_send_ack(client_seq: int) -> bytes:
    return _ACK_FRAME.pack(9, FrameType.SEND_ACK, client_seq)


def decode_send_ack(body: bytes) -> int:
    if len(body) != 8:
        raise ProtocolError(ErrorCode.PROTOCOL, "bad SEND_ACK frame")
    return int(_U64.unpack(body)[0])


def encode_send_error(client_seq: int, code: int, message: str) -> bytes:
    return encode_frame(
        FrameType.SEND_ERROR, _SEND_ERR.pack(client_seq, code) + message.encode("utf-8")
    )


def decode_send_error(body: bytes) -> tuple[int, int, str]:
    if len(body) < _SEND_ERR.size:
        raise ProtocolError(ErrorCode.PROTOCOL, "short SEND_ERROR frame")
    seq, code = _SEND_ERR.unpack_from(body)
    return int(seq), int(code), body[_SEND_ERR.size :].decode("utf-8", "replace")


def encode_deliver(delivery_id: int, envelope: bytes) -> bytes:
    return _DELIVER_HEAD.pack(9 + len(envelope), FrameType.DELIVER, delivery_id) + envelope


def decode_deliver(body: bytes) -> tuple[int, bytes]:
    if len(body) < 9:
        raise ProtocolError(ErrorCode.PROTOCOL, "short DELIVER frame")
    return int(_U64.unpack_from(body)[0]), body[8:]


def encode_acks(delivery_ids: list[int]) -> bytes:
    n = len(delivery_ids)
    return HEADER.pack(1 + 8 * n, FrameType.DELIVERY_ACK) + struct.pack(f">{n}Q", *delivery_ids)


def iter_acks(body: bytes) -> tuple[int, ...]:
    if not body or len(body) % 8:
        raise ProtocolError(ErrorCode.PROTOCOL, "bad DELIVERY_ACK frame")
    return struct.unpack(f">{len(body) // 8}Q", body)


def encode_request(request_id: int, op: int, argument: str = "") -> bytes:
    return encode_frame(FrameType.REQUEST, _REQ_HEAD.pack(request_id, op) + argument.encode())


def decode_request(body: bytes) -> tuple[int, int, str]:
    if len(body) < _REQ_HEAD.size:
        raise ProtocolError(ErrorCode.PROTOCOL, "short REQUEST frame")
    rid, op = _REQ_HEAD.unpack_from(body)
    try:
        arg = body[_REQ_HEAD.size :].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.PROTOCOL, "request argument is not UTF-8") from None
    return int(rid), int(op), arg


def encode_response(request_id: int, status: int, payload: bytes) -> bytes:
    """``payload`` is JSON (status 0) or a UTF-8 message (status = error code)."""
    return encode_frame(FrameType.RESPONSE, _RESP_HEAD.pack(request_id, status) + payload)


def decode_response(body: bytes) -> tuple[int, int, bytes]:
    if len(body) < _RESP_HEAD.size:
        raise ProtocolError(ErrorCode.PROTOCOL, "short RESPONSE frame")
    rid, status = _RESP_HEAD.unpack_from(body)
    return int(rid), int(status), body[_RESP_HEAD.size :]


def encode_error(code: int, message: str) -> bytes:
    return encode_frame(FrameType.ERROR, _ERR.pack(code) + message.encode("utf-8"))


def decode_error(body: bytes) -> tuple[int, str]:
    if len(body) < 2:
        return int(ErrorCode.PROTOCOL), "malformed ERROR frame"
    return int(_ERR.unpack_from(body)[0]), body[2:].decode("utf-8", "replace")
