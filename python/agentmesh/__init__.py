"""agentmesh: end-to-end encrypted messaging for AI agents."""

from agentmesh.errors import (
    AgentMeshError,
    AuthenticationError,
    CryptoError,
    FormatError,
    HubError,
    IdentityChangedError,
    IdentityError,
    KeyFileError,
    MessageGapError,
    ReplayError,
    SignatureError,
    TamperError,
    VersionError,
)

__version__ = "0.1.0"

__all__ = [
    "AgentMeshError",
    "AuthenticationError",
    "CryptoError",
    "FormatError",
    "HubError",
    "IdentityChangedError",
    "IdentityError",
    "KeyFileError",
    "MessageGapError",
    "ReplayError",
    "SignatureError",
    "TamperError",
    "VersionError",
    "__version__",
]
