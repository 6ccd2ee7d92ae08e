"""The measurement every fresh-process child makes of its operation (``fresh_child.py``,
``fresh_objects_child.py``): CPU time per message of each batch and minor page faults per
message, printed as the JSON line ``fresh.py`` reads. Standard library only, so importing it
changes nothing the child measures."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable


def measure(op: Callable[[], None], per_call: int, ops: int, batches: int) -> None:
    """Runs ``op`` once to warm up, then ``batches`` batches of ``ops`` calls (``per_call``
    messages each), and prints ``{"ns": [...], "faults": ...}``."""
    op()
    out = []
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(batches):
        # CPU time of this process: on a shared machine, other processes' bursts stay out.
        t0 = time.process_time_ns()
        for _ in range(ops):
            op()
        out.append((time.process_time_ns() - t0) / (ops * per_call))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    print(json.dumps({"ns": out, "faults": faults / (batches * ops * per_call)}))
