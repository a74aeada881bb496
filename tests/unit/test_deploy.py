"""deploy/ is tested (issue 9 item 7): every file parses, and the references between the files hold — images and
their tags, volumes and mounts, ConfigMap and Secret keys, socket paths, ports, RBAC — and every flag, TOML key
and IPAMD_* variable a file passes is one the daemon (``ipamd.config``), ``ipamctl`` or ``ipamd install-cni``
accepts. The systemd unit's sandbox is rated by ``systemd-analyze`` where it is installed.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from ipamd import config, ctl
from ipamd.store.etcd import version_problem

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def k8s_objects() -> list[dict[str, Any]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        out += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def find(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    return doc


def unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string((DEPLOY / "systemd" / "ipamd.service").read_text())
    return cp


def configmap_toml() -> dict[str, Any]:
    return tomllib.loads(find("ConfigMap", "ipamd")["data"]["ipamd.toml"])


def daemon_flags_ok(argv: list[str]) -> None:
    """The daemon's parser accepts ``argv`` (argparse exits 2 on an unknown flag)."""
    config.parser().parse_args(argv)


# -- everything parses -------------------------------------------------------------------------------------------------


def test_every_deploy_file_parses():
    files = sorted(p for p in DEPLOY.rglob("*") if p.is_file())
    assert files
    for path in files:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            assert list(yaml.safe_load_all(text)), path
        elif path.suffix in (".json", ".conflist"):
            json.loads(text)
        elif path.suffix == ".service":
            assert unit().has_section("Service")
        elif path.name == "Dockerfile":
            assert "FROM " in text and "ENTRYPOINT" in text
        else:
            raise AssertionError("no parser for %s: add one to this test" % path)
    cm = find("ConfigMap", "ipamd")["data"]
    tomllib.loads(cm["ipamd.toml"])
    json.loads(cm["10-ipamd.conflist"])


# -- images ------------------------------------------------------------------------------------------------------------


def images() -> list[str]:
    out = [svc["image"] for svc in compose()["services"].values() if "image" in svc]
    ds = find("DaemonSet", "ipamd")["spec"]["template"]["spec"]
    out += [c["image"] for c in ds.get("initContainers", []) + ds["containers"]]
    return out


def test_ipamd_image_tag_is_the_project_version():
    ours = [i for i in images() if i.split(":")[0] == "ipamd"]
    assert ours and set(ours) == {"ipamd:%s" % VERSION}, ours
    assert "-t ipamd:%s" % VERSION in (DEPLOY / "Dockerfile").read_text()
    assert compose()["services"]["ipamd"]["build"]["dockerfile"] == "deploy/Dockerfile"


def test_etcd_is_pinned_to_a_fixed_release_without_known_data_loss():
    """Issue 9 item 3: a fixed release (no ``latest``, no floating tag), >= 3.5.3, the same everywhere; the docs name
    it as the one the deploy files use."""
    etcd = {i for i in images() if "etcd" in i.split(":")[0]}
    assert len(etcd) == 1, etcd
    (image,) = etcd
    m = re.fullmatch(r"quay\.io/coreos/etcd:v(\d+)\.(\d+)\.(\d+)", image)
    assert m, image
    version = tuple(int(x) for x in m.groups())
    assert version >= (3, 5, 3) and version_problem("%d.%d.%d" % version) is None, image
    assert "v%d.%d.%d" % version in (ROOT / "docs" / "operations.md").read_text()
    for path in DEPLOY.rglob("*"):
        if path.is_file():
            assert not re.search(r"etcd:v3\.5\.[0-2]\b", path.read_text()), path


# -- flags, keys and variables the daemon accepts ----------------------------------------------------------------------


def test_compose_ipamd_command_is_accepted():
    cmd = compose()["services"]["ipamd"]["command"]
    daemon_flags_ok(cmd)


