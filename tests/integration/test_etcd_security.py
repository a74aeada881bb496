"""etcd security against real etcd (issue 9 item 2; docs/operations.md "etcd security"): TLS with a CA and client
certificates, user/password over TLS and over plain http (B42), tokens that expire or are invalidated (B43), a
permission granted after start (B44), the NOSPACE alarm (B45), failover across TLS endpoints, the password from a
file or the environment, nothing secret in the logs.

Each test starts its own etcd (auth and TLS change the whole cluster), real daemons and real plugin processes;
certificates come from ``trustme``, JWT keys from ``cryptography`` (tests/tlsutil.py). Every test ends with the
invariant check of docs/etcd-layout.md on its prefix.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest
from harness import Daemon, EtcdCluster, assert_invariants, cni_config, run_cni
from tlsutil import ROOT_PASSWORD, Pki, enable_auth, grant_prefix, jwt_flag

from ipamd.embedded import free_port
from ipamd.store.base import StoreRefused
from ipamd.store.etcd import EtcdStore

PASSWORD = "ipamd-pw-7Hq2x"


@pytest.fixture
def pki(workdir: str) -> Pki:
    d = os.path.join(workdir, "pki")
    os.mkdir(d)
    return Pki(d)


@pytest.fixture
def clusters() -> Iterator[list[EtcdCluster]]:
    """Clusters a test starts (:func:`started`), stopped after it."""
    made: list[EtcdCluster] = []
    yield made
    for c in made:
        c.stop()


def started(clusters: list[EtcdCluster], cluster: EtcdCluster) -> EtcdCluster:
    clusters.append(cluster)  # before start: a cluster that fails to become healthy is stopped too
    return cluster.start()


def password_file(workdir: str) -> str:
    path = os.path.join(workdir, "etcd-password")
    with open(path, "w") as fh:
        fh.write(PASSWORD + "\n")
    os.chmod(path, 0o600)
    return path


def scrape(port: int) -> str:
    """/metrics as text ("" while the daemon is not listening yet)."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.1)


def add(d: Daemon, container: str, subnet: str = "10.61.0.0/24"):  # type: ignore[no-untyped-def]
    return run_cni("ADD", cni_config("sec", subnet=subnet), socket=d.cni_socket, container_id=container)


def secrets_absent(d: Daemon) -> None:
    with open(d.log_path) as fh:
        text = fh.read()
    assert PASSWORD not in text and ROOT_PASSWORD not in text
    assert "eyJ" not in text  # no JWT (base64 of '{"')


def invariants(cluster: EtcdCluster, prefix: str, **client: str) -> dict[str, int]:
    store = EtcdStore(cluster.endpoints, prefix, user="root", password=ROOT_PASSWORD, **client) \
        if cluster.root_password else EtcdStore(cluster.endpoints, prefix, **client)
    from ipamd.check import check_store

    try:
        violations, counts = check_store(store)
    finally:
        store.close()
    assert not violations, violations
    return counts


# -- B42: user/password over plain http ------------------------------------------------------------------------------


