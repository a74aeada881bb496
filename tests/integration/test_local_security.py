"""Local API security (issue 9 item 1, field case B46; docs/operations.md "Local access"): socket and directory
modes whatever the umask, with no moment at which either is wider; a stale socket replaced; a second daemon on a
live socket exits non-zero and leaves the live one untouched; a symlink or a non-socket at the path refused, its
target untouched; an unprivileged caller refused with a clear permission error and nothing recorded; the optional
gRPC TCP listener with TLS and client certificates.

Real daemons and plugin processes; the unprivileged caller is the native plugin run as ``nobody`` (uid 65534, a
static binary, so it needs nothing that user cannot read).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import threading

import grpc
import pytest
from harness import IPAMD, Daemon, cni_config, installed_shim, native_plugin, run_cni, snapshot_counts
from tlsutil import Pki

from ipamd.embedded import free_port
from ipamd.v1 import ipam_pb2, ipam_pb2_grpc

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: runs the plugin as another user")


def mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def sock_paths(base: str) -> list[str]:
    return ["--cni-socket", os.path.join(base, "cni.sock"), "--grpc-socket", os.path.join(base, "ipamd.sock")]


def daemon_at(etcd, prefix, workdir, base, node="A", extra=(), umask=-1) -> Daemon:  # type: ignore[no-untyped-def]
    d = Daemon(etcd.endpoints, prefix, node, workdir, extra_args=[*sock_paths(base), *extra], umask=umask)
    d.cni_socket = os.path.join(base, "cni.sock")
    d.grpc_socket = os.path.join(base, "ipamd.sock")
    return d


def exits_with(d: Daemon, timeout: float = 20.0) -> int:
    assert d.proc is not None
    return d.proc.wait(timeout)


@pytest.fixture
def stopper():  # type: ignore[no-untyped-def]
    """Daemons a test starts by hand, stopped after it."""
    made: list[Daemon] = []
    yield made
    for d in made:
        d.stop()


# -- modes -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("group", [None, "nogroup"])
def test_b46_modes_under_umask_000_never_wider(etcd, prefix, workdir, stopper, group):
    """B46: ``umask 000`` and socket directories that do not exist. The directories the daemon creates are 0700
    (0750 with --socket-group, group set), both sockets 0600 (0660 with the group); a thread polling the paths from
    before the start never sees any of them grant more than that."""
    base = os.path.join(workdir, "run", "ipamd")
    extra = ["--socket-group", group] if group else []
    d = daemon_at(etcd, prefix, workdir, base, extra=extra, umask=0)
    seen: dict[str, set[int]] = {base: set(), d.cni_socket: set(), d.grpc_socket: set()}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for path, modes in seen.items():
                try:
                    modes.add(mode(path))
                except FileNotFoundError:
                    pass

    poller = threading.Thread(target=watch)
    poller.start()
    stopper.append(d)
    try:
        d.start()
    finally:
        done.set()
        poller.join()
    sock_mode, dir_mode = (0o660, 0o750) if group else (0o600, 0o700)
    assert mode(base) == dir_mode and mode(os.path.dirname(base)) == dir_mode
    assert stat.S_ISSOCK(os.lstat(d.cni_socket).st_mode) and stat.S_ISSOCK(os.lstat(d.grpc_socket).st_mode)
    for path in (d.cni_socket, d.grpc_socket):
        assert mode(path) == sock_mode, oct(mode(path))
    # never wider: every mode seen grants at most what the configured one grants (a directory is 0700 for a moment
    # before its group is set and the group's bits added)
    for path, want in ((base, dir_mode), (d.cni_socket, sock_mode), (d.grpc_socket, sock_mode)):
        assert seen[path] and all(m & ~want == 0 for m in seen[path]), (path, sorted(map(oct, seen[path])))
    if group:
        gid = 65534
        assert os.lstat(base).st_gid == gid and os.lstat(d.cni_socket).st_gid == gid
    out = run_cni("ADD", cni_config("loc", subnet="10.46.0.0/24"), socket=d.cni_socket)
    assert out.rc == 0 and out.ips == ["10.46.0.2/24"], out
    assert d.stop() == 0
    assert not os.path.exists(d.cni_socket) and not os.path.exists(d.grpc_socket)


# -- stale, live, symlink, non-socket ----------------------------------------------------------------------------------


def test_stale_socket_of_a_killed_daemon_is_replaced(etcd, prefix, workdir, stopper):
    """A daemon SIGKILLed leaves its sockets behind; the next one replaces them and serves."""
    base = os.path.join(workdir, "s")
    first = daemon_at(etcd, prefix, workdir, base)
    stopper.append(first)
    first.start()
    first.kill()
    assert os.path.exists(first.cni_socket) and os.path.exists(first.grpc_socket)
    second = daemon_at(etcd, prefix, workdir, base)
    stopper.append(second)
    second.start()
    out = run_cni("ADD", cni_config("loc", subnet="10.46.1.0/24"), socket=second.cni_socket)
    assert out.rc == 0 and out.ips == ["10.46.1.2/24"], out


def test_second_daemon_on_live_sockets_exits_nonzero_and_leaves_them(etcd, prefix, workdir, stopper):
    """A second daemon started on the live daemon's sockets exits with status 1 and a message naming the path;
    the live daemon's sockets are the same files (inodes) and it still answers."""
    base = os.path.join(workdir, "l")
    live = daemon_at(etcd, prefix, workdir, base)
    stopper.append(live)
    live.start()
    inodes = (os.lstat(live.cni_socket).st_ino, os.lstat(live.grpc_socket).st_ino)
    second = daemon_at(etcd, prefix, workdir, base, node="B")
    stopper.append(second)
    second.start(wait_ready=False)
    assert exits_with(second) == 1
    assert live.cni_socket in second.log() and "another" in second.log()
    assert (os.lstat(live.cni_socket).st_ino, os.lstat(live.grpc_socket).st_ino) == inodes
    assert live.health() == "SERVING"
    out = run_cni("ADD", cni_config("loc", subnet="10.46.2.0/24"), socket=live.cni_socket)
    assert out.rc == 0 and out.ips == ["10.46.2.2/24"], out