def test_kubernetes_args_toml_and_env_are_accepted(tmp_path):
    ds = find("DaemonSet", "ipamd")["spec"]["template"]["spec"]
    (main,) = ds["containers"]
    daemon_flags_ok(main["args"])
    keys = {f.name for f in fields(config.DaemonConfig)}
    toml = configmap_toml()
    assert set(toml) <= keys, set(toml) - keys
    for env in main.get("env", []):
        assert env["name"].startswith("IPAMD_") and env["name"][6:].lower() in keys, env
    # the same file, as the daemon loads it (file paths replaced: they exist only in the pod)
    readable = str(ROOT / "pyproject.toml")
    patched = {k: (readable if isinstance(v, str) and v.startswith("/etc/ipamd/") else v) for k, v in toml.items()}
    path = tmp_path / "ipamd.toml"
    path.write_text("".join("%s = %s\n" % (k, json.dumps(v)) for k, v in patched.items()))
    in_pod = {"IPAMD_NODE_NAME": "node-1", "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    loaded = config.load(["--config", str(path)], in_pod)
    assert loaded.etcd_user == "ipamd" and loaded.etcd_password_file == readable
    assert loaded.kubernetes and loaded.node_name == "node-1"


def test_probes_and_init_commands_are_accepted(tmp_path):
    ds = find("DaemonSet", "ipamd")["spec"]["template"]["spec"]
    (main,) = ds["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        cmd = main[probe]["exec"]["command"]
        assert cmd[0] == "ipamctl"
        ctl._parser().parse_args(cmd[1:])
    (install, conflist) = ds["initContainers"]
    assert install["command"][:2] == ["ipamd", "install-cni"]
    from harness import native_plugin

    from ipamd.install import install_cni

    if native_plugin()[0] is None:
        pytest.skip(native_plugin()[1] or "no native plugin")
    args = [str(tmp_path) if a == "/host/opt/cni/bin" else a for a in install["command"][2:]]
    assert install_cni(args) == 0 and (tmp_path / "ipamd-cni").is_file()
    assert conflist["command"][0] == "cp"
    health = compose()["services"]["ipamd"]["healthcheck"]["test"]
    assert health[:2] == ["CMD", "ipamctl"]
    ctl._parser().parse_args(health[2:])


def test_systemd_execstart_is_accepted():
    exec_start = unit()["Service"]["ExecStart"].split()
    assert exec_start[0].endswith("/ipamd")
    daemon_flags_ok(exec_start[1:])


# -- volumes, keys, sockets, ports, RBAC -----------------------------------------------------------------------------


def test_kubernetes_volumes_and_mounts_match():
    spec = find("DaemonSet", "ipamd")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    used = set()
    for c in spec.get("initContainers", []) + spec["containers"]:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, (c["name"], m)
            used.add(m["name"])
            vol = volumes[m["name"]]
            if "subPath" in m and "configMap" in vol:
                cm = find("ConfigMap", vol["configMap"]["name"])
                assert m["subPath"] in cm["data"], m
    assert used == set(volumes), set(volumes) - used
    secret = find("Secret", volumes["etcd-tls"]["secret"]["secretName"])
    toml = configmap_toml()
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "etcd-tls")["mountPath"]
    for key in ("etcd_ca_cert", "etcd_cert", "etcd_key", "etcd_password_file"):
        path = Path(toml[key])
        assert str(path.parent) == mount and path.name in secret["stringData"], key


def test_socket_paths_agree():
    """The daemon's CNI socket (TOML) lies in the hostPath volume mounted at the same path, the conflist's
    ipam.socket names it, and the probes and compose use the same gRPC socket."""
    spec = find("DaemonSet", "ipamd")["spec"]["template"]["spec"]
    toml = configmap_toml()
    cni_socket, grpc_socket = toml["cni_socket"], toml["grpc_socket"]
    run_mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "run")["mountPath"]
    run_volume = next(v for v in spec["volumes"] if v["name"] == "run")["hostPath"]["path"]
    assert str(Path(cni_socket).parent) == run_mount == run_volume
    conflist = json.loads(find("ConfigMap", "ipamd")["data"]["10-ipamd.conflist"])
    ipam = [p["ipam"] for p in conflist["plugins"] if "ipam" in p]
    assert ipam and all(i["socket"] == cni_socket and i["type"] == "ipamd-cni" for i in ipam)
    assert grpc_socket in spec["containers"][0]["readinessProbe"]["exec"]["command"]
    svc = compose()["services"]["ipamd"]
    cmd = dict(a[2:].split("=", 1) for a in svc["command"])
    assert str(Path(cmd["grpc-socket"]).parent) == svc["volumes"][0].split(":")[1]
    assert cmd["grpc-socket"] in svc["healthcheck"]["test"]
    flags = unit()["Service"]["ExecStart"].split()
    sockets = [flags[flags.index(f) + 1] for f in ("--cni-socket", "--grpc-socket")]
    assert {str(Path(s).parent) for s in sockets} == {"/run/" + unit()["Service"]["RuntimeDirectory"]}


