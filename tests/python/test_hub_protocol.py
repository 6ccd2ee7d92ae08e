"""Framing and codecs of the hub protocol (no network, no crypto)."""

from __future__ import annotations

import struct

import pytest

from agentmesh.errors import HubError
from agentmesh.hub_protocol import (
    MAGIC,
    PROTOCOL_VERSION,
    ErrorCode,
    FrameDecoder,
    FrameType,
    HubRequestError,
    Op,
    PeerNotFoundError,
    ProtocolError,
    Welcome,
    check_agent_id,
    decode_deliver,
    decode_error,
    decode_hello,
    decode_register,
    decode_request,
    decode_response,
    decode_send,
    decode_send_ack,
    decode_send_error,
    decode_send_expiring,
    decode_welcome,
    encode_acks,
    encode_deliver,
    encode_error,
    encode_frame,
    encode_hello,
    encode_register,
    encode_request,
    encode_response,
    encode_send,
    encode_send_ack,
    encode_send_error,
    encode_send_expiring,
    encode_welcome,
    error_for_code,
    iter_acks,
)


def one(frame: bytes, limit: int = 1 << 20) -> tuple[int, bytes]:
    frames = FrameDecoder(limit).feed(frame)
    assert len(frames) == 1
    return frames[0]


def test_frame_layout_is_length_type_body() -> None:
    frame = encode_frame(FrameType.PING, b"abc")
    assert frame == struct.pack(">IB", 4, 0x20) + b"abc"
    assert one(frame) == (FrameType.PING, b"abc")


def test_decoder_handles_any_split_and_many_frames() -> None:
    frames = [encode_send(i, b"bob", bytes([i]) * i) for i in range(1, 40)]
    stream = b"".join(frames)
    for chunk in (1, 2, 3, 7, 64, len(stream)):
        dec = FrameDecoder()
        got: list[tuple[int, bytes]] = []
        for off in range(0, len(stream), chunk):
            got.extend(dec.feed(stream[off : off + chunk]))
        assert [decode_send(b) for _, b in got] == [
            (i, "bob", bytes([i]) * i) for i in range(1, 40)
        ]
        assert dec.buffered == 0


def test_oversized_length_is_refused_before_the_body_arrives() -> None:
    dec = FrameDecoder(1024)
    with pytest.raises(ProtocolError) as info:
        dec.feed(struct.pack(">I", 1025))
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    # An HTTP request or other garbage reads as a huge length.
    with pytest.raises(ProtocolError):
        FrameDecoder(1024).feed(b"GET / HTTP/1.1\r\n\r\n")


def test_zero_length_and_unknown_type_are_refused() -> None:
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(b"\x00\x00\x00\x00")
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(b"\x00\x00\x00\x01\xee")
    assert info.value.code == ErrorCode.UNKNOWN_FRAME


def test_hello_and_welcome() -> None:
    _, body = one(encode_hello())
    assert body.startswith(MAGIC)
    assert decode_hello(body) == PROTOCOL_VERSION
    with pytest.raises(ProtocolError):
        decode_hello(b"XXXX\x00\x01\x00\x00")
    with pytest.raises(ProtocolError):
        decode_hello(b"AM")
    w = Welcome(1, b"c" * 32, b"h" * 16, 123456, 0.5, 77)
    _, body = one(encode_welcome(w))
    back = decode_welcome(body)
    assert (back.version, back.challenge, back.hub_id, back.max_frame_size, back.window) == (
        1,
        b"c" * 32,
        b"h" * 16,
        123456,
        77,
    )
    assert back.ping_interval == pytest.approx(0.5)


def test_register_roundtrip_and_bad_json() -> None:
    bundle = {"agent_id": "alice", "identity_key": "AAAA"}
    _, body = one(encode_register(b"s" * 64, b"k" * 16, b"n" * 32, bundle))
    assert decode_register(body) == (b"s" * 64, b"k" * 16, b"n" * 32, bundle)
    with pytest.raises(ProtocolError) as info:
        decode_register(b"s" * 112 + b"{not json")
    assert info.value.code == ErrorCode.BAD_REGISTRATION
    with pytest.raises(ProtocolError):
        decode_register(b"s" * 112 + b"[1, 2]")
    with pytest.raises(ProtocolError):
        decode_register(b"short")


