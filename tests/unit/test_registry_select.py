"""``--etcd-api`` selection: which store auto-detection picks, and what it says.

The two etcd stores are stood in for by in-memory registries (v3- and v2-format), so
these tests are about the choice alone; the real stores are covered by the contract
suite and by ``test_etcd2_specific``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network

import pytest

from pyflannel.errors import ConfigNotFound, RegistryError, RegistryUnavailable
from pyflannel.model.lease import LeaseAttrs, LeaseFormat
from pyflannel.model.net import SubnetKey
from pyflannel.options import Options
from pyflannel.registry.etcd2 import Etcd2Registry
from pyflannel.registry.etcd3 import Etcd3Registry
from pyflannel.registry.memory import InMemoryRegistry
from pyflannel.registry.select import AutoRegistry, open_registry

KEY = "/docker-flannel/network/config"
CONFIG = '{"Network":"10.3.0.0/16"}'


class Store(InMemoryRegistry):
    """An in-memory registry that remembers being closed."""

    closed = False

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def v3() -> Store:
    return Store(lease_format=LeaseFormat.V3)


@pytest.fixture
def v2() -> Store:
    return Store(lease_format=LeaseFormat.V2)


@pytest.fixture
async def auto(v3: Store, v2: Store) -> AsyncIterator[AutoRegistry]:
    registry = AutoRegistry(v3, v2, config_key=KEY, endpoints="http://e1:2379,http://e2:2379")
    yield registry
    await registry.close()


async def test_the_v3_store_wins_when_it_has_the_config(
    auto: AutoRegistry, v3: Store, v2: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pyflannel.registry.select")
    v3.config, v2.config = CONFIG, '{"Network":"10.9.0.0/16"}'
    assert await auto.get_network_config() == CONFIG
    assert auto.chosen is v3 and auto.lease_format is LeaseFormat.V3
    assert v2.closed and not v3.closed
    assert f"using the etcd v3 API: {KEY} is found in the v3 store" in caplog.text


async def test_the_v2_store_is_used_when_only_it_has_the_config(
    auto: AutoRegistry, v3: Store, v2: Store, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "pyflannel.registry.select")
    v2.config = CONFIG
    assert await auto.get_network_config() == CONFIG
    assert auto.chosen is v2 and auto.lease_format is LeaseFormat.V2
    assert v3.closed
    assert "using the etcd v2 API" in caplog.text and "not in the v3 store" in caplog.text
    # From now on everything goes to the v2 store.
    key = SubnetKey(IPv4Network("10.3.5.0/24"))
    await auto.create_lease(key, LeaseAttrs(IPv4Address("198.51.100.11")), 60)
    assert [lease.key for lease in (await v2.list_leases())[0]] == [key]
    assert (await v3.list_leases())[0] == []
    assert auto.describe() == v2.describe()


async def test_neither_store_gives_one_stable_message_naming_both_apis(
    auto: AutoRegistry, v2: Store
) -> None:
    messages = set()
    for _ in range(3):
        with pytest.raises(ConfigNotFound) as caught:
            await auto.get_network_config()
        messages.add(str(caught.value))
    [message] = messages  # the same text each time: the wait logs it once
    assert KEY in message and "http://e1:2379,http://e2:2379" in message
    assert "v3 API (not found)" in message and "v2 API (not found either)" in message
    assert "ETCDCTL_API=3 etcdctl put" in message and "ETCDCTL_API=2 etcdctl set" in message
    assert auto.chosen is None
    v2.config = CONFIG  # written while the daemon waits
    assert await auto.get_network_config() == CONFIG
    assert auto.chosen is v2


async def test_a_failing_v3_api_never_falls_back_to_v2(
    auto: AutoRegistry, v3: Store, v2: Store
) -> None:
    v2.config = CONFIG
    v3.fail_next = [RegistryUnavailable("etcd at http://e1:2379 is unavailable: timeout")]
    with pytest.raises(RegistryUnavailable, match="--etcd-api=v2"):
        await auto.get_network_config()
    assert auto.chosen is None and not v2.closed
    assert await auto.get_network_config() == CONFIG  # v3 answered "not found" this time


async def test_a_v2_failure_is_part_of_the_not_found_message(auto: AutoRegistry, v2: Store) -> None:
    v2.fail_next = [RegistryError("etcd at http://e1:2379 does not serve the v2 API")]
    with pytest.raises(ConfigNotFound, match=r"v2 API \(failed: etcd at .* does not serve"):
        await auto.get_network_config()


async def test_nothing_but_the_config_is_served_before_the_choice(auto: AutoRegistry) -> None:
    with pytest.raises(RuntimeError):
        await auto.list_leases()
    with pytest.raises(RuntimeError):
        _ = auto.lease_format
    assert "API chosen by where" in auto.describe() and KEY in auto.describe()


async def test_closing_before_the_choice_closes_both(v3: Store, v2: Store) -> None:
    await AutoRegistry(v3, v2, config_key=KEY, endpoints="e").close()
    assert v3.closed and v2.closed


@pytest.mark.parametrize(
    ("api", "kind"), [("v3", Etcd3Registry), ("v2", Etcd2Registry), ("auto", AutoRegistry)]
)
async def test_open_registry_follows_etcd_api(api: str, kind: type) -> None:
    options = Options(etcd_api=api, etcd_prefix="/docker-flannel/network/")
    registry = await open_registry(options)
    try:
        assert isinstance(registry, kind)
        if api == "auto":
            assert KEY in registry.describe()
        else:
            assert f"{api} API" in registry.describe()
    finally:
        await registry.close()


async def test_the_v2_registry_is_opened_only_when_the_v3_store_lacks_the_config(
    v3: Store, v2: Store
) -> None:
    opened: list[Store] = []

    def open_v2() -> Store:
        opened.append(v2)
        return v2

    auto = AutoRegistry(v3, open_v2=open_v2, config_key=KEY, endpoints="e")
    v3.config = CONFIG
    assert await auto.get_network_config() == CONFIG
    await auto.close()
    assert opened == [] and v3.closed

    v3.closed, v3.config = False, None
    auto = AutoRegistry(v3, open_v2=open_v2, config_key=KEY, endpoints="e")
    with pytest.raises(ConfigNotFound):
        await auto.get_network_config()
    assert opened == [v2]
    await auto.close()
    assert v3.closed and v2.closed


HEAVY = "{'grpc', 'aetcd', 'google', 'httpx', 'httpcore', 'anyio', 'h11'}"


def heavy_modules_loaded(api: str, *imports: str) -> str:
    """The heavy HTTP/gRPC packages loaded by a process that imports ``imports`` and
    opens and closes the registry for ``--etcd-api=api``."""
    code = (
        "import asyncio, sys\n"
        f"import {', '.join(imports)}\n"
        "from pyflannel.options import Options\n"
        "from pyflannel.registry.select import open_registry\n"
        "async def main():\n"
        f"    await (await open_registry(Options(etcd_api={api!r}))).close()\n"
        "asyncio.run(main())\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {HEAVY}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return result.stdout.strip() + result.stderr


def test_the_daemon_on_the_v3_api_loads_no_grpc_nor_httpx() -> None:
    # Each of them costs megabytes of resident memory (see pyflannel.httpc).
    loaded = heavy_modules_loaded("auto", "pyflannel.daemon", "pyflannel.registry.etcd3")
    assert loaded == "[]", loaded


def test_the_v2_api_and_the_ctl_load_no_httpx_either() -> None:
    # The v2 registry speaks HTTP with pyflannel.httpc too.
    loaded = heavy_modules_loaded("v2", "pyflannel.daemon", "pyflannel.ctl.commands")
    assert loaded == "[]", loaded