def test_second_daemon_on_the_grpc_socket_only(etcd, prefix, workdir, stopper):
    """The same when only the gRPC socket is shared: the second daemon exits 1 and its own CNI socket is gone."""
    live = daemon_at(etcd, prefix, workdir, os.path.join(workdir, "g1"))
    stopper.append(live)
    live.start()
    second = Daemon(etcd.endpoints, prefix, "B", workdir,
                    extra_args=["--cni-socket", os.path.join(workdir, "g2", "cni.sock"),
                                "--grpc-socket", live.grpc_socket])
    stopper.append(second)
    second.start(wait_ready=False)
    assert exits_with(second) == 1
    assert not os.path.exists(os.path.join(workdir, "g2", "cni.sock"))
    assert live.health() == "SERVING"


@pytest.mark.parametrize("kind", ["symlink", "file", "directory"])
def test_symlink_or_non_socket_at_the_path_is_refused(etcd, prefix, workdir, stopper, kind):
    """A symlink (to a file), a regular file or a directory at the CNI socket path: the daemon exits 1 naming the
    path, and the thing at the path (and a symlink's target) is untouched."""
    base = os.path.join(workdir, "x")
    os.makedirs(base)
    target = os.path.join(workdir, "precious.txt")
    with open(target, "w") as fh:
        fh.write("keep me\n")
    path = os.path.join(base, "cni.sock")
    if kind == "symlink":
        os.symlink(target, path)
    elif kind == "file":
        shutil.copy(target, path)
    else:
        os.mkdir(path)
    d = daemon_at(etcd, prefix, workdir, base)
    stopper.append(d)
    d.start(wait_ready=False)
    assert exits_with(d) == 1
    assert path in d.log()
    if kind == "symlink":
        assert os.path.islink(path) and os.readlink(path) == target
    elif kind == "file":
        with open(path) as fh:
            assert fh.read() == "keep me\n"
    else:
        assert os.path.isdir(path)
    with open(target) as fh:
        assert fh.read() == "keep me\n"
    assert not os.path.exists(d.grpc_socket)


