"""Hub addresses: one syntax everywhere (``Agent(hub=...)``, ``NetworkHub(...)``, the CLI's
``--hub``), checked up front with an error that says what is wrong.

* ``host``, ``host:port``, ``[v6addr]:port`` (a bare ``v6addr`` too): port 7700 by default;
* ``agentmesh://host:port``: the same, as a URL;
* ``agentmesh+tls://host:port``: TLS to the hub (the system's trust store unless an
  ``ssl.SSLContext`` is given).

Other schemes (``http://``, ``https://``, ...) are refused: the hub speaks its own protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_PORT", "SCHEMES", "HubAddress", "parse_hub_address"]

DEFAULT_PORT = 7700
#: URL scheme -> whether it means TLS.
SCHEMES = {"agentmesh": False, "agentmesh+tls": True}


@dataclass(frozen=True)
class HubAddress:
    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "agentmesh+tls" if self.tls else "agentmesh"
        return f"{scheme}://{host}:{self.port}"

    @classmethod
    def parse(cls, address: str, default_port: int = DEFAULT_PORT) -> HubAddress:
        """The address in ``address`` (see the module); ValueError naming the problem."""
        if not isinstance(address, str):
            raise TypeError(f"a hub address is a str, not {type(address).__name__}")
        text = address.strip()
        if not text:
            raise ValueError("empty hub address")
        tls = False
        if "://" in text:
            scheme, _, rest = text.partition("://")
            if scheme.lower() not in SCHEMES:
                raise ValueError(
                    f"bad hub address {address!r}: the scheme {scheme!r} is not a hub's; use "
                    "host:port, agentmesh://host:port or agentmesh+tls://host:port"
                )
            tls = SCHEMES[scheme.lower()]
            if rest.endswith("/"):
                rest = rest[:-1]
            if "/" in rest or "?" in rest or "#" in rest or "@" in rest:
                raise ValueError(
                    f"bad hub address {address!r}: a hub address has no path, query or user"
                )
            text = rest
        host, port = _host_port(text, address, default_port)
        return cls(host, port, tls)


def _host_port(text: str, address: str, default_port: int) -> tuple[str, int]:
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"bad hub address {address!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"bad hub address {address!r}: expected ':port' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    if not host:
        raise ValueError(f"bad hub address {address!r}: no host")
    if any(c.isspace() for c in host):
        raise ValueError(f"bad hub address {address!r}: the host has white space")
    if not port_text:
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(
            f"bad hub address {address!r}: port {port_text!r} is not a number"
        ) from None
    if not 0 < port < 65536:
        raise ValueError(f"bad hub address {address!r}: port {port} out of range")
    return host, port


def parse_hub_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``(host, port)`` of ``address`` (any form above; ValueError if bad)."""
    parsed = HubAddress.parse(address, default_port)
    return parsed.host, parsed.port
