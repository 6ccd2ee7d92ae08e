"""Files on the command line: ``send --file`` reads one into the payload as binary data, and
``listen --save-dir`` writes the binary values of what comes in to files. Binary values travel
as raw bytes (docs/protocol.md, "Binary payloads"); only the printed JSON line names them."""

from __future__ import annotations

import os
from typing import Any

from .agent_rules import MAX_ENVELOPE_BYTES
from .message import Message, json_safe

__all__ = ["FILE_FIELDS", "file_fields", "saved_payload"]

#: The payload fields ``send --file`` sets: the file's bytes and its name (no directory).
FILE_FIELDS = ("data", "filename")


#: Longest sender-given file name kept (in UTF-8 bytes; file systems allow 255).
MAX_NAME_BYTES = 200

def file_fields(path: str) -> dict[str, Any]:
    """``{"data": <the file's bytes>, "filename": <its base name>}``; ValueError naming the
    problem for a file that cannot be read or cannot fit in one message."""
    try:
        size = os.path.getsize(path)
        if size > MAX_ENVELOPE_BYTES:
            raise ValueError(
                f"--file {path!r} is {size:,} bytes; one message carries at most "
                f"{MAX_ENVELOPE_BYTES:,} bytes (send it in parts)"
            )
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValueError(f"--file {path!r} cannot be read: {exc.strerror or exc}") from None
    return {"data": data, "filename": os.path.basename(path)}


def _safe_name(name: Any) -> str | None:
    """A sender's file name reduced to a plain name in the save directory (never a path)."""
    if not isinstance(name, str):
        return None
    base = os.path.basename(name.replace("\\", "/")).replace("\0", "")
    if base in ("", ".", "..") or len(base.encode("utf-8", "replace")) > MAX_NAME_BYTES:
        return None  # (a name the file system could refuse: the message's own name instead)
    return base


def _write_private(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # (a file that was there already keeps no looser mode)
        f.write(data)


def saved_payload(msg: Message, save_dir: str) -> Any:
    """``msg.payload`` made JSON-safe, every binary value written to a file of ``save_dir``
    (owner-only) and shown as ``{"bytes": size, "saved": path}``. The file is named after the
    message id: ``<id>-<filename>`` for ``data`` when the payload names a ``filename``, else
    ``<id>-<n>.bin`` (n counts the message's other binary values from 0, in payload order)."""
    data = msg.data
    named = _safe_name(msg.payload.get("filename")) if data is not None else None
    count = 0

    def save(value: bytes) -> dict[str, Any]:
        nonlocal count, named
        if named is not None and value is data:
            name, named = f"{msg.id}-{named}", None
        else:
            name = f"{msg.id}-{count}.bin"
            count += 1
        path = os.path.join(save_dir, name)
        try:
            _write_private(path, value)
        except OSError as exc:  # the message is acknowledged: its data goes out on the line
            shown = json_safe(value)
            shown["error"] = f"not saved to {path}: {exc.strerror or exc}"
            return shown
        return {"bytes": len(value), "saved": path}

    return json_safe(msg.payload, save)
