"""End-to-end fixtures: Debian's real CNI plugins (``/usr/lib/cni``) calling ``ipamd-cni`` through ``CNI_PATH``,
in a network namespace and on a bridge that each test creates for itself (docs/DEVELOPING.md, tests/e2e tier).

Every test here needs root and ``containernetworking-plugins`` + ``iproute2``; without them it is skipped with the
reason. Each test gets unique names (``ipamdtest-<random>``) and its own ``10.99.N.0/24``; teardown deletes the
namespace, the veths left on the bridge, the bridge, any iptables rule naming the test's containers, and puts
``/proc/sys/net/ipv4/ip_forward`` back to what it was (the bridge plugin turns it on with ``isGateway``).

:class:`Runtime` drives a network configuration list the way libcni does (``AddNetworkList`` / ``CheckNetworkList``
/ ``DelNetworkList``; docs/cni-contract.md §5.5), since there is no ``cnitool`` here.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import CniOutput, current_plugin

CNI_DIR = "/usr/lib/cni"
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
NAME_PREFIX = "ipamdtest-"  # 10 characters + 5 random: 15, the longest interface name Linux takes


def skip_reason() -> str | None:
    """Why the e2e tier cannot run here, or ``None``."""
    if os.geteuid() != 0:
        return "e2e tests need root (they create network namespaces and bridges); run `make test` as root"
    missing = [name for name in ("bridge", "portmap") if not os.access(os.path.join(CNI_DIR, name), os.X_OK)]
    if missing:
        return ("e2e tests need Debian's containernetworking-plugins (%s missing in %s): "
                "apt-get install containernetworking-plugins" % (", ".join(missing), CNI_DIR))
    if shutil.which("ip") is None:
        return "e2e tests need iproute2 (`ip`): apt-get install iproute2"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (with the reason) before any fixture starts etcd or a daemon; only items under tests/e2e/ get here."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)


def go_json(obj: Any) -> bytes:
    """JSON the way Go's ``encoding/json`` marshals a map (what libcni writes): sorted keys, no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, timeout=30)


