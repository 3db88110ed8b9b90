"""Whether talking to etcd takes TLS, and running without the ssl module when it does not."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pyflannel.registry.etcdsettings import EtcdSettings, needs_tls


@pytest.mark.parametrize(
    ("settings", "tls"),
    [
        (EtcdSettings(("http://127.0.0.1:2379",)), False),
        (EtcdSettings(("http://a:2379", "http://b:2379"), cafile="/ca.pem"), False),
        (EtcdSettings(("http://a:2379", "https://b:2379")), True),
        (EtcdSettings(("http://a:2379",), certfile="/c.pem", keyfile="/k.pem"), True),
        (EtcdSettings(("ftp://a",)), True),  # the registry explains the bad endpoint
    ],
)
def test_tls_is_needed_for_https_or_a_client_certificate(settings: EtcdSettings, tls: bool) -> None:
    assert needs_tls(settings) is tls


PROBE = """
import sys
from pyflannel.tlsfree import forgo_ssl, loaded_ssl
forgo_ssl()
import asyncio
from pyflannel.httpc.connection import unavailable_error
from pyflannel.registry import etcd2conn, etcd3, etcdconn
assert "ssl" not in {name for name, module in sys.modules.items() if module is not None}
assert loaded_ssl() is None
print(unavailable_error("etcd at x", ConnectionRefusedError(111, "Connection refused")))
"""


def test_without_tls_the_clients_work_and_ssl_is_never_loaded() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "etcd at x is unavailable: Connection refused"