def test_b42_password_over_plain_http_is_ready_with_a_warning(clusters, prefix, workdir):
    """B42: etcd on http:// with auth enabled; the daemon with --etcd-user and --etcd-password-file becomes ready,
    ADD and DEL work, the log warns that the password crosses the network in clear and holds no secret."""
    cluster = started(clusters, EtcdCluster(1))
    enable_auth(cluster, prefix, "ipamd", PASSWORD)
    d = Daemon(cluster.endpoints, prefix, "A", workdir,
               extra_args=["--etcd-user", "ipamd", "--etcd-password-file", password_file(workdir)]).start()
    try:
        out = add(d, "c1")
        assert out.rc == 0 and out.ips == ["10.61.0.2/24"], out
        rm = run_cni("DEL", cni_config("sec", subnet="10.61.0.0/24"), socket=d.cni_socket, container_id="c1")
        assert rm.rc == 0, rm
        assert "cross the network in clear" in d.log()
        check = subprocess.run([sys.executable, "-m", "ipamd.ctl", "check", "--etcd-endpoints", cluster.endpoints,
                                "--etcd-prefix", prefix, "--etcd-user", "ipamd", "--etcd-password-file",
                                password_file(workdir)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0 and "OK" in check.stdout, check  # ipamctl reads the password file too
    finally:
        assert d.stop() == 0
    secrets_absent(d)
    assert invariants(cluster, prefix)["handles"] == 0


def test_password_from_the_environment_over_tls_without_warning(clusters, prefix, workdir, pki):
    """TLS (CA only) plus user/password from IPAMD_ETCD_PASSWORD: ready, ADD works, no clear-text warning, and the
    password is nowhere in the process's command line."""
    cluster = started(clusters, EtcdCluster(1, tls=pki.etcd_tls(), client=pki.client_options(with_cert=False)))
    enable_auth(cluster, prefix, "ipamd", PASSWORD)
    d = Daemon(cluster.endpoints, prefix, "A", workdir, env={"IPAMD_ETCD_PASSWORD": PASSWORD},
               extra_args=["--etcd-user", "ipamd", "--etcd-ca-cert", pki.ca]).start()
    try:
        assert add(d, "c1").ips == ["10.61.0.2/24"]
        assert d.proc is not None
        with open("/proc/%d/cmdline" % d.proc.pid, "rb") as fh:
            assert PASSWORD.encode() not in fh.read()
        assert "cross the network in clear" not in d.log()
    finally:
        assert d.stop() == 0
    secrets_absent(d)
    assert invariants(cluster, prefix, ca_cert=pki.ca)["handles"] == 1


# -- TLS ---------------------------------------------------------------------------------------------------------------


def test_tls_with_client_certificates(clusters, prefix, workdir, pki):
    """etcd with --client-cert-auth: a daemon with the CA, a client certificate and key allocates; a daemon whose
    certificate another CA signed never becomes ready (etcd_unavailable: the handshake fails) and answers 11."""
    cluster = started(clusters, EtcdCluster(1, tls=pki.etcd_tls(client_cert_auth=True), client=pki.client_options()))
    good = Daemon(cluster.endpoints, prefix, "A", workdir,
                  extra_args=["--etcd-ca-cert", pki.ca, "--etcd-cert", pki.client_cert,
                              "--etcd-key", pki.client_key]).start()
    port = free_port()
    bad = Daemon(cluster.endpoints, prefix, "B", workdir,
                 extra_args=["--etcd-ca-cert", pki.ca, "--etcd-cert", pki.stranger_cert, "--etcd-key",
                             pki.stranger_key, "--metrics-address", "127.0.0.1:%d" % port]).start(wait_ready=False)
    try:
        assert add(good, "c1").ips == ["10.61.0.2/24"]
        time.sleep(3)
        assert bad.health() == "NOT_SERVING"
        out = add(bad, "c2")
        assert out.rc != 0 and out.code == 11, out
        assert 'ipamd_not_ready{reason="etcd_unavailable"} 1.0' in scrape(port)
    finally:
        assert good.stop() == 0
        assert bad.stop() == 0
    assert invariants(cluster, prefix, **pki.client_options())["handles"] == 1


@pytest.mark.cluster
def test_failover_across_tls_endpoints(clusters, prefix, workdir, pki):
    """Three TLS members with client certificates; ADDs go on while the member in use and then the leader are
    killed one after the other (two of three down would lose quorum: the second kill comes after the first member
    is back). Never 'no etcd endpoint available' in an answer."""
    cluster = started(clusters, EtcdCluster(3, tls=pki.etcd_tls(client_cert_auth=True), client=pki.client_options()))
    d = Daemon(cluster.endpoints, prefix, "A", workdir,
               extra_args=["--etcd-ca-cert", pki.ca, "--etcd-cert", pki.client_cert, "--etcd-key", pki.client_key,
                           "--etcd-timeout", "1"]).start()
    answers = []
    try:
        for i in range(5):
            answers.append(add(d, "a%d" % i, "10.62.0.0/24"))
        first = cluster.members[0]
        first.kill()
        for i in range(5):
            answers.append(add(d, "b%d" % i, "10.62.0.0/24"))
        first.start(new=False)
        cluster.wait_healthy()
        leader = cluster.leader()
        leader.kill()
        for i in range(5):
            answers.append(add(d, "c%d" % i, "10.62.0.0/24"))
        leader.start(new=False)
        cluster.wait_healthy()
    finally:
        assert d.stop() == 0
    assert all(a.rc == 0 for a in answers), [a for a in answers if a.rc != 0]
    ips = [ip for a in answers for ip in a.ips]
    assert len(ips) == len(set(ips)) == 15
    assert "no etcd endpoint available" not in d.log()
    assert invariants(cluster, prefix, **pki.client_options())["handles"] == 15


# -- B43: tokens expire or are invalidated -----------------------------------------------------------------------------


def test_b43_jwt_tokens_of_a_few_seconds(clusters, prefix, workdir, pki):
    """B43: TLS etcd with JWT tokens that live 2 s; ADDs at 0, 3, 6 and 9 s all succeed (each after the token of
    the one before expired), the daemon stays SERVING, and the log shows it authenticated again."""
    cluster = started(clusters, EtcdCluster(1, tls=pki.etcd_tls(), client=pki.client_options(with_cert=False),
                          extra=jwt_flag(workdir, "2s")))
    enable_auth(cluster, prefix, "ipamd", PASSWORD)
    d = Daemon(cluster.endpoints, prefix, "A", workdir,
               extra_args=["--etcd-ca-cert", pki.ca, "--etcd-user", "ipamd", "--etcd-password-file",
                           password_file(workdir)]).start()
    outs = []
    try:
        for i in range(4):
            if i:
                time.sleep(3)
            outs.append(add(d, "c%d" % i))
            assert d.health() == "SERVING"
    finally:
        assert d.stop() == 0
    assert [o.ips for o in outs] == [["10.61.0.%d/24" % (i + 2)] for i in range(4)], outs
    assert "authenticating again" in d.log()
    secrets_absent(d)
    assert invariants(cluster, prefix, ca_cert=pki.ca)["handles"] == 4


def test_b43_simple_token_across_an_etcd_restart(clusters, prefix, workdir):
    """B43: simple tokens live in etcd's memory, so a restart invalidates them; after etcd comes back (same data)
    the daemon is ready again and the next ADD succeeds, having authenticated again."""
    cluster = started(clusters, EtcdCluster(1))
    enable_auth(cluster, prefix, "ipamd", PASSWORD)
    d = Daemon(cluster.endpoints, prefix, "A", workdir,
               extra_args=["--etcd-user", "ipamd", "--etcd-password-file", password_file(workdir)]).start()
    try:
        assert add(d, "c1").ips == ["10.61.0.2/24"]
        member = cluster.members[0]
        member.stop()
        member.start(new=False)
        cluster.wait_healthy()
        d.wait_ready(30)
        out = add(d, "c2")
        assert out.rc == 0 and out.ips == ["10.61.0.3/24"], out
        assert "authenticating again" in d.log()
    finally:
        assert d.stop() == 0
    assert invariants(cluster, prefix)["handles"] == 2


# -- B44: permission granted after start -------------------------------------------------------------------------------


def test_b44_permission_granted_after_start(clusters, prefix, workdir):
    """B44: the ipamd user's role has no permission on the prefix. The daemon starts, is NOT_SERVING with reason
    etcd_permission, logs which permission on which key is missing, answers ADD with 11; three seconds after the
    grant it is ready and the ADD succeeds, without a restart."""
    cluster = started(clusters, EtcdCluster(1))
    enable_auth(cluster, prefix, "ipamd", PASSWORD, grant=False)
    port = free_port()
    d = Daemon(cluster.endpoints, prefix, "A", workdir,
               extra_args=["--etcd-user", "ipamd", "--etcd-password-file", password_file(workdir),
                           "--metrics-address", "127.0.0.1:%d" % port]).start(wait_ready=False)
    try:
        wait_for(lambda: 'ipamd_not_ready{reason="etcd_permission"} 1.0' in scrape(port), 20, "etcd_permission")
        assert d.health() == "NOT_SERVING"
        assert "lacks the permission to" in d.log() and prefix in d.log()
        out = add(d, "c1")
        assert out.rc != 0 and out.code == 11, out
        status = run_cni("STATUS", cni_config("sec", subnet="10.61.0.0/24"), socket=d.cni_socket)
        assert status.rc != 0 and status.code == 50, status
        granted = time.monotonic()
        grant_prefix(cluster, "ipamd", prefix)
        d.wait_ready(15)
        ready_after = time.monotonic() - granted
        out = add(d, "c1")
        assert out.rc == 0 and out.ips == ["10.61.0.2/24"], out
        assert 'ipamd_not_ready{reason="etcd_permission"} 0.0' in scrape(port)
        assert d.proc is not None and d.proc.poll() is None
    finally:
        assert d.stop() == 0
    assert ready_after < 15
    assert invariants(cluster, prefix)["handles"] == 1


def test_b44_write_permission_revoked_while_serving(clusters, prefix, workdir):
    """B44 in the other order: the role loses its write permission while the daemon serves (a role edited live).
    The readiness probe only read, so health stayed SERVING and STATUS answered success while every ADD failed
    with a permission refusal. Now the first refused write makes the probe check write permission (a txn whose
    compare never holds, so nothing is written): NOT_SERVING with reason etcd_permission, STATUS 50; ready again
    within seconds of the grant, without a restart."""
    cluster = started(clusters, EtcdCluster(1))
    enable_auth(cluster, prefix, "ipamd", PASSWORD)
    port = free_port()
    d = Daemon(cluster.endpoints, prefix, "A", workdir,
               extra_args=["--etcd-user", "ipamd", "--etcd-password-file", password_file(workdir),
                           "--metrics-address", "127.0.0.1:%d" % port]).start()
    conf = cni_config("sec", subnet="10.61.0.0/24")
    try:
        assert add(d, "c1").ips == ["10.61.0.2/24"]
        cluster.etcdctl("role", "revoke-permission", "ipamd", "--prefix=true", prefix)
        cluster.etcdctl("role", "grant-permission", "ipamd", "--prefix=true", "read", prefix)
        out = add(d, "c2")
        assert out.rc != 0 and out.code == 11 and "lacks the permission" in out.json["msg"], out
        assert "to txn %s" % prefix in out.json["msg"] and "/write" not in out.json["msg"], out  # names a real key
        wait_for(lambda: 'ipamd_not_ready{reason="etcd_permission"} 1.0' in scrape(port), 10, "etcd_permission")
        assert d.health() == "NOT_SERVING"
        status = run_cni("STATUS", conf, socket=d.cni_socket)
        assert status.rc != 0 and status.code == 50, status
        grant_prefix(cluster, "ipamd", prefix)
        d.wait_ready(15)
        out = add(d, "c2")
        assert out.rc == 0 and out.ips == ["10.61.0.3/24"], out
        assert run_cni("STATUS", conf, socket=d.cni_socket).rc == 0
    finally:
        assert d.stop() == 0
    assert invariants(cluster, prefix)["handles"] == 2


# -- B45: out of space -------------------------------------------------------------------------------------------------


def fill_until_nospace(cluster: EtcdCluster) -> int:
    """Write 256 KiB values under /filler/ until etcd raises NOSPACE; returns how many went in."""
    store = EtcdStore(cluster.endpoints, "/filler/")
    from ipamd.store.base import Put

    try:
        for i in range(400):
            try:
                store.txn([], [Put("k%d" % (i % 8), os.urandom(256 << 10))], [], 10.0)
            except StoreRefused as exc:
                assert exc.reason == "alarm" and "NOSPACE" in exc.msg, exc.msg
                return i
        raise AssertionError("etcd never ran out of space")
    finally:
        store.close()


def test_b45_nospace_is_reported_and_recovers_without_restart(clusters, prefix, workdir):
    """B45: etcd with an 8 MiB quota, filled until the NOSPACE alarm. ADD answers 11 naming the alarm (at once),
    DEL of an earlier allocation is recorded or answered 11 naming the alarm, STATUS answers 50, health turns
    NOT_SERVING with reason etcd_alarm and ipamd_etcd_alarm{alarm="NOSPACE"} is 1. After compact, defragment and
    alarm disarm the same daemon is ready again and the ADD succeeds."""
    cluster = started(clusters, EtcdCluster(1, extra=("--quota-backend-bytes", str(8 << 20))))
    port = free_port()
    d = Daemon(cluster.endpoints, prefix, "A", workdir,
               extra_args=["--metrics-address", "127.0.0.1:%d" % port]).start()
    conf = cni_config("sec", subnet="10.61.0.0/24")
    try:
        assert add(d, "c0").ips == ["10.61.0.2/24"]
        assert fill_until_nospace(cluster) > 0
        began = time.monotonic()
        out = add(d, "c1")
        took = time.monotonic() - began
        assert out.rc != 0 and out.code == 11 and "NOSPACE" in out.json["msg"], out
        assert took < 4, took  # refused at once, not retried until the 8 s deadline
        # etcd 3.5 refuses every mutating request while the database is over its quota, deletes included (later
        # releases let deletes through): either way no fake success, the release is recorded or answered 11
        rm = run_cni("DEL", conf, socket=d.cni_socket, container_id="c0")
        assert rm.rc == 0 or (rm.code == 11 and "NOSPACE" in rm.json["msg"]), rm
        wait_for(lambda: 'ipamd_not_ready{reason="etcd_alarm"} 1.0' in scrape(port), 10, "etcd_alarm")
        text = scrape(port)
        assert 'ipamd_etcd_alarm{alarm="NOSPACE"} 1.0' in text and "ipamd_ready 0.0" in text
        assert d.health() == "NOT_SERVING"
        status = run_cni("STATUS", conf, socket=d.cni_socket)
        assert status.rc != 0 and status.code == 50 and "NOSPACE" in status.json["msg"], status

        revision = EtcdStore(cluster.endpoints, "/filler/").read("k0", None, 5)[1]
        cluster.etcdctl("compact", str(revision))
        cluster.etcdctl("defrag")
        cluster.etcdctl("alarm", "disarm")
        d.wait_ready(15)
        if rm.rc != 0:
            rm = run_cni("DEL", conf, socket=d.cni_socket, container_id="c0")
            assert rm.rc == 0, rm
        out = add(d, "c1")
        assert out.rc == 0 and out.ips == ["10.61.0.2/24"], out
        assert 'ipamd_etcd_alarm{alarm="NOSPACE"} 0.0' in scrape(port)
    finally:
        assert d.stop() == 0
    assert_invariants(cluster.endpoints, prefix)
