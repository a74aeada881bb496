"""Slow and failing etcd (issue 8 item 1; field cases B50, B22; docs/configuration.md "Deadlines"): real etcd (one
and three members) behind the fault proxy (ipamd/testing/faultproxy.py) that delays every answer, black-holes or
refuses; real daemons and plugin processes. A daemon behind a slow etcd becomes ready and serves, slower; failover never
answers "no etcd endpoint available" while a member answers; after an outage every loop resumes by itself; a
request that timed out and committed later is answered with the same address when retried. Each test ends with
the invariant check of docs/etcd-layout.md (``daemons`` fixture): never an address that a live attachment holds.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from harness import CniOutput, Daemon, cni_config, run_cni

from ipamd.embedded import free_port
from ipamd.store.etcd import EtcdStore
from ipamd.testing.faultproxy import FaultProxy

ProxyFactory = Callable[[int], FaultProxy]


@pytest.fixture
def proxies() -> Iterator[ProxyFactory]:
    """``proxies(upstream_port)`` starts a fault proxy; all are stopped after the test. Request the etcd fixture,
    then this one, then ``daemons``: fixtures end in reverse order, so the daemons' invariant check still goes
    through working proxies to a running etcd."""
    made: list[FaultProxy] = []

    def make(port: int) -> FaultProxy:
        p = FaultProxy(port).start()
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()



def add(d: Daemon, container: str, subnet: str = "10.50.0.0/24", **kw: object) -> CniOutput:
    return run_cni("ADD", cni_config("slow", subnet=subnet), socket=d.cni_socket, container_id=container,
                   **kw)  # type: ignore[arg-type]


def metric(port: int, needle: str) -> float:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(needle))


def full_log(d: Daemon) -> str:
    with open(d.log_path) as fh:
        return fh.read()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.1)


# -- B50: a slow etcd --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.3, 1.0, 1.5])
def test_b50_restarted_daemon_behind_slow_etcd_becomes_ready_and_serves(own_etcd, proxies, daemons, delay):
    """B50: a daemon allocates, stops, and restarts behind a proxy that delays every etcd answer by ``delay``
    seconds (0.3, 1, 1.5: the case's "seen" was 11 for a full minute at 1.5 s). With the default deadlines
    (--etcd-timeout 2, --request-timeout 8) it becomes ready and every ADD succeeds, each with a new address, slower
    than a round trip; DEL works too."""
    proxy = proxies(own_etcd.members[0].client_port)
    first = daemons("A", endpoints_=proxy.endpoint)
    assert add(first, "before").ips == ["10.50.0.2/24"]
    assert first.stop() == 0
    proxy.delay = delay
    d = daemons("A", endpoints_=proxy.endpoint, wait_ready=False)
    d.wait_ready(60)
    outs = []
    for i in range(4):
        began = time.monotonic()
        outs.append((add(d, "c%d" % i), time.monotonic() - began))
    assert [o.ips for o, _ in outs] == [["10.50.0.%d/24" % (i + 3)] for i in range(4)], outs
    assert all(took >= delay for _, took in outs), outs  # each ADD waited for etcd: it really was slow
    rm = run_cni("DEL", cni_config("slow", subnet="10.50.0.0/24"), socket=d.cni_socket, container_id="c0")
    assert rm.rc == 0, rm
    assert d.health() == "SERVING"


def test_b50_etcd_slowing_down_while_serving(own_etcd, proxies, daemons):
    """B50: one daemon serving while etcd's answers slow from 0 to 0.3, 1 and 1.5 s and back; ADDs at every step
    succeed, readiness never drops, the watch and lease loops keep up (no background errors counted)."""
    proxy = proxies(own_etcd.members[0].client_port)
    port = free_port()
    d = daemons("A", endpoints_=proxy.endpoint, extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    ips = []
    for step, delay in enumerate([0.0, 0.3, 1.0, 1.5, 0.0]):
        proxy.delay = delay
        for i in range(2):
            out = add(d, "s%d-%d" % (step, i))
            assert out.rc == 0, (delay, out)
            ips += out.ips
        assert d.health() == "SERVING"
    assert len(ips) == len(set(ips)) == 10
    assert metric(port, "ipamd_ready ") == 1


@pytest.mark.cluster
def test_b50_one_slow_member_of_three(etcd_cluster, proxies, daemons):
    """B50 with three members: the endpoint a daemon uses first answers in 1.5 s, the others at once. Two
    daemons (one listing the slow member first) become ready and allocate distinct addresses."""
    ps = [proxies(m.client_port) for m in etcd_cluster.members]
    ps[0].delay = 1.5
    slow_first = ",".join(p.endpoint for p in ps)
    fast_first = ",".join(p.endpoint for p in ps[1:] + ps[:1])
    a = daemons("A", endpoints_=slow_first, wait_ready=False)
    b = daemons("B", endpoints_=fast_first, wait_ready=False)
    a.wait_ready(60)
    b.wait_ready(60)
    outs = [add(a, "a%d" % i) for i in range(3)] + [add(b, "b%d" % i) for i in range(3)]
    assert all(o.rc == 0 for o in outs), outs
    ips = [ip for o in outs for ip in o.ips]
    assert len(ips) == len(set(ips)) == 6


# -- failover ----------------------------------------------------------------------------------------------------------


@pytest.mark.cluster
@pytest.mark.parametrize("fault", ["blackhole", "reject"])
def test_b22_failover_never_answers_no_endpoint(etcd_cluster, proxies, daemons, fault):
    """B22 / failover: three members each behind a proxy; the daemon's first endpoint black-holes (accepts, never
    answers) or refuses connections. ADDs keep succeeding through the other members (the daemon moves to the
    next endpoint after a timeout or a refused connection), no answer and no log line says "no etcd endpoint
    available", and the daemon stays SERVING."""
    ps = [proxies(m.client_port) for m in etcd_cluster.members]
    d = daemons("A", endpoints_=",".join(p.endpoint for p in ps),
                extra_args=["--etcd-timeout", "1", "--request-timeout", "6"])
    assert add(d, "before").rc == 0
    ps[0].mode = fault
    ps[0].cut()
    outs = [add(d, "c%d" % i) for i in range(8)]
    assert all(o.rc == 0 for o in outs), outs
    assert "no etcd endpoint available" not in full_log(d)
    wait_for(lambda: d.health() == "SERVING", 15, "SERVING")
    ips = [ip for o in outs for ip in o.ips]
    assert len(ips) == len(set(ips)) == 8
    ps[0].mode = "pass"