class NetEnv:
    """One test's network namespace, bridge name, subnet and ``CNI_PATH`` (a temp dir with the shim + /usr/lib/cni)."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:5]
        self.netns = NAME_PREFIX + tag
        self.bridge = NAME_PREFIX + tag
        self.netns_path = "/var/run/netns/" + self.netns
        self.third_octet = _free_third_octet()
        self.subnet = "10.99.%d.0/24" % self.third_octet
        self.gateway = "10.99.%d.1" % self.third_octet
        self.bin_dir = tempfile.mkdtemp(prefix="ipamd-e2e-bin-")
        self.record_dir = os.path.join(self.bin_dir, "records")
        self.cni_path = "%s:%s" % (self.bin_dir, CNI_DIR)
        self.container_ids: list[str] = []
        self._ip_forward: str | None = None

    # --- set-up and teardown -------------------------------------------------------------------------------------

    def setup(self, record: bool = False) -> NetEnv:
        self._ip_forward = Path(IP_FORWARD).read_text().strip()
        _run("ip", "netns", "add", self.netns)
        self.install_shim(record)
        return self

    def install_shim(self, record: bool) -> None:
        """``ipamd install-cni --plugin <the test's plugin>`` into the temp bin dir; with ``record``, the real
        plugin is ``ipamd-cni-real`` and ``ipamd-cni`` is a wrapper that saves the exact stdin and ``CNI_*``
        environment it is handed."""
        name = "ipamd-cni-real" if record else "ipamd-cni"
        _run(sys.executable, "-m", "ipamd", "install-cni", self.bin_dir, "--name", name, "--plugin", current_plugin())
        if record:
            os.makedirs(self.record_dir)
            wrapper = Path(self.bin_dir) / "ipamd-cni"
            wrapper.write_text(
                "#!/bin/sh\n"
                "# Records what the main plugin hands its IPAM plugin, byte for byte, then runs the real shim.\n"
                "f=%(dir)s/$CNI_COMMAND.$$\n"
                "env | grep '^CNI_' | sort > \"$f.env\"\n"
                "cat > \"$f.stdin\" || exit 5\n"
                "exec %(real)s < \"$f.stdin\"\n"
                % {"dir": shlex.quote(self.record_dir), "real": shlex.quote(os.path.join(self.bin_dir, name))})
            wrapper.chmod(0o755)

    def records(self, command: str) -> list[tuple[bytes, dict[str, str]]]:
        """``(stdin bytes, CNI_* env)`` of each recorded IPAM call for ``command``, oldest first."""
        out = []
        paths = sorted(Path(self.record_dir).glob(command + ".*.stdin"), key=lambda p: p.stat().st_mtime_ns)
        for p in paths:
            env_text = p.with_suffix(".env").read_text()
            env = dict(line.split("=", 1) for line in env_text.splitlines() if "=" in line)
            out.append((p.read_bytes(), env))
        return out

    def teardown(self) -> None:
        errors: list[str] = []
        # Deleting the namespace destroys the container end of each veth and with it the pair.
        if os.path.exists(self.netns_path):
            r = _run("ip", "netns", "del", self.netns, check=False)
            if r.returncode:
                errors.append("ip netns del %s: %s" % (self.netns, r.stderr.strip()))
        # Anything still enslaved to our bridge is ours (a veth whose peer survived); then the bridge itself.
        if _link_exists(self.bridge):
            r = _run("ip", "-j", "link", "show", "master", self.bridge, check=False)
            for link in json.loads(r.stdout or "[]") if r.returncode == 0 else []:
                _run("ip", "link", "del", link["ifname"], check=False)
            r = _run("ip", "link", "del", self.bridge, check=False)
            if r.returncode:
                errors.append("ip link del %s: %s" % (self.bridge, r.stderr.strip()))
        errors.extend(self._remove_iptables_rules())
        if self._ip_forward is not None:
            Path(IP_FORWARD).write_text(self._ip_forward + "\n")
        shutil.rmtree(self.bin_dir, ignore_errors=True)
        if errors:
            raise RuntimeError("e2e cleanup failed: " + "; ".join(errors))

    def _remove_iptables_rules(self) -> list[str]:
        """bridge (ipMasq) and portmap (portMappings) tag their rules with the container ID; the tests use neither,
        but a failing test must not leave a rule behind, so delete any rule naming one of our containers."""
        if not self.container_ids or shutil.which("iptables-save") is None:
            return []
        errors = []
        for tool, save in (("iptables", "iptables-save"), ("ip6tables", "ip6tables-save")):
            if shutil.which(save) is None:
                continue
            r = _run(save, check=False)
            table = "filter"
            chains: list[tuple[str, str]] = []  # per-container chains (bridge's CNI-xxxx) the rules jump to
            for line in r.stdout.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                elif line.startswith("-A ") and any(cid in line for cid in self.container_ids):
                    rule = shlex.split(line)[1:]
                    d = _run(tool, "-t", table, "-D", *rule, check=False)
                    if d.returncode:
                        errors.append("%s -t %s -D %s: %s" % (tool, table, line[3:], d.stderr.strip()))
                    if "-j" in rule and rule[rule.index("-j") + 1].startswith("CNI-"):
                        chains.append((table, rule[rule.index("-j") + 1]))
            for table, chain in chains:
                _run(tool, "-t", table, "-F", chain, check=False)
                d = _run(tool, "-t", table, "-X", chain, check=False)
                if d.returncode:
                    errors.append("%s -t %s -X %s: %s" % (tool, table, chain, d.stderr.strip()))
        return errors

    # --- use -----------------------------------------------------------------------------------------------------

    def container_id(self) -> str:
        cid = "ipamdtest%s" % uuid.uuid4().hex
        self.container_ids.append(cid)
        return cid

    def env(self, command: str, container_id: str, if_name: str = "eth0", netns: str | None = None,
            extra: dict[str, str] | None = None) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if not k.startswith("CNI_") and not k.startswith("IPAMD_")}
        e.update({"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_IFNAME": if_name,
                  "CNI_NETNS": self.netns_path if netns is None else netns, "CNI_PATH": self.cni_path})
        e.update(extra or {})
        return e

    def plugin(self, plugin: str, command: str, stdin: bytes, container_id: str, if_name: str = "eth0",
               extra_env: dict[str, str] | None = None, netns: str | None = None) -> CniOutput:
        """Run ``/usr/lib/cni/<plugin>`` once as a runtime would (fresh process, CNI_* env, config on stdin);
        ``CNI_NETNS`` is the test's namespace unless ``netns`` names another path."""
        p = subprocess.run([os.path.join(CNI_DIR, plugin)], input=stdin, capture_output=True, timeout=60,
                           env=self.env(command, container_id, if_name, netns=netns, extra=extra_env))
        return CniOutput(p.returncode, p.stdout.decode(), p.stderr.decode())

    def bridge_conf(self, version: str = "1.0.0", name: str = "ipamd-e2e", **ipam: Any) -> dict[str, Any]:
        """A bridge network configuration with ``"ipam": {"type": "ipamd-cni", ...}``, no masquerading."""
        ipam_obj: dict[str, Any] = {"type": "ipamd-cni", "ranges": [[{"subnet": self.subnet}]],
                                    "routes": [{"dst": "0.0.0.0/0"}]}
        ipam_obj.update(ipam)
        return {"cniVersion": version, "name": name, "type": "bridge", "bridge": self.bridge, "isGateway": True,
                "ipMasq": False, "ipam": ipam_obj}

    def addresses(self, if_name: str = "eth0") -> list[str]:
        """IPv4 addresses on ``if_name`` inside the namespace, as ``a.b.c.d/len`` (``ip -n NS -j addr``)."""
        out = json.loads(_run("ip", "-n", self.netns, "-j", "addr", "show").stdout or "[]")
        return ["%s/%d" % (a["local"], a["prefixlen"]) for link in out if link.get("ifname") == if_name
                for a in link.get("addr_info", []) if a.get("family") == "inet"]

    def links(self) -> list[str]:
        out = json.loads(_run("ip", "-n", self.netns, "-j", "link", "show").stdout or "[]")
        return [link["ifname"] for link in out]

    def routes(self) -> list[dict[str, Any]]:
        """IPv4 routes inside the namespace (``ip -n NS -j route``)."""
        return json.loads(_run("ip", "-n", self.netns, "-j", "route", "show").stdout or "[]")


