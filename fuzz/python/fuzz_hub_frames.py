"""Atheris harness for the hub's frame decoder and frame-body codecs (agentmesh.hub_protocol).

Run (from the repository root; needs ``pip install atheris``):

    python fuzz/python/fuzz_hub_frames.py fuzz/python/corpus -max_total_time=600
    python fuzz/python/fuzz_hub_frames.py -runs=0 fuzz/python/corpus      # replay the seeds

Input layout: ``u16 max_frame_size (1..4096) | u8 chunk seed | stream bytes``. The stream is fed
to a FrameDecoder in chunks of pseudo-random sizes and, separately, all at once. Checked:

* the only exception either decoder raises is ProtocolError, with the same code both ways;
* chunked and whole feeding return the same frames and leave the same bytes buffered;
* every frame re-encodes (encode_frame) to exactly the bytes it was decoded from;
* the buffer never holds a complete frame or more than one frame's worth of bytes;
* every body decoder (decode_hello, decode_welcome, decode_register, decode_send,
  decode_send_group, ...) raises
  nothing but ProtocolError, and the exact codecs round-trip (encode(decode(body)) == frame).
"""

from __future__ import annotations

import os
import struct
import sys

import atheris

# Instrument the frame codec (and the json module it calls), not the whole agentmesh package that
# `import agentmesh` pulls in.
with atheris.instrument_imports(include=["agentmesh.hub_protocol", "json"]):
    from agentmesh import hub_protocol as hp

def _chunks(stream: bytes, seed: int) -> list[bytes]:
    """Deterministic split of ``stream`` into pieces of 1..64 bytes (an LCG driven by ``seed``)."""
    out, pos, x = [], 0, seed or 1
    while pos < len(stream):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        n = 1 + (x >> 16) % 64
        out.append(stream[pos : pos + n])
        pos += n
    return out


def _feed_all(dec: hp.FrameDecoder, pieces: list[bytes]):
    frames: list[tuple[int, bytes]] = []
    for piece in pieces:
        try:
            frames.extend(dec.feed(piece))
        except hp.ProtocolError as e:
            return frames, e.code
        # Invariant after every feed: what is buffered is an incomplete frame.
        buf = dec.buffered
        assert buf < 4 + dec.max_frame_size, "decoder buffered more than one frame"
    return frames, None


def _check_body(ftype: int, body: bytes) -> None:
    frame = hp.encode_frame(ftype, body)
    try:
        if ftype == hp.FrameType.HELLO:
            hp.decode_hello(body)
        elif ftype == hp.FrameType.WELCOME:
            w = hp.decode_welcome(body)
            if len(body) == struct.calcsize(">H32s16sIII") and w.ping_interval >= 0.001:
                assert hp.encode_welcome(w) == frame, "WELCOME does not round-trip"
        elif ftype == hp.FrameType.REGISTER:
            sig, session, bundle = hp.decode_register(body)
            assert len(sig) == hp.SIGNATURE_SIZE and len(session) == hp.SESSION_ID_SIZE
            assert isinstance(bundle, dict)
        elif ftype == hp.FrameType.SEND:
            seq, recipient, env = hp.decode_send(body)
            assert hp.encode_send(seq, recipient.encode("utf-8"), env) == frame, "SEND"
        elif ftype == hp.FrameType.SEND_GROUP:
            seq, recipients, env = hp.decode_send_group(body)
            assert 1 <= len(recipients) <= 1000 and len(set(recipients)) == len(recipients)
            encoded = [r.encode("utf-8") for r in recipients]
            assert hp.encode_send_group(seq, encoded, env) == frame, "SEND_GROUP"
        elif ftype == hp.FrameType.SEND_GROUP_ERROR:
            seq, code, recipient, msg = hp.decode_send_group_error(body)
            assert recipient and isinstance(msg, str) and 0 <= code <= 0xFFFF and seq >= 0
        elif ftype == hp.FrameType.SEND_ACK:
            assert hp.encode_send_ack(hp.decode_send_ack(body)) == frame, "SEND_ACK"
        elif ftype == hp.FrameType.SEND_ERROR:
            seq, code, msg = hp.decode_send_error(body)
            assert isinstance(msg, str) and 0 <= code <= 0xFFFF and seq >= 0
        elif ftype == hp.FrameType.DELIVER:
            did, env = hp.decode_deliver(body)
            assert hp.encode_deliver(did, env) == frame, "DELIVER"
        elif ftype == hp.FrameType.DELIVERY_ACK:
            ids = hp.iter_acks(body)
            assert hp.encode_acks(list(ids)) == frame, "DELIVERY_ACK"
        elif ftype == hp.FrameType.REQUEST:
            rid, op, arg = hp.decode_request(body)
            assert hp.encode_request(rid, op, arg) == frame, "REQUEST"
        elif ftype == hp.FrameType.RESPONSE:
            rid, status, payload = hp.decode_response(body)
            assert hp.encode_response(rid, status, payload) == frame, "RESPONSE"
        elif ftype == hp.FrameType.ERROR:
            code, msg = hp.decode_error(body)
            assert isinstance(code, int) and isinstance(msg, str)
    except hp.ProtocolError:
        return  # the one exception a body decoder may raise