def test_store_reads_try_every_endpoint_within_one_call(own_etcd):
    """The store (not only the daemon's retries) fails over: with the first endpoint refusing connections, one
    read succeeds through the second within its own timeout, and no endpoint is ever refused locally."""
    dead = "http://127.0.0.1:%d" % free_port()
    store = EtcdStore(dead + "," + own_etcd.endpoints, "/failover-probe/")
    try:
        for _ in range(5):
            kvs, revision = store.read("x", None, 3.0)
            assert kvs == () and revision > 0
    finally:
        store.close()


# -- B22: outages, deadlines, unknown outcomes -------------------------------------------------------------------------


def test_b22_every_loop_resumes_after_an_outage(own_etcd, proxies, daemons):
    """B22 / B53: etcd unreachable (black-holed) for 6 s: the daemon turns NOT_SERVING (etcd_unavailable), DEL and
    ADD answer 11 (no fake success), errors are counted; when etcd answers again every loop resumes by itself:
    SERVING, the node record is back, a new watch is open, ADD and DEL work."""
    proxy = proxies(own_etcd.members[0].client_port)
    port = free_port()
    d = daemons("A", endpoints_=proxy.endpoint, extra_args=["--metrics-address", "127.0.0.1:%d" % port,
                                                            "--etcd-timeout", "1", "--request-timeout", "3",
                                                            "--node-lease-ttl", "4"])
    assert add(d, "c0").ips == ["10.50.0.2/24"]
    proxy.mode = "blackhole"
    proxy.cut()
    wait_for(lambda: d.health() == "NOT_SERVING", 15, "NOT_SERVING")
    assert metric(port, 'ipamd_not_ready{reason="etcd_unavailable"}') == 1
    rm = run_cni("DEL", cni_config("slow", subnet="10.50.0.0/24"), socket=d.cni_socket, container_id="c0")
    assert rm.rc != 0 and rm.code == 11, rm
    out = add(d, "c1")
    assert out.rc != 0 and out.code == 11, out
    time.sleep(3)
    proxy.mode = "pass"
    d.wait_ready(30)
    wait_for(lambda: bool(EtcdStore(own_etcd.endpoints, d.prefix).read("nodes/A", None, 2)[0]), 20,
             "the node record")
    other = daemons("B", endpoints_=own_etcd.endpoints)
    assert add(other, "b0").ips == ["10.50.0.64/24"]  # B claims the next block
    wait_for(lambda: full_log(d).count("watching pools, blocks") >= 2, 20, "a new watch after the outage")
    out = add(d, "c1")
    assert out.rc == 0 and out.ips == ["10.50.0.3/24"], out
    rm = run_cni("DEL", cni_config("slow", subnet="10.50.0.0/24"), socket=d.cni_socket, container_id="c0")
    assert rm.rc == 0, rm
    assert metric(port, "ipamd_etcd_errors_total") > 0
    assert metric(port, "ipamd_background_errors_total") > 0


