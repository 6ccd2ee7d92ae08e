"""agentmesh benchmarks, side by side with what users would pick instead, and the physical floor.

Run from the repository root (after ``pip install -e ".[bench]"``)::

    python -m benches            # full run (about 5 minutes on 2 cores), writes docs/benchmarks.md
    python -m benches --quick    # about half a minute, fewer rounds and messages

Everything is measured in one process where it can be, interleaved: each round runs every
contender of a case once, in rotating order, and the report gives the median over rounds with
the min-max range. The network section starts its own processes (hub or NATS server, sender,
receiver) on 127.0.0.1 and stops them by PID.

Modules: ``harness`` (timing and statistics), ``crypto`` (seal+unseal, batches, Agent/LocalHub,
set-ups), ``memory`` (state per session after many messages), ``network`` (hub and NATS),
``report`` (docs/benchmarks.md and docs/img/*.png), ``peers/`` (the contenders). The Rust-side
criterion benchmarks are in ``benches/core.rs`` (``cargo bench -p agentmesh-core --bench core``).
"""
