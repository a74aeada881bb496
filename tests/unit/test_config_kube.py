"""Kubernetes-mode settings (docs/configuration.md "Kubernetes mode"; field case B54: a bad setting is one line
naming it and its source, and the daemon exits 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ipamd.config import load

IN_CLUSTER = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


def test_kubernetes_is_off_by_default() -> None:
    cfg = load([], {})
    assert cfg.kubernetes is False and cfg.kubeconfig == "" and cfg.kube_pod_cidr_blocks is False
    assert cfg.kube_timeout == 10.0
    assert cfg.kube_node_removal_grace == 300.0   # ignored without --kubernetes


@pytest.mark.parametrize("value, expected", [("0", 0.0), ("1", 1.0), ("300", 300.0), ("604800", 604800.0)])
def test_node_removal_grace_range(value: str, expected: float) -> None:
    # 0 turns automatic node removal off; otherwise from 1 s to a week
    cfg = load(["--kubernetes", "--node-name", "n1", "--kube-node-removal-grace", value], IN_CLUSTER)
    assert cfg.kube_node_removal_grace == expected


@pytest.mark.parametrize("argv, expected", [
    (["--kubernetes"], True),
    (["--kubernetes", "true"], True),
    (["--kubernetes", "FALSE"], False),
    (["--kubernetes", "0"], False),
    (["--kubernetes", "--node-name", "n1"], True),      # a bare flag before another flag
])
def test_kubernetes_flag_forms(argv: list[str], expected: bool) -> None:
    assert load(argv, {**IN_CLUSTER, "NODE_NAME": "n1"}).kubernetes is expected


def test_in_cluster_environment_is_enough() -> None:
    cfg = load(["--kubernetes", "--node-name", "node-1"], IN_CLUSTER)
    assert cfg.kubernetes and cfg.kubeconfig == ""


@pytest.mark.parametrize("env, argv, expected", [
    ({"NODE_NAME": "from-downward-api"}, [], "from-downward-api"),
    ({"NODE_NAME": "from-downward-api", "IPAMD_NODE_NAME": "env"}, [], "env"),
    ({"NODE_NAME": "from-downward-api"}, ["--node-name", "flag"], "flag"),
])
def test_node_name_from_node_name_in_kubernetes_mode(env: dict[str, str], argv: list[str], expected: str) -> None:
    assert load(["--kubernetes", *argv], {**IN_CLUSTER, **env}).node_name == expected


def test_node_name_variable_is_ignored_outside_kubernetes_mode() -> None:
    assert load([], {"NODE_NAME": "from-downward-api"}).node_name != "from-downward-api"


def test_toml_booleans(tmp_path: Path) -> None:
    path = tmp_path / "ipamd.toml"
    path.write_text('kubernetes = true\nkube_pod_cidr_blocks = true\nkubeconfig = "%s"\nnode_name = "n1"\n'
                    % __file__)
    cfg = load(["--config", str(path)], {})
    assert cfg.kubernetes is True and cfg.kube_pod_cidr_blocks is True and cfg.kubeconfig == __file__


def test_bad_kubernetes_setting_exits_2_with_one_line() -> None:
    # B54: before any socket or connection, one line on stderr, exit status 2
    env = {"PATH": "/usr/bin:/bin"}
    p = subprocess.run([sys.executable, "-m", "ipamd", "--kubernetes", "--node-name", "n1"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert p.returncode == 2
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ipamd: --kubernetes"), p.stderr
