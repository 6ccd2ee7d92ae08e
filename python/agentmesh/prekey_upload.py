"""What a one-time prekey upload may hold: one rule for every backend (the network hub's
ADD_PREKEYS request, the NATS directory's stock)."""

from __future__ import annotations

import base64
import binascii
import json

__all__ = ["MAX_PREKEY_UPLOAD", "parse_prekeys"]

#: Most one-time prekeys one ADD_PREKEYS may carry (checked before any key is decoded).
MAX_PREKEY_UPLOAD = 1000


def parse_prekeys(arg: str) -> list[tuple[int, str]]:
    """The ADD_PREKEYS argument: a JSON list of ``{"id", "key"}`` objects, ids in
    1..2**32-1, keys base64 of 32 bytes (checked: a bad key would only make a set-up fail, but
    the hub is the place to refuse it). Raises ValueError naming the problem."""
    try:
        items = json.loads(arg) if arg else []
    except ValueError:
        raise ValueError("prekeys: not JSON") from None
    if not isinstance(items, list):
        raise ValueError("prekeys: expected a JSON list")
    if len(items) > MAX_PREKEY_UPLOAD:
        raise ValueError(f"prekeys: at most {MAX_PREKEY_UPLOAD} per upload")
    out: list[tuple[int, str]] = []
    for item in items:
        if not isinstance(item, dict) or set(item) != {"id", "key"}:
            raise ValueError('prekeys: each item must be {"id": int, "key": base64}')
        key_id, key = item["id"], item["key"]
        if type(key_id) is not int or not 0 < key_id < 2**32:
            raise ValueError(f"prekeys: bad id {key_id!r}")
        try:
            raw = base64.b64decode(key, validate=True) if isinstance(key, str) else b""
        except (ValueError, binascii.Error):
            raw = b""
        if len(raw) != 32:
            raise ValueError(f"prekeys: key of id {key_id} is not base64 of 32 bytes")
        out.append((key_id, key))
    return out