def _link_exists(name: str) -> bool:
    return _run("ip", "link", "show", name, check=False).returncode == 0


def _free_third_octet() -> int:
    """N such that nothing on this machine routes or holds an address in 10.99.N.0/24 (the host keeps the bridge's
    gateway address, so two tests must not share a subnet)."""
    used = _run("ip", "-4", "route", "show", "table", "all").stdout + _run("ip", "-4", "addr", "show").stdout
    choices = [n for n in range(1, 255) if "10.99.%d." % n not in used]
    if not choices:
        raise RuntimeError("no free 10.99.N.0/24 left on this machine")
    return random.choice(choices)


@pytest.fixture
def netenv() -> Iterator[NetEnv]:
    """A network namespace + unique bridge name + subnet + CNI_PATH with the installed plugin (the test's
    ``plugin``, tests/conftest.py); all removed after."""
    env = NetEnv()
    try:
        env.setup()
        yield env
    finally:
        env.teardown()


@pytest.fixture
def extra_netns() -> Iterator[Any]:
    """``extra_netns()`` → the path of one more network namespace (``/var/run/netns/ipamdtest-<random>``) for a
    second pod; each is deleted after the test (with the container ends of its veths, and so the pairs)."""
    made: list[str] = []

    def make() -> str:
        name = NAME_PREFIX + uuid.uuid4().hex[:5]
        _run("ip", "netns", "add", name)
        made.append(name)
        return "/var/run/netns/" + name

    yield make
    errors = []
    for name in made:
        if os.path.exists("/var/run/netns/" + name):
            r = _run("ip", "netns", "del", name, check=False)
            if r.returncode:
                errors.append("ip netns del %s: %s" % (name, r.stderr.strip()))
    if errors:
        raise RuntimeError("e2e cleanup failed: " + "; ".join(errors))


@pytest.fixture
def recording_netenv() -> Iterator[NetEnv]:
    """Like ``netenv``, but ``ipamd-cni`` in CNI_PATH records what it is handed (``env.records("ADD")``)."""
    env = NetEnv()
    try:
        env.setup(record=True)
        yield env
    finally:
        env.teardown()