# -- unprivileged callers ----------------------------------------------------------------------------------------------


def plugin_for_nobody(workdir: str) -> str:
    """A copy of the native plugin that uid 65534 can run."""
    bindir = os.path.join(workdir, "bin")
    os.makedirs(bindir, exist_ok=True)
    os.chmod(bindir, 0o755)
    path = os.path.join(bindir, "ipamd-cni")
    shutil.copy(installed_shim("native"), path)
    os.chmod(path, 0o755)
    return path


def run_as_nobody(plugin: str, socket_path: str, command: str = "ADD") -> subprocess.CompletedProcess[bytes]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "intruder", "CNI_IFNAME": "eth0",
           "CNI_NETNS": "/var/run/netns/x", "CNI_PATH": "/opt/cni/bin", "IPAMD_CNI_SOCKET": socket_path}
    conf = cni_config("loc", subnet="10.46.3.0/24")
    return subprocess.run([plugin], input=json.dumps(conf).encode(), capture_output=True, env=env, user=NOBODY,
                          group=NOBODY, extra_groups=[], timeout=30)


def test_unprivileged_caller_gets_a_permission_error_and_nothing_is_recorded(etcd, prefix, workdir, stopper, plugin):
    """The sockets are 0600 in a directory anyone may traverse: the plugin run as ``nobody`` gets code 11 whose
    message names the socket and says "Permission denied" (for the CNI and the gRPC socket alike), and etcd holds
    nothing. With ``--socket-group nogroup`` the same caller is let in and its ADD succeeds."""
    if plugin != "native":
        pytest.skip("the unprivileged caller is the static native plugin")
    os.chmod(workdir, 0o711)
    shim = plugin_for_nobody(workdir)
    base = os.path.join(workdir, "open")
    os.makedirs(base)
    os.chmod(base, 0o755)
    d = daemon_at(etcd, prefix, workdir, base)
    stopper.append(d)
    d.start()
    for path in (d.cni_socket, d.grpc_socket):
        out = run_as_nobody(shim, path)
        assert out.returncode != 0, out
        err = json.loads(out.stdout)
        assert err["code"] == 11 and "Permission denied" in err["msg"] and path in err["msg"], err
    counts = snapshot_counts(etcd.endpoints, prefix)
    assert (counts["ips"], counts["handles"]) == (0, 0)
    assert d.stop() == 0

    grouped = daemon_at(etcd, prefix, workdir, os.path.join(workdir, "grouped"), node="B",
                        extra=["--socket-group", "nogroup"])
    stopper.append(grouped)
    grouped.start()
    ok = run_as_nobody(shim, grouped.cni_socket)
    assert ok.returncode == 0, ok
    counts = snapshot_counts(etcd.endpoints, prefix)
    assert (counts["ips"], counts["handles"]) == (1, 1)


# -- the gRPC TCP listener ---------------------------------------------------------------------------------------------


def allocate(channel: grpc.Channel, container: str) -> str:
    stub = ipam_pb2_grpc.IpamStub(channel)  # type: ignore[no-untyped-call]
    resp = stub.Allocate(ipam_pb2.AllocateRequest(
        attachment=ipam_pb2.Attachment(network="tcp", container_id=container, if_name="eth0"),
        network_config_json=json.dumps(cni_config("tcp", subnet="10.46.4.0/24"))), timeout=10)
    return str(resp.allocation.addresses[0].address)


