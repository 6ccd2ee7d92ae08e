"""agentmesh: end-to-end encrypted messaging for AI agents."""

from agentmesh.agent import Agent, AsyncAgent, Message
from agentmesh.errors import (
    AgentMeshError,
    AuthenticationError,
    CryptoError,
    FlushTimeoutError,
    FormatError,
    HubError,
    IdentityChangedError,
    IdentityError,
    KeyFileError,
    MessageGapError,
    ReplayError,
    SignatureError,
    TamperError,
    UnknownSenderError,
    VersionError,
)
from agentmesh.hub_server import HubLimits, NetworkHubServer
from agentmesh.hubs import Hub, LocalHub, NetworkHub

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentMeshError",
    "AsyncAgent",
    "AuthenticationError",
    "CryptoError",
    "FlushTimeoutError",
    "FormatError",
    "Hub",
    "HubError",
    "HubLimits",
    "IdentityChangedError",
    "IdentityError",
    "KeyFileError",
    "LocalHub",
    "Message",
    "MessageGapError",
    "NetworkHub",
    "NetworkHubServer",
    "ReplayError",
    "SignatureError",
    "TamperError",
    "UnknownSenderError",
    "VersionError",
    "__version__",
]
