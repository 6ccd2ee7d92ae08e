"""The TLS deployment of docs/nats.md, for real: the server configs the docs show are the ones
:func:`server_config` writes, and the same function's config, with certificates made here (a
CA, and a certificate for 127.0.0.1 that serves clients and routes), runs a three-node
cluster guarded by the authorization service, through which two agents talk over ``tls://``.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from natsutil import auth_services, wait_until

from agentmesh import Agent, NatsHub
from agentmesh.nats_auth_config import AuthKeys, authorization_block, authorization_text
from agentmesh.nats_cluster import NatsCluster
from agentmesh.nats_server_config import ServerTls, TlsFiles, server_config

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
pytest.importorskip("nats", reason="the NATS tests need nats-py (pip install -e '.[dev]')")
pytest.importorskip("nkeys", reason="the authorization service needs nkeys (the dev extra)")
pytest.importorskip("cryptography", reason="the certificates are made with it (the dev extra)")

DOCS = Path(__file__).resolve().parents[2] / "docs" / "nats.md"


def documented(authorization: bool) -> str:
    """The config of server n1 of the documented three-machine deployment."""
    return server_config(
        name="n1",
        listen="0.0.0.0:4222",
        store_dir="/var/lib/nats",
        cluster_listen="0.0.0.0:6222",
        routes=["nats-route://n2:6222", "nats-route://n3:6222"],
        tls=ServerTls(
            clients=TlsFiles("/etc/nats/server.pem", "/etc/nats/server.key"),
            routes=TlsFiles("/etc/nats/route.pem", "/etc/nats/route.key", "/etc/nats/ca.pem"),
        ),
        authorization=authorization_text(
            "UB...service's public key...", "AA...issuer's public key..."
        )
        if authorization
        else "",
    )


def test_the_documented_server_configs_are_the_ones_written():
    text = DOCS.read_text(encoding="utf-8")
    shown = re.findall(r"^```\n(server_name: .*?)^```$", text, re.S | re.M)
    assert shown == [documented(authorization=False), documented(authorization=True)]


def make_certificates(directory: Path) -> tuple[Path, TlsFiles]:
    """A CA, and a key and certificate for 127.0.0.1 signed by it (for servers and routes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key: Any, issuer: str, issuer_key: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            ).add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        return builder.sign(issuer_key, hashes.SHA256())

    def write(path: Path, data: bytes) -> str:
        path.write_bytes(data)
        path.chmod(0o600)
        return str(path)

    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("agentmesh test CA", ca_key, "agentmesh test CA", ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = certificate("127.0.0.1", server_key, "agentmesh test CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    ca_file = write(directory / "ca.pem", ca.public_bytes(pem))
    key_bytes = server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files = TlsFiles(
        cert_file=write(directory / "server.pem", server.public_bytes(pem)),
        key_file=write(directory / "server.key", key_bytes),
        ca_file=ca_file,
    )
    return Path(ca_file), files


def server_requires_tls(url: str) -> bool:
    """What the server says in its first line (INFO) to a plain TCP client."""
    host, port = url.rsplit("//", 1)[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        info = conn.recv(4096).decode("utf-8", "replace")
    return '"tls_required":true' in info


def test_agents_talk_through_a_tls_cluster_guarded_by_the_service(tmp_path, monkeypatch):
    ca_file, files = make_certificates(tmp_path / "certs")
    # clients (agents, and the services: child processes) trust the deployment's own CA
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    tls = ServerTls(clients=TlsFiles(files.cert_file, files.key_file), routes=files)
    authorization = authorization_block(AuthKeys.create(tmp_path / "keys"))
    with NatsCluster(tmp_path, nodes=3, authorization=authorization, tls=tls) as cluster:
        assert all(url.startswith("tls://127.0.0.1:") for url in cluster.urls)
        assert all(server_requires_tls(url) for url in cluster.urls)
        config = cluster.nodes[0].config.read_text("utf-8")
        assert "verify: true" in config and config.count("tls {") == 2
        services = auth_services(cluster, tmp_path, 2)
        try:
            for service in services:
                service.start()
            hub = NatsHub(cluster.urls, auth=True, timeout=20.0)
            got: list[str] = []
            alice, bob = Agent("alice", hub=hub), Agent("bob", hub=hub)
            bob.on_message(lambda msg: got.append(msg.text))
            for i in range(20):
                alice.send("bob", text=f"over TLS {i}")
            alice.flush(30)
            wait_until(lambda: len(got) >= 20, 30, "bob's messages")
            assert got == [f"over TLS {i}" for i in range(20)]
            assert hub.is_online("bob")
            alice.close(), bob.close(), hub.close()
        finally:
            for service in services:
                service.stop()
