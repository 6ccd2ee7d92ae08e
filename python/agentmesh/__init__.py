"""agentmesh: end-to-end encrypted messaging for AI agents."""

from agentmesh.agent import Agent
from agentmesh.allocator import keep_freed_memory
from agentmesh.async_agent import AsyncAgent
from agentmesh.errors import (
    AgentMeshError,
    AuthenticationError,
    CryptoError,
    FlushTimeoutError,
    FormatError,
    HubError,
    IdentityChangedError,
    IdentityError,
    IdentityInUseError,
    IdentityRolledBackError,
    KeyFileError,
    LateReplyError,
    MessageExpiredError,
    MessageGapError,
    MessageTooLargeError,
    RemoteError,
    ReplayError,
    ReplyTimeoutError,
    SignatureError,
    StateWriteError,
    TamperError,
    UnknownSenderError,
    VersionError,
)
from agentmesh.groups import AsyncGroup, Group
from agentmesh.hubs import Hub, LocalHub, NetworkHub
from agentmesh.message import Message

__version__ = "0.1.0"

# The hub server is imported on first use: `python -m agentmesh.hub_server` must not find the
# module already imported by the package (runpy warns, or fails with -W error).
_LAZY = {
    "HubLimits": "agentmesh.hub_server",
    "NatsHub": "agentmesh.nats_hub",
    "NetworkHubServer": "agentmesh.hub_server",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'agentmesh' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Agent",
    "AgentMeshError",
    "AsyncAgent",
    "AsyncGroup",
    "AuthenticationError",
    "CryptoError",
    "FlushTimeoutError",
    "FormatError",
    "Group",
    "Hub",
    "HubError",
    "HubLimits",
    "IdentityChangedError",
    "IdentityError",
    "IdentityInUseError",
    "IdentityRolledBackError",
    "KeyFileError",
    "LateReplyError",
    "LocalHub",
    "Message",
    "MessageExpiredError",
    "MessageGapError",
    "MessageTooLargeError",
    "NatsHub",
    "NetworkHub",
    "NetworkHubServer",
    "RemoteError",
    "ReplayError",
    "ReplyTimeoutError",
    "SignatureError",
    "StateWriteError",
    "TamperError",
    "UnknownSenderError",
    "VersionError",
    "__version__",
    "keep_freed_memory",
]
