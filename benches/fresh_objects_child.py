"""The part of a 1 MiB seal+unseal no implementation can avoid in a fresh default process,
without any cryptography: the two objects of the message the user holds at the same time, the
wire ``bytes`` (kept by the caller while it unseals them) and the payload value the unseal hands
back (``str`` of the text case, ``bytes`` of the bytes case), each made by one copy and dropped
at the end of the message, as a seal+unseal makes and drops them. With glibc's malloc as it
comes, the two megabytes go back to the kernel at the end of every message and come back as
fresh pages in the next one. ``python benches/fresh_objects_child.py
<seal_unseal|seal_unseal_bytes> <payload size> <ops per batch> <batches>``; prints JSON as
``fresh_child.py`` does (``ns``: CPU nanoseconds per message of each batch, ``faults``)."""

from __future__ import annotations

import sys

from child_timing import measure

# A signed envelope's header, signature and tag (an upper bound; a few bytes do not matter).
ENVELOPE_OVERHEAD = 256


def main() -> None:
    case, size, ops, batches = sys.argv[1], *map(int, sys.argv[2:5])
    source = memoryview(bytearray(b"a" * (size + ENVELOPE_OVERHEAD)))
    as_text = not case.endswith("_bytes")

    def message() -> None:
        wire = bytes(source)  # what seal().to_bytes() returns, held through the unseal
        value = str(source[:size], "ascii") if as_text else bytes(source[:size])
        del wire, value  # (the order ``b.unseal(a.seal(p).to_bytes())`` drops them in)

    measure(message, 1, ops, batches)


if __name__ == "__main__":
    main()