def test_b22_timed_out_add_is_answered_with_the_same_address_when_retried(own_etcd, proxies, daemons):
    """B22 (c): every etcd answer delayed 5 s while the request deadline is 3 s: ADD c3 answers 11 at the deadline
    (its transaction reached etcd and committed; only the answer was late). After the delay is lifted the
    runtime's retried ADD c3 returns that same address, and nothing is held twice."""
    proxy = proxies(own_etcd.members[0].client_port)
    d = daemons("A", endpoints_=proxy.endpoint, extra_args=["--etcd-timeout", "2.5", "--request-timeout", "3"])
    assert add(d, "c0").ips == ["10.50.0.2/24"]
    proxy.delay = 5.0
    began = time.monotonic()
    out = add(d, "c3")
    took = time.monotonic() - began
    assert out.rc != 0 and out.code == 11, out
    assert took < 10, took
    proxy.delay = 0.0
    time.sleep(5.5)  # the late answers drain
    d.wait_ready(30)
    again = add(d, "c3")
    assert again.rc == 0 and again.ips == ["10.50.0.3/24"], again
    follow = add(d, "c4")
    assert follow.ips == ["10.50.0.4/24"], follow


def test_b22_etcd_stopped_200_concurrent_adds_all_answer_11(own_etcd, daemons):
    """B22 (d)(e): etcd stopped: DEL of a held attachment answers 11 (not ok-empty: the release was not recorded)
    and 200 concurrent ADDs all answer 11 within the plugin's deadline, with the daemon's thread count bounded;
    after etcd is back the DEL succeeds and the ADDs get distinct addresses."""
    d = daemons("A", extra_args=["--request-timeout", "2", "--etcd-timeout", "1"], endpoints_=own_etcd.endpoints)
    assert add(d, "c0").ips == ["10.50.0.2/24"]
    member = own_etcd.members[0]
    member.stop()
    rm = run_cni("DEL", cni_config("slow", subnet="10.50.0.0/24"), socket=d.cni_socket, container_id="c0")
    assert rm.rc != 0 and rm.code == 11, rm
    results: list[CniOutput] = []
    lock = threading.Lock()
    barrier = threading.Barrier(200)

    def call(i: int) -> None:
        barrier.wait()
        out = add(d, "x%d" % i, timeout=120)
        with lock:
            results.append(out)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(200)]
    for t in threads:
        t.start()
    time.sleep(1)
    assert d.proc is not None
    with open("/proc/%d/status" % d.proc.pid) as fh:
        nthreads = int(next(line for line in fh if line.startswith("Threads:")).split()[1])
    for t in threads:
        t.join(120)
    assert len(results) == 200 and all(r.rc != 0 and r.code == 11 for r in results), \
        [r for r in results if r.code != 11][:3]
    assert nthreads < 120, nthreads  # 32 CNI workers, 16 gRPC workers, the loops: not one per request
    member.start(new=False)
    own_etcd.wait_healthy()
    d.wait_ready(30)
    rm = run_cni("DEL", cni_config("slow", subnet="10.50.0.0/24"), socket=d.cni_socket, container_id="c0")
    assert rm.rc == 0, rm
    outs = [add(d, "y%d" % i) for i in range(3)]
    ips = [ip for o in outs for ip in o.ips]
    assert len(ips) == len(set(ips)) == 3
