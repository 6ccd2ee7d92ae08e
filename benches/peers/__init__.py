"""The contenders: agentmesh itself, the classic hand-rolled design, PyNaCl, vodozemac, and the
peer processes of the network section (``hub_peer``, ``nats_peer``)."""