def test_ports_agree():
    spec = find("DaemonSet", "ipamd")["spec"]["template"]
    port = int(configmap_toml()["metrics_address"].rsplit(":", 1)[1])
    assert spec["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert spec["spec"]["containers"][0]["ports"][0]["containerPort"] == port
    svc = compose()["services"]["ipamd"]
    metrics = next(a for a in svc["command"] if a.startswith("--metrics-address="))
    cport = metrics.rsplit(":", 1)[1]
    assert svc["ports"] == ["%s:%s" % (cport, cport)]
    members = [s for n, s in compose()["services"].items() if n.startswith("etcd")]
    endpoints = next(a for a in svc["command"] if a.startswith("--etcd-endpoints=")).split("=", 1)[1]
    assert endpoints == ",".join(m["environment"]["ETCD_ADVERTISE_CLIENT_URLS"] for m in members)
    assert set(svc["depends_on"]) == {n for n in compose()["services"] if n.startswith("etcd")}


def test_rbac_grants_what_the_daemon_reads_and_nothing_more():
    role = find("ClusterRole", "ipamd")
    rules = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert rules == {("nodes", "get"), ("nodes", "list"), ("nodes", "watch"), ("pods", "list"), ("pods", "watch"),
                     ("namespaces", "get"), ("namespaces", "list"), ("namespaces", "watch")}
    binding = find("ClusterRoleBinding", "ipamd")
    assert binding["roleRef"]["name"] == "ipamd"
    sa = find("ServiceAccount", "ipamd")
    (subject,) = binding["subjects"]
    assert (subject["name"], subject["namespace"]) == (sa["metadata"]["name"], sa["metadata"]["namespace"])
    ds = find("DaemonSet", "ipamd")
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    namespace = find("Namespace")["metadata"]["name"]
    for obj in k8s_objects():
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]


# -- systemd -----------------------------------------------------------------------------------------------------------


HARDENING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
             "PrivateDevices": "yes", "UMask": "0077", "RuntimeDirectoryMode": "0750", "RestrictSUIDSGID": "yes",
             "ProtectKernelModules": "yes", "LockPersonality": "yes"}


def test_systemd_unit_is_sandboxed():
    service = unit()["Service"]
    for key, want in HARDENING.items():
        assert service.get(key) == want, key
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}
    assert service["ReadWritePaths"].split() == ["/run/ipamd"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_rates_the_sandbox(tmp_path):
    """``systemd-analyze security --offline=yes`` rates the unit's exposure (0 best, 10 worst): below 3.0 ("OK").
    The ExecStart binary is swapped for one that exists here; nothing else changes."""
    text = (DEPLOY / "systemd" / "ipamd.service").read_text().replace("/opt/ipamd/venv/bin/ipamd", "/bin/true")
    path = tmp_path / "ipamd.service"
    path.write_text(text)
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(path)], capture_output=True,
                         text=True, timeout=60)
    m = re.search(r"Overall exposure level for ipamd\.service: (\d+\.\d+)", out.stdout + out.stderr)
    assert m, out
    assert float(m.group(1)) < 3.0, out.stdout[-2000:]
    verify = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and "ipamd.service" not in verify.stderr, verify


# -- Grafana -----------------------------------------------------------------------------------------------------------


def catalogue_names() -> set[str]:
    return set(re.findall(r"^\| `(ipamd_\w+)` \|", (ROOT / "docs" / "metrics.md").read_text(), re.M))


def test_grafana_dashboard_covers_the_catalogue():
    """Every expression names only catalogued metrics (docs/metrics.md), and every catalogued metric is on the
    dashboard."""
    dash = json.loads((DEPLOY / "grafana" / "ipamd-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set()
    for expr in exprs:
        for name in re.findall(r"\b(ipamd_\w+)", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in catalogue_names(), (name, expr)
            used.add(base)
    assert used == catalogue_names(), catalogue_names() - used
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