def test_send_deliver_acks_codecs() -> None:
    _, body = one(encode_send(2**40, "bøb".encode(), b"\x00env"))
    assert decode_send(body) == (2**40, "bøb", b"\x00env")
    with pytest.raises(ProtocolError):
        decode_send(b"\x00" * 8 + b"\x00")  # empty recipient
    with pytest.raises(ProtocolError):
        decode_send(b"\x00" * 8 + b"\x05ab")  # recipient longer than the frame
    with pytest.raises(ProtocolError):
        decode_send(b"\x00" * 8 + b"\x02\xff\xfe")  # not UTF-8
    _, body = one(encode_deliver(99, b"payload"))
    assert decode_deliver(body) == (99, b"payload")
    _, body = one(encode_acks([1, 2, 2**63]))
    assert iter_acks(body) == (1, 2, 2**63)
    with pytest.raises(ProtocolError):
        iter_acks(b"\x00" * 7)
    _, body = one(encode_send_ack(5))
    assert decode_send_ack(body) == 5
    _, body = one(encode_send_error(7, ErrorCode.INBOX_FULL, "inbox full"))
    assert decode_send_error(body) == (7, ErrorCode.INBOX_FULL, "inbox full")


def test_send_expiring_codec() -> None:
    ftype, body = one(encode_send_expiring(3, 1_700_000_000_123, b"bob", b"\x00env"))
    assert ftype == FrameType.SEND_EXPIRING
    assert decode_send_expiring(body) == (3, 1_700_000_000_123, "bob", b"\x00env")
    with pytest.raises(ProtocolError, match="short SEND_EXPIRING"):
        decode_send_expiring(b"\x00" * 17)
    with pytest.raises(ProtocolError, match="bad recipient"):
        decode_send_expiring(b"\x00" * 16 + b"\x05ab")
    _, body = one(encode_send_expiring(3, 2**64 - 1, b"bob", b"env"))
    with pytest.raises(ProtocolError, match="out of range"):
        decode_send_expiring(body)


def test_requests_responses_errors() -> None:
    _, body = one(encode_request(5, Op.GET_BUNDLE, "alice"))
    assert decode_request(body) == (5, Op.GET_BUNDLE, "alice")
    _, body = one(encode_response(5, 0, b"null"))
    assert decode_response(body) == (5, 0, b"null")
    _, body = one(encode_error(ErrorCode.ID_TAKEN, "taken"))
    assert decode_error(body) == (ErrorCode.ID_TAKEN, "taken")
    assert decode_error(b"")[0] == ErrorCode.PROTOCOL


def test_error_classes() -> None:
    err = error_for_code(ErrorCode.PEER_NOT_FOUND, "Peer 'x' not found on hub", recipient="x")
    assert isinstance(err, PeerNotFoundError)
    assert isinstance(err, ValueError)
    assert isinstance(err, HubError)
    assert err.recipient == "x"
    assert str(err) == "Peer 'x' not found on hub"
    other = error_for_code(ErrorCode.INBOX_FULL, "inbox full")
    assert type(other) is HubRequestError
    assert other.code == ErrorCode.INBOX_FULL
    assert error_for_code(250, "future code").code == 250


@pytest.mark.parametrize("bad", ["", "a\nb", "tab\there", "x" * 256, "\x7f", "é" * 128, 5, None])
def test_agent_id_checks(bad: object) -> None:
    with pytest.raises(ValueError):
        check_agent_id(bad)


def test_agent_id_ok() -> None:
    assert check_agent_id("alice") == "alice"
    assert check_agent_id("é" * 127) == "é" * 127
    assert check_agent_id("a" * 255) == "a" * 255
