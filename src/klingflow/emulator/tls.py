"""TLS and the access key of the local emulator.

fal_client always speaks https, so the emulator serves TLS with a certificate from a local CA
(made with ``trustme``, kept under the klingflow home so every process agrees on it). Clients trust
it through a CA bundle made of certifi's roots plus that CA: pointing ``SSL_CERT_FILE`` at the
bundle keeps every other https host verifiable.

The access key is generated once and stored beside the CA: the emulator answers 401 without it,
as fal does, so a missing or wrong key is caught locally before it costs money on fal.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import certifi
import trustme

from klingflow._files import atomic_path
from klingflow.settings import klingflow_home

__all__ = ["DEFAULT_HOSTNAMES", "FAL_HOSTS", "EmulatorIdentity", "emulator_identity", "issue_server_cert"]

FAL_HOSTS: dict[str, str] = {
    "queue.fal.run": "queue",
    "fal.run": "run",
    "queue.falrun.com": "queue",
    "falrun.com": "run",
    "rest.fal.ai": "queue",
    "v3.fal.media": "queue",
    "api.fal.ai": "queue",
}
"""fal's fixed host names (fal_client's model, backup, storage and CDN hosts, and the Platform API)
-> the emulator socket ("queue" or "run") the tunnel joins them to; the certificate names them all."""
DEFAULT_HOSTNAMES = ("127.0.0.1", "localhost", "::1", *FAL_HOSTS)


@dataclass(frozen=True)
class EmulatorIdentity:
    """The files a client and the server share: CA, CA bundle for clients, and the access key."""

    directory: Path
    ca: trustme.CA
    ca_bundle: Path
    key: str


def _write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (a key), atomically."""
    with atomic_path(path) as temp:
        temp.write_bytes(data)
        temp.chmod(0o600)


def emulator_identity(home: Path | None = None) -> EmulatorIdentity:
    """Load the emulator's CA and key from the klingflow home, creating them on first use."""
    directory = (home or klingflow_home()) / "emulator"
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key, key_file = directory / "ca.pem", directory / "ca-key.pem", directory / "key"
    if ca_cert.is_file() and ca_key.is_file():
        ca = trustme.CA.from_pem(ca_cert.read_bytes(), ca_key.read_bytes())
    else:
        ca = trustme.CA(organization_name="klingflow emulator")
        _write_private(ca_key, ca.private_key_pem.bytes())
        _write_private(ca_cert, ca.cert_pem.bytes())
    if not key_file.is_file():
        _write_private(key_file, f"emulator-{secrets.token_hex(8)}:{secrets.token_hex(16)}".encode())
    bundle = directory / "ca-bundle.pem"
    wanted = Path(certifi.where()).read_bytes() + b"\n" + ca_cert.read_bytes()
    if not bundle.is_file() or bundle.read_bytes() != wanted:
        _write_private(bundle, wanted)
        bundle.chmod(0o644)
    return EmulatorIdentity(directory=directory, ca=ca, ca_bundle=bundle, key=key_file.read_text().strip())


def issue_server_cert(identity: EmulatorIdentity, hostnames: tuple[str, ...] = DEFAULT_HOSTNAMES) -> Path:
    """Write a server certificate + key (one PEM) valid for ``hostnames`` and return its path.

    It includes fal's own host names (:data:`FAL_HOSTS`) so that a client tunnelled to the emulator
    (fal_client's fixed upload hosts, or its model hosts fixed at import) verifies it unchanged.
    """
    cert = identity.ca.issue_cert(*hostnames)
    path = identity.directory / f"server-{os.getpid()}.pem"
    _write_private(path, cert.private_key_and_cert_chain_pem.bytes())
    return path