class Runtime:
    """A runtime's view of one network configuration list, emulating libcni (containernetworking/cni ``libcni/api.go``).

    - ADD runs the plugins in list order; each plugin's stdin is its own config with ``name`` and ``cniVersion``
      of the list injected and, from the second plugin on, ``prevResult`` = the previous plugin's result. The final
      result is cached per attachment.
    - CHECK (only cniVersion ≥ 0.4.0; libcni refuses it below) runs in list order with the cached result as
      ``prevResult``.
    - DEL runs in reverse order with the cached result as ``prevResult`` when cniVersion ≥ 0.4.0 (none below),
      then drops the cache. ``runtimeConfig`` is injected only for capabilities the runtime has arguments for; the
      tests pass none (no port mappings), so none is injected.
    """

    class Refused(Exception):
        """An error libcni itself returns to its caller, without running any plugin."""

    def __init__(self, netenv: NetEnv, conflist: dict[str, Any], extra_env: dict[str, str] | None = None) -> None:
        self.netenv, self.conflist, self.extra_env = netenv, conflist, extra_env or {}
        self.cache: dict[tuple[str, str], Any] = {}
        self.calls: list[tuple[str, str, bytes, CniOutput]] = []

    @property
    def version(self) -> str:
        return str(self.conflist["cniVersion"])

    def _at_least(self, version: str) -> bool:
        def key(v: str) -> tuple[int, ...]:
            return tuple(int(x) for x in v.split("."))

        return key(self.version) >= key(version)

    def _stdin(self, plugin: dict[str, Any], prev_result: Any) -> bytes:
        conf = dict(plugin)
        conf["name"] = self.conflist["name"]
        conf["cniVersion"] = self.version
        if prev_result is not None:
            conf["prevResult"] = prev_result
        return go_json(conf)

    def _call(self, command: str, plugin: dict[str, Any], prev_result: Any, container_id: str,
              if_name: str) -> CniOutput:
        stdin = self._stdin(plugin, prev_result)
        out = self.netenv.plugin(plugin["type"], command, stdin, container_id, if_name, self.extra_env)
        self.calls.append((command, plugin["type"], stdin, out))
        return out

    def add(self, container_id: str, if_name: str = "eth0") -> Any:
        """AddNetworkList: returns the final result; raises ``AssertionError`` naming the plugin that failed."""
        result = None
        for plugin in self.conflist["plugins"]:
            out = self._call("ADD", plugin, result, container_id, if_name)
            assert out.rc == 0, "ADD %s failed: %r" % (plugin["type"], out)
            result = out.json
        self.cache[(container_id, if_name)] = result
        return result

    def check(self, container_id: str, if_name: str = "eth0") -> None:
        """CheckNetworkList: raises :class:`Runtime.Refused` where libcni refuses, ``AssertionError`` on failure."""
        if not self._at_least("0.4.0"):
            raise self.Refused("configuration version %r does not support the CHECK command" % self.version)
        cached = self.cache.get((container_id, if_name))
        if cached is None:
            raise self.Refused("no cached result for %s/%s" % (container_id, if_name))
        for plugin in self.conflist["plugins"]:
            out = self._call("CHECK", plugin, cached, container_id, if_name)
            assert (out.rc, out.stdout) == (0, ""), "CHECK %s failed: %r" % (plugin["type"], out)

    def delete(self, container_id: str, if_name: str = "eth0") -> None:
        """DelNetworkList: reverse order, cached result as prevResult (≥ 0.4.0), then the cache entry is dropped."""
        cached = self.cache.get((container_id, if_name)) if self._at_least("0.4.0") else None
        for plugin in reversed(self.conflist["plugins"]):
            out = self._call("DEL", plugin, cached, container_id, if_name)
            assert out.rc == 0, "DEL %s failed: %r" % (plugin["type"], out)
        self.cache.pop((container_id, if_name), None)


@pytest.fixture
def runtime_for() -> Any:
    """``runtime_for(netenv, conflist, extra_env=None)`` → :class:`Runtime`."""
    return Runtime
