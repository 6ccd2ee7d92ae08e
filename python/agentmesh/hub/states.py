"""The states of a hub connection, in order: a connection only moves forward, except that a
lookup connection may register (LOOKUP -> AGENT). Plain ints: they are compared on every frame."""

#: TCP (and TLS) up, waiting for HELLO.
AWAIT_HELLO = 0
#: WELCOME sent with a challenge, waiting for REGISTER or LOOKUP.
AWAIT_AUTH = 1
#: An unauthenticated lookup connection (requests only).
LOOKUP = 2
#: A registered agent: sends, deliveries, requests.
AGENT = 3
#: An ERROR was sent or the hub closed it; nothing more is read.
CLOSING = 4
#: The transport is gone.
CLOSED = 5