def TestOneInput(data: bytes) -> None:
    if len(data) < 3:
        return
    limit = 1 + int.from_bytes(data[:2], "big") % 4096
    seed = data[2]
    stream = data[3:]

    chunked = hp.FrameDecoder(limit)
    frames_c, err_c = _feed_all(chunked, _chunks(stream, seed))
    whole = hp.FrameDecoder(limit)
    frames_w, err_w = _feed_all(whole, [stream])

    assert err_c == err_w, f"chunked/whole disagree on the error: {err_c} vs {err_w}"
    if err_w is None:
        assert frames_c == frames_w, "chunked and whole feeding give different frames"
        assert chunked.buffered == whole.buffered
        consumed = b"".join(hp.encode_frame(t, b) for t, b in frames_w)
        assert stream.startswith(consumed), "frames do not re-encode to the input"
        rest = stream[len(consumed) :]
        assert len(rest) == whole.buffered
        if len(rest) >= 4:
            (length,) = struct.unpack_from(">I", rest)
            assert len(rest) < 4 + length, "a complete frame was left in the buffer"
    else:
        # The frames returned before the error are a prefix of the stream.
        consumed = b"".join(hp.encode_frame(t, b) for t, b in frames_c)
        assert stream.startswith(consumed)

    for ftype, body in frames_c:
        assert len(body) + 1 <= limit
        _check_body(ftype, body)


def _write_seeds(path: str) -> None:
    """Writes the seed corpus (run with --write-seeds DIR)."""
    os.makedirs(path, exist_ok=True)
    welcome = hp.Welcome(1, b"\x01" * 32, b"\x02" * 16, 4096, 15.0, 64)
    bundle = {"v": 1, "agent_id": "bob", "identity_key": "AAAA"}
    frames = {
        "hello": hp.encode_hello(),
        "welcome": hp.encode_welcome(welcome),
        "register": hp.encode_register(b"\x03" * 64, b"\x04" * 16, bundle),
        "lookup": hp.encode_frame(hp.FrameType.LOOKUP),
        "ready": hp.encode_frame(hp.FrameType.READY, b'{"mode":"agent","agent_id":"bob"}'),
        "send": hp.encode_send(7, b"bob", b"AM\x01\x02\x01" + b"\x00" * 40),
        "send_group": hp.encode_send_group(
            8, [b"bob", b"carol"], b"AM\x01\x03\x01" + b"\x00" * 40
        ),
        "send_group_error": hp.encode_send_group_error(8, 11, "carol", "not found"),
        "send_ack": hp.encode_send_ack(7),
        "send_error": hp.encode_send_error(7, 11, "Peer 'bob' not found on hub"),
        "deliver": hp.encode_deliver(9, b"AM\x01\x02\x01" + b"\x00" * 40),
        "acks": hp.encode_acks([1, 2, 3]),
        "ping": hp.encode_frame(hp.FrameType.PING, b"ping"),
        "request": hp.encode_request(1, hp.Op.GET_BUNDLE, "bob"),
        "response": hp.encode_response(1, 0, b'{"agent_id":"bob"}'),
        "error": hp.encode_error(1, "zero-length frame"),
    }
    for name, frame in frames.items():
        with open(os.path.join(path, name), "wb") as f:
            f.write(b"\x0f\xff\x05" + frame)  # limit 4096
    with open(os.path.join(path, "session"), "wb") as f:
        f.write(b"\x0f\xff\x2a" + b"".join(frames.values()))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--write-seeds":
        _write_seeds(sys.argv[2])
        sys.exit(0)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
