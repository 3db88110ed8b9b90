"""A throw-away certificate authority for TLS tests, made with the `openssl` command.

`make_pki` writes a CA, a server certificate (for etcd) and a client certificate (CN
`flannel`, as an operator would issue for flanneld) into a directory. Keys are P-256: fast
to generate and accepted by etcd, Python's ssl module and httpx alike.

The server certificate allows client authentication too, as etcd's documented setups
(and kubeadm's) issue it: with `--client-cert-auth`, etcd's JSON gateway connects to
etcd's own gRPC server with that certificate, and etcd rejects the connection otherwise.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DAYS = "2"


@dataclass(frozen=True, slots=True)
class Pki:
    """Paths of the PEM files `make_pki` wrote."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(
    directory: Path,
    *,
    ips: Sequence[str] = (),
    client_cn: str = "flannel",
    server_client_auth: bool = True,
) -> Pki:
    """Create the CA and both certificates; the server's SAN covers loopback and `ips`.
    Without `server_client_auth` the server certificate is for serving only."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(
        directory=directory,
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    _openssl(
        "req", "-x509", "-new", "-nodes", "-days", DAYS, *_EC_KEY,
        "-keyout", pki.ca_key, "-out", pki.ca_cert, "-subj", "/CN=pft test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    san = ",".join(["DNS:localhost", "IP:127.0.0.1", *(f"IP:{ip}" for ip in ips)])
    usage = "serverAuth,clientAuth" if server_client_auth else "serverAuth"
    _issue(pki, "server", "etcd", [f"subjectAltName={san}", f"extendedKeyUsage={usage}"])
    _issue(pki, "client", client_cn, ["extendedKeyUsage=clientAuth"])
    return pki


_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def _issue(pki: Pki, stem: str, common_name: str, extensions: list[str]) -> None:
    """Write `<stem>.key` and `<stem>.crt`, signed by the CA."""
    csr = pki.directory / f"{stem}.csr"
    ext_file = pki.directory / f"{stem}.ext"
    ext_file.write_text(
        "\n".join(["basicConstraints=CA:FALSE", "keyUsage=digitalSignature", *extensions]) + "\n"
    )
    _openssl(
        "req", "-new", "-nodes", *_EC_KEY, "-keyout", pki.directory / f"{stem}.key",
        "-out", csr, "-subj", f"/CN={common_name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", pki.ca_cert, "-CAkey", pki.ca_key,
        "-CAcreateserial", "-CAserial", pki.directory / "ca.srl", "-days", DAYS,
        "-extfile", ext_file, "-out", pki.directory / f"{stem}.crt",
    )  # fmt: skip


def _openssl(*args: str | Path) -> None:
    result = subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=False, timeout=30
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")