def test_grpc_tcp_listener_requires_tls_and_client_certificates(etcd, prefix, workdir, stopper):
    """--grpc-address with --grpc-tls-cert/--grpc-tls-key and --grpc-client-ca: a client presenting a certificate
    the CA signed allocates over TCP; a TLS client without a certificate, one with a certificate of another CA, and
    a plain-text client are all refused (UNAVAILABLE), and nothing they sent is recorded."""
    pki = Pki(os.path.join(workdir))
    port = free_port()
    d = Daemon(etcd.endpoints, prefix, "A", workdir,
               extra_args=["--grpc-address", "127.0.0.1:%d" % port, "--grpc-tls-cert", pki.server_cert,
                           "--grpc-tls-key", pki.server_key, "--grpc-client-ca", pki.ca])
    stopper.append(d)
    d.start()
    target = "127.0.0.1:%d" % port

    def read(path: str) -> bytes:
        with open(path, "rb") as fh:
            return fh.read()

    good = grpc.ssl_channel_credentials(read(pki.ca), read(pki.client_key), read(pki.client_cert))
    with grpc.secure_channel(target, good) as ch:
        assert allocate(ch, "tls-ok") == "10.46.4.2/24"
    refused = [grpc.secure_channel(target, grpc.ssl_channel_credentials(read(pki.ca))),
               grpc.secure_channel(target, grpc.ssl_channel_credentials(read(pki.ca), read(pki.stranger_key),
                                                                         read(pki.stranger_cert))),
               grpc.insecure_channel(target)]
    for i, ch in enumerate(refused):
        with ch:
            with pytest.raises(grpc.RpcError) as info:
                allocate(ch, "intruder-%d" % i)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value  # type: ignore[attr-defined]
    counts = snapshot_counts(etcd.endpoints, prefix)
    assert (counts["ips"], counts["handles"]) == (1, 1)


def test_grpc_tcp_listener_without_tls_is_refused_at_start(etcd, prefix, workdir):
    """There is no plain-text TCP listener: --grpc-address alone stops the daemon with status 2 and a message."""
    out = subprocess.run([*IPAMD, "--grpc-address", "127.0.0.1:0", "--etcd-endpoints",
                          etcd.endpoints], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--grpc-address" in out.stderr and "TLS" in out.stderr, out


def test_stale_socket_file_is_not_taken_for_live(workdir):
    """The liveness probe: a socket nobody listens on is stale; one with a listener is live (unit of the claim)."""
    from ipamd.sockets import SocketError, claim

    path = os.path.join(workdir, "probe.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    c = claim(path)  # stale (bound, not listening): claimable
    c.close()
    s.listen(1)
    with pytest.raises(SocketError) as info:
        claim(path)
    assert "live" in str(info.value) and path in str(info.value)
    s.close()


@pytest.mark.parametrize("plugin_kind", ["native", "python"])
def test_b46_install_cni_under_umask_000_creates_no_writable_directory(workdir, plugin_kind):
    """Field case B46, the other command that creates directories: ``ipamd install-cni DIR`` under ``umask 000``
    created DIR (and its missing parents) 0777, so any local user could replace the plugin the runtime executes as
    root. Directories it creates are 0755 whatever the umask (never wider at any moment); an existing directory is
    left as it is; the plugin is 0755 and answers VERSION."""
    if plugin_kind == "native" and native_plugin()[0] is None:
        pytest.skip(str(native_plugin()[1]))
    existing = os.path.join(workdir, "existing")
    os.mkdir(existing, 0o750)
    os.chmod(existing, 0o750)
    target = os.path.join(existing, "opt", "cni", "bin")
    proc = subprocess.run([*IPAMD, "install-cni", "--plugin", plugin_kind, target], capture_output=True, text=True,
                          timeout=60, umask=0)
    assert proc.returncode == 0, proc
    assert mode(existing) == 0o750
    for d in (os.path.join(existing, "opt"), os.path.join(existing, "opt", "cni"), target):
        assert mode(d) == 0o755, (d, oct(mode(d)))
    plugin_path = os.path.join(target, "ipamd-cni")
    assert mode(plugin_path) == 0o755
    out = subprocess.run([plugin_path], input=b'{"cniVersion":"1.1.0"}', capture_output=True, timeout=30,
                         env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and json.loads(out.stdout)["cniVersion"] == "1.1.0", out
