"""The Python client library (issue 9 item 9, client/ipamd_client): typed results, and for each error the daemon
returns the same exception class, with a test per error (docs/errors.md).

Two tiers: errors a real daemon on real etcd returns over gRPC (7, 4, 11, 100, 101, 999 and "not reachable"),
each provoked as an operator would; and every class of the exception tree sent through the real gRPC adapter
(``ipamd.grpcapi``'s error boundary) on a real unix socket to the real client, so the rebuild cannot drift for the
codes only the CNI path produces (1, 2, 5, 6, 50, 102, 103).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import ipamd_client
import pytest
from harness import Daemon, cni_config, new_prefix
from ipamd_client import (
    AddressUnavailable,
    Allocation,
    InvalidConfig,
    InvalidEnvironment,
    IpamClient,
    IpamError,
    PoolExhausted,
    Status,
    TryAgainLater,
)

from ipamd.domain import errors
from ipamd.grpcapi import IpamServicer, _guard
from ipamd.service import IpamService
from ipamd.store.memory import MemoryStore
from ipamd.v1 import ipam_pb2_grpc


def conf(subnet: str = "10.80.0.0/24", **ipam: Any) -> dict[str, Any]:
    return cni_config("cl", subnet=subnet, **ipam)


# -- typed results against a real daemon -------------------------------------------------------------------------------


def test_typed_round_trip(daemons):
    """allocate -> Allocation and a CNI result dict; get, list, release (idempotent), status: all typed."""
    d = daemons("A")
    with IpamClient(d.grpc_socket) as client:
        allocation, result = client.allocate(conf(), "c1", "eth0", pod={"namespace": "ns", "name": "p"})
        assert isinstance(allocation, Allocation)
        assert [a.address for a in allocation.addresses] == ["10.80.0.2/24"] and allocation.node == "A"
        assert result["ips"][0]["address"] == "10.80.0.2/24" and result["cniVersion"] == "1.1.0"
        assert client.allocate(conf(), "c1", "eth0")[0].addresses == allocation.addresses  # idempotent
        got = client.get("cl", "c1", "eth0")
        assert got is not None and got.pod == {"namespace": "ns", "name": "p"}
        assert [a.container_id for a in client.list("cl")] == ["c1"]
        st = client.status()
        assert isinstance(st, Status) and st.ready and st.node == "A"
        assert client.release("cl", "c1", "eth0") == 1
        assert client.release("cl", "c1", "eth0") == 0
        assert client.get("cl", "c1", "eth0") is None


# -- one test per error a real daemon returns --------------------------------------------------------------------------


def test_error_7_invalid_config(daemons):
    d = daemons("A")
    with IpamClient(d.grpc_socket) as client, pytest.raises(InvalidConfig) as info:
        client.allocate(conf(subnet="10.80.1.0/31"), "c1", "eth0")
    assert info.value.cni_code == 7 and "10.80.1.0/31" in info.value.msg


def test_error_4_invalid_environment(daemons):
    d = daemons("A")
    with IpamClient(d.grpc_socket) as client, pytest.raises(InvalidEnvironment) as info:
        client.allocate(conf(), "c1", "x" * 16)
    assert info.value.cni_code == 4 and "interface name" in info.value.msg


def test_error_100_pool_exhausted(daemons):
    d = daemons("A")
    with IpamClient(d.grpc_socket) as client:
        small = conf(subnet="10.80.2.0/30")
        client.allocate(small, "c1", "eth0")
        with pytest.raises(PoolExhausted) as info:
            client.allocate(small, "c2", "eth0")
    assert info.value.cni_code == 100 and "10.80.2.0/30" in info.value.msg


def test_error_101_requested_address_unavailable(daemons):
    d = daemons("A")
    with IpamClient(d.grpc_socket) as client:
        client.allocate(conf(), "c1", "eth0", requested=["10.80.0.9"])
        with pytest.raises(AddressUnavailable) as info:
            client.allocate(conf(), "c2", "eth0", requested=["10.80.0.9"])
    assert info.value.cni_code == 101


def test_error_999_internal(daemons):
    d = daemons("A", env={"IPAMD_FAILPOINTS": "add.after_pick=error"})
    with IpamClient(d.grpc_socket) as client, pytest.raises(IpamError) as info:
        client.allocate(conf(), "c1", "eth0")
    assert type(info.value) is IpamError and info.value.cni_code == 999


def test_error_11_daemon_not_ready(workdir):
    d = Daemon("http://127.0.0.1:1", new_prefix(), "A", workdir).start(wait_ready=False)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(d.grpc_socket) and time.monotonic() < deadline:
            time.sleep(0.1)
        with IpamClient(d.grpc_socket) as client, pytest.raises(TryAgainLater) as info:
            client.allocate(conf(), "c1", "eth0")
        assert info.value.cni_code == 11 and "not ready" in info.value.msg
        st = IpamClient(d.grpc_socket).status()
        assert not st.ready and not st.etcd_reachable
    finally:
        assert d.stop() == 0


def test_error_11_daemon_not_reachable(workdir):
    path = os.path.join(workdir, "nobody-here.sock")
    with IpamClient(path, timeout=2) as client, pytest.raises(TryAgainLater) as info:
        client.list()
    assert info.value.cni_code == 11 and path in info.value.msg


def test_tcp_target_needs_a_ca():
    with pytest.raises(ValueError):
        IpamClient(address="127.0.0.1:1")


# -- every class of the tree through the real gRPC adapter -------------------------------------------------------------


class Raising(IpamServicer):
    """The real servicer whose Allocate raises one chosen error through the real error boundary (``_guard``)."""

    error: IpamError = IpamError("unset")

    def __init__(self) -> None:
        super().__init__(IpamService(MemoryStore(), "stub"))

    @_guard("Allocate")
    def Allocate(self, request: Any, context: grpc.ServicerContext) -> Any:
        raise self.error


@pytest.fixture(scope="module")
def raising_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    servicer = Raising()
    path = str(tmp_path_factory.mktemp("rs") / "s.sock")
    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    ipam_pb2_grpc.add_IpamServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    assert server.add_insecure_port("unix:" + path)
    server.start()
    yield servicer, path
    server.stop(0).wait()


@pytest.mark.parametrize("cls", [errors.IncompatibleVersion, errors.UnsupportedField, errors.InvalidEnvironment,
                                 errors.IOFailure, errors.DecodeFailure, errors.InvalidConfig, errors.TryAgainLater,
                                 errors.NotAvailable, errors.PoolExhausted, errors.AddressUnavailable,
                                 errors.CheckNoAllocation, errors.CheckMismatch, errors.IpamError])
def test_every_error_class_comes_back_as_itself(raising_server, cls):
    """docs/errors.md: for each class of the tree, the client raises exactly that class, exported by
    ``ipamd_client`` under the same name, with the code, and the message and details in its text."""
    servicer, path = raising_server
    servicer.error = cls("boom %s" % cls.__name__, "more about it")
    with IpamClient(path) as client, pytest.raises(IpamError) as info:
        client.allocate(conf(), "c1", "eth0")
    assert type(info.value) is cls
    assert getattr(ipamd_client, cls.__name__) is cls
    assert info.value.cni_code == cls.cni_code
    assert "boom %s" % cls.__name__ in info.value.msg and "more about it" in info.value.msg
