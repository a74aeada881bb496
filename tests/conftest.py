"""Fixtures: one real etcd per test session, a fresh key prefix per test, ipamd daemons started on demand, and
the CNI plugin each test runs.

Each test that starts daemons gets the invariant check of docs/etcd-layout.md after it (``daemons`` fixture teardown),
so every scenario ends with the invariants verified against etcd.

Plugins (docs/conformance.md "Two plugins"): a test module marked ``both_plugins`` (the conformance suite, the
field protocol cases, the plugin tests and the e2e tier) runs every test once with the native plugin and once with
the Python one, so the two cannot drift; every other test runs with the native plugin (the Python one where no C
compiler is there), since what it checks is the daemon's behaviour.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import harness
import pytest
from harness import Daemon, EtcdCluster, _tmpdir, assert_invariants, new_prefix


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "plugin" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_plugins"):
        metafunc.parametrize("plugin", harness.PLUGINS, indirect=True)


@pytest.fixture(autouse=True)
def plugin(request: pytest.FixtureRequest) -> Iterator[str]:
    """The CNI plugin :func:`harness.run_cni` runs: the test's parameter (``both_plugins`` tests), else
    :func:`harness.default_plugin`. A native run skips itself, with the reason, where no C compiler can build it."""
    name = getattr(request, "param", None) or harness.default_plugin()
    if name == "native" and harness.native_plugin()[0] is None:
        pytest.skip(harness.native_plugin()[1] or "no native plugin")
    harness.use_plugin(name)
    yield name


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdCluster]:
    """A single-member etcd for the whole session (tests isolate themselves by key prefix). With
    ``IPAMD_TEST_ETCD_ENDPOINTS=http://h1:2379,...`` the session uses that external cluster instead (for example the
    one of deploy/compose/docker-compose.yml); tests that must kill or restart etcd still start their own."""
    external = os.environ.get("IPAMD_TEST_ETCD_ENDPOINTS")
    cluster = EtcdCluster.external(external).start() if external else EtcdCluster(1).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def etcd_cluster() -> Iterator[EtcdCluster]:
    """A fresh three-member etcd cluster on loopback (failover tests)."""
    cluster = EtcdCluster(3).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def prefix() -> str:
    return new_prefix()


@pytest.fixture
def workdir() -> Iterator[str]:
    d = _tmpdir("ipamd-run-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


DaemonFactory = Callable[..., Daemon]


@pytest.fixture
def daemons(request: pytest.FixtureRequest, prefix: str, workdir: str) -> Iterator[DaemonFactory]:
    """``daemons(node="A", endpoints=None, env=None, wait_ready=True)`` starts a real ipamd.

    Endpoints default to the session etcd (or ``etcd_cluster`` when the test uses it). After the test, every
    daemon is stopped and the invariants are checked on the test's prefix.
    """
    started: list[Daemon] = []
    default_endpoints: list[str] = []

    def endpoints() -> str:
        if not default_endpoints:
            if "etcd_cluster" in request.fixturenames:
                default_endpoints.append(request.getfixturevalue("etcd_cluster").endpoints)
            else:
                default_endpoints.append(request.getfixturevalue("etcd").endpoints)
        return default_endpoints[0]

    def make(node: str = "A", endpoints_: str | None = None, env: dict[str, str] | None = None,
             wait_ready: bool = True, extra_args: list[str] | None = None) -> Daemon:
        d = Daemon(endpoints_ or endpoints(), prefix, node, workdir, env=env, extra_args=extra_args)
        started.append(d)
        return d.start(wait_ready=wait_ready)

    yield make
    for d in started:
        d.stop()
    if os.environ.get("IPAMD_TEST_SKIP_INVARIANTS") != "1" and started:
        assert_invariants(started[0].endpoints, prefix)
