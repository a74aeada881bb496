"""Integration-tier fixtures beside tests/conftest.py's: ``fake``, a kube-apiserver double on loopback
(tests/fakekube.py) for the Kubernetes-mode tests, started per test and stopped after it; ``own_etcd``, a
single-member etcd of the test's own, which it may slow down, kill or restart (the session's etcd is shared).
(test_plugin_faults.py has its own ``fake``, a fake daemon socket, which takes precedence in that module.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakekube import FakeKube
from harness import EtcdCluster


@pytest.fixture
def fake() -> Iterator[FakeKube]:
    f = FakeKube().start()
    yield f
    f.stop()


@pytest.fixture
def own_etcd() -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(1).start()
    yield cluster
    cluster.stop()
