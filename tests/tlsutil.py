"""Test certificates and keys, made by well-kept libraries (``trustme`` for the CA and certificates, ``cryptography``
for the RSA key pair etcd signs JWT auth tokens with), and etcd authentication set up as an operator would with
``etcdctl`` (docs/operations.md "etcd security").

    pki = Pki(directory)                 # ca.pem, server.pem/-key.pem (127.0.0.1, localhost), client.pem/-key.pem
    jwt = jwt_keys(directory)            # (private key, public key) PEM paths
    enable_auth(cluster, prefix, "ipamd", "pw")   # root user, a role with readwrite on prefix, auth enable
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from harness import EtcdCluster, EtcdTls

ROOT_PASSWORD = "root-secret-Zq9"


@dataclass
class Pki:
    """A test CA with a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files in
    ``directory``; ``other_ca`` is a second CA whose certificates the first does not trust."""

    directory: str

    def __post_init__(self) -> None:
        ca = trustme.CA()
        self.ca = self._write("ca.pem", ca.cert_pem.bytes())
        server = ca.issue_cert("127.0.0.1", "localhost")
        self.server_cert = self._write("server.pem", b"".join(b.bytes() for b in server.cert_chain_pems))
        self.server_key = self._write("server-key.pem", server.private_key_pem.bytes())
        client = ca.issue_cert("ipamd-client")
        self.client_cert = self._write("client.pem", b"".join(b.bytes() for b in client.cert_chain_pems))
        self.client_key = self._write("client-key.pem", client.private_key_pem.bytes())
        other = trustme.CA()
        self.other_ca = self._write("other-ca.pem", other.cert_pem.bytes())
        stranger = other.issue_cert("stranger")
        self.stranger_cert = self._write("stranger.pem", b"".join(b.bytes() for b in stranger.cert_chain_pems))
        self.stranger_key = self._write("stranger-key.pem", stranger.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "wb") as fh:
            fh.write(data)
        os.chmod(path, 0o600)
        return path

    def etcd_tls(self, client_cert_auth: bool = False) -> EtcdTls:
        return EtcdTls(self.server_cert, self.server_key, self.ca, client_cert_auth)

    def client_options(self, with_cert: bool = True) -> dict[str, str]:
        """EtcdStore keyword arguments for this PKI."""
        out = {"ca_cert": self.ca}
        if with_cert:
            out.update(cert=self.client_cert, key=self.client_key)
        return out


def jwt_keys(directory: str) -> tuple[str, str]:
    """An RSA key pair for etcd's ``--auth-token jwt,...`` as PEM files: (private, public)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv = os.path.join(directory, "jwt.key")
    pub = os.path.join(directory, "jwt.pub")
    with open(priv, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    with open(pub, "wb") as fh:
        fh.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def jwt_flag(directory: str, ttl: str) -> tuple[str, ...]:
    """etcd flags for JWT auth tokens that expire after ``ttl`` (e.g. ``"3s"``)."""
    priv, pub = jwt_keys(directory)
    return ("--auth-token", "jwt,pub-key=%s,priv-key=%s,sign-method=RS256,ttl=%s" % (pub, priv, ttl))


def enable_auth(cluster: EtcdCluster, prefix: str, user: str, password: str, grant: bool = True) -> None:
    """Create ``root`` (password :data:`ROOT_PASSWORD`) and ``user`` with a role of the same name, grant the role
    readwrite on ``prefix`` (unless ``grant`` is False: B44), and enable authentication; from then on
    ``cluster.etcdctl`` runs as root."""
    cluster.etcdctl("user", "add", "root", "--new-user-password", ROOT_PASSWORD)
    cluster.etcdctl("user", "add", user, "--new-user-password", password)
    cluster.etcdctl("role", "add", user)
    if grant:
        grant_prefix(cluster, user, prefix)
    cluster.etcdctl("user", "grant-role", user, user)
    cluster.etcdctl("auth", "enable")
    cluster.root_password = ROOT_PASSWORD


def grant_prefix(cluster: EtcdCluster, role: str, prefix: str) -> None:
    """Give ``role`` readwrite on every key under ``prefix``."""
    cluster.etcdctl("role", "grant-permission", role, "--prefix=true", "readwrite", prefix)
