"""Daemon configuration (ipamd.config.load): defaults < TOML (--config) < IPAMD_* environment < flags.

Field cases: docs/configuration.md via ipamd/config.py (flag names are the operators' contract).
"""

from __future__ import annotations

import socket
from dataclasses import fields
from pathlib import Path

import pytest

from ipamd import config
from ipamd.config import ConfigError, DaemonConfig, load


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "ipamd.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    cfg = load([], {})
    assert cfg == DaemonConfig(node_name=socket.gethostname())
    assert cfg.etcd_endpoints == "http://127.0.0.1:2379"
    assert cfg.etcd_prefix == "/ipamd/v1/"
    assert cfg.cni_socket == "/run/ipamd/cni.sock"
    assert cfg.request_timeout == 8.0 and cfg.node_lease_ttl == 30
    assert cfg.health_interval == 0.0 and cfg.health_max_per_round == 64   # continuous health is opt-in


def test_node_name_defaults_to_hostname() -> None:
    assert load([], {}).node_name == socket.gethostname()
    assert load([], {"IPAMD_NODE_NAME": ""}).node_name == socket.gethostname()   # "" is unset


def test_load_does_not_read_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPAMD_NODE_NAME", "from-process-env")
    assert load([], {}).node_name == socket.gethostname()


@pytest.mark.parametrize("toml_line, env, argv, expected", [
    # node_name at each layer
    ("", {}, [], socket.gethostname()),
    ('node_name = "file"', {}, [], "file"),
    ('node_name = "file"', {"IPAMD_NODE_NAME": "env"}, [], "env"),
    ('node_name = "file"', {"IPAMD_NODE_NAME": "env"}, ["--node-name", "flag"], "flag"),
    ("", {"IPAMD_NODE_NAME": "env"}, [], "env"),
    ("", {}, ["--node-name", "flag"], "flag"),
    ('node_name = "file"', {}, ["--node-name", "flag"], "flag"),
])
def test_precedence_node_name(tmp_path: Path, toml_line: str, env: dict[str, str], argv: list[str],
                              expected: str) -> None:
    args = ["--config", toml(tmp_path, toml_line + "\n"), *argv]
    assert load(args, env).node_name == expected


def test_precedence_per_key(tmp_path: Path) -> None:
    # each key takes the highest layer that sets it, independently of the others
    path = toml(tmp_path, 'node_name = "file"\netcd_endpoints = "http://file:2379"\ncni_socket = "/file.sock"\n'
                          'request_timeout = 3.5\n')
    env = {"IPAMD_ETCD_ENDPOINTS": "http://env:2379", "IPAMD_CNI_SOCKET": "/env.sock"}
    cfg = load(["--config", path, "--cni-socket", "/flag.sock"], env)
    assert cfg.node_name == "file"
    assert cfg.etcd_endpoints == "http://env:2379"
    assert cfg.cni_socket == "/flag.sock"
    assert cfg.request_timeout == 3.5
    assert cfg.grpc_socket == "/run/ipamd/ipamd.sock"   # default


@pytest.mark.parametrize("argv, env, attr, expected", [
    (["--request-timeout", "2.5"], {}, "request_timeout", 2.5),
    ([], {"IPAMD_REQUEST_TIMEOUT": "4"}, "request_timeout", 4.0),
    (["--node-lease-ttl", "15"], {}, "node_lease_ttl", 15),
    ([], {"IPAMD_NODE_LEASE_TTL": "60"}, "node_lease_ttl", 60),
    (["--etcd-timeout", "0.5"], {"IPAMD_ETCD_TIMEOUT": "9"}, "etcd_timeout", 0.5),
    ([], {"IPAMD_LOG_LEVEL": "DEBUG"}, "log_level", "DEBUG"),
    (["--metrics-address", "127.0.0.1:9100"], {}, "metrics_address", "127.0.0.1:9100"),
    (["--embedded-etcd", "/tmp/x"], {}, "embedded_etcd", "/tmp/x"),
])
def test_env_and_flags_are_coerced(argv: list[str], env: dict[str, str], attr: str, expected: object) -> None:
    value = getattr(load(argv, env), attr)
    assert value == expected and type(value) is type(expected)


def test_toml_types(tmp_path: Path) -> None:
    path = toml(tmp_path, 'etcd_endpoints = ["http://a:2379", "http://b:2379"]\nnode_lease_ttl = 10\n'
                          'etcd_timeout = 1\n')
    cfg = load(["--config", path], {})
    assert cfg.etcd_endpoints == "http://a:2379,http://b:2379"
    assert cfg.node_lease_ttl == 10 and cfg.etcd_timeout == 1.0 and isinstance(cfg.etcd_timeout, float)


#: A valid value for every setting (text as given on the command line) and what it parses to.
SAMPLES: dict[str, tuple[str, object]] = {
    "node_name": ("node-7", "node-7"),
    "etcd_endpoints": ("http://10.0.0.1:2379", "http://10.0.0.1:2379"),
    "etcd_prefix": ("/x/", "/x/"),
    "etcd_ca_cert": (__file__, __file__),
    "etcd_cert": (__file__, __file__),
    "etcd_key": (__file__, __file__),
    "etcd_user": ("ipamd", "ipamd"),
    "etcd_password": ("secret", "secret"),
    "etcd_password_file": (__file__, __file__),
    "cni_socket": ("/x/cni.sock", "/x/cni.sock"),
    "grpc_socket": ("/x/grpc.sock", "/x/grpc.sock"),
    "socket_group": ("0", "0"),
    "grpc_address": ("127.0.0.1:0", "127.0.0.1:0"),
    "grpc_tls_cert": (__file__, __file__),
    "grpc_tls_key": (__file__, __file__),
    "grpc_client_ca": (__file__, __file__),
    "metrics_address": ("127.0.0.1:9100", "127.0.0.1:9100"),
    "embedded_etcd": ("/x/", "/x/"),
    "request_timeout": ("9.5", 9.5),
    "etcd_timeout": ("1.5", 1.5),
    "gc_timeout": ("60", 60.0),
    "reconcile_interval": ("0", 0.0),
    "reconcile_grace": ("30.5", 30.5),
    "empty_block_release_seconds": ("2.5", 2.5),
    "node_lease_ttl": ("7", 7),
    "handle_cache_size": ("100", 100),
    "log_level": ("DEBUG", "DEBUG"),
    "log_format": ("json", "json"),
    "health_interval": ("30", 30.0),
    "health_max_per_round": ("16", 16),
    "kubernetes": ("true", True),
    "kubeconfig": (__file__, __file__),
    "kube_timeout": ("2.5", 2.5),
    "kube_pod_cidr_blocks": ("yes", True),
    "kube_node_removal_grace": ("90.5", 90.5),
    "node_check": ("off", False),
    "node_netns": ("/var/run/netns/host", "/var/run/netns/host"),
    "node_labels": ("zone=a,rack=r1", "zone=a,rack=r1"),
}
#: Settings that are only valid with others: the partners' samples are given too.
PARTNERS: dict[str, tuple[str, ...]] = {
    "etcd_cert": ("etcd_key",), "etcd_key": ("etcd_cert",), "etcd_user": ("etcd_password",),
    "etcd_password": ("etcd_user",), "etcd_password_file": ("etcd_user",),
    "grpc_address": ("grpc_tls_cert", "grpc_tls_key"), "grpc_tls_cert": ("grpc_tls_key",),
    "grpc_tls_key": ("grpc_tls_cert",), "grpc_client_ca": ("grpc_address", "grpc_tls_cert", "grpc_tls_key"),
    "kubernetes": ("kubeconfig",), "kubeconfig": ("kubernetes",), "kube_pod_cidr_blocks": ("kubernetes", "kubeconfig"),
    "kube_node_removal_grace": ("kubernetes", "kubeconfig")}


def test_every_field_has_a_flag_an_env_var_and_a_sample() -> None:
    assert set(SAMPLES) == {f.name for f in fields(DaemonConfig)}
    for f in fields(DaemonConfig):
        value, expected = SAMPLES[f.name]
        argv, env = ["--" + f.name.replace("_", "-"), value], {"IPAMD_" + f.name.upper(): value}
        for partner in PARTNERS.get(f.name, ()):
            argv += ["--" + partner.replace("_", "-"), SAMPLES[partner][0]]
            env["IPAMD_" + partner.upper()] = SAMPLES[partner][0]
        assert getattr(load(argv, {}), f.name) == expected, f.name
        assert getattr(load([], env), f.name) == expected, f.name


def test_unknown_toml_key_names_it(tmp_path: Path) -> None:
    path = toml(tmp_path, 'node_name = "a"\netcd_endpoint = "http://typo:2379"\n')
    with pytest.raises(ConfigError) as info:
        load(["--config", path], {})
    assert "etcd_endpoint" in str(info.value)


@pytest.mark.parametrize("text, must_contain", [
    ('node_lease_ttl = "soon"\n', "node_lease_ttl"),
    ("node_name = 5\n", "node_name"),
    ("node_name = \n", "cannot read config"),
])
def test_bad_toml_values(tmp_path: Path, text: str, must_contain: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(["--config", toml(tmp_path, text)], {})
    assert must_contain in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(["--config", str(tmp_path / "nope.toml")], {})
    assert "nope.toml" in str(info.value)


@pytest.mark.parametrize("env, argv", [({"IPAMD_REQUEST_TIMEOUT": "x"}, []), ({}, ["--node-lease-ttl", "x"])])
def test_bad_numbers_name_the_source(env: dict[str, str], argv: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(argv, env)
    assert ("IPAMD_REQUEST_TIMEOUT" if env else "--node-lease-ttl") in str(info.value)


@pytest.mark.parametrize("source, value, expected", [
    ("flag", "/custom", "/custom/"),
    ("flag", "/custom/", "/custom/"),
    ("env", "/a/b", "/a/b/"),
    ("toml", "/t", "/t/"),
])
def test_etcd_prefix_gets_trailing_slash(tmp_path: Path, source: str, value: str, expected: str) -> None:
    if source == "flag":
        cfg = load(["--etcd-prefix", value], {})
    elif source == "env":
        cfg = load([], {"IPAMD_ETCD_PREFIX": value})
    else:
        cfg = load(["--config", toml(tmp_path, 'etcd_prefix = "%s"\n' % value)], {})
    assert cfg.etcd_prefix == expected


def test_config_is_frozen() -> None:
    cfg = load([], {})
    with pytest.raises(AttributeError):
        cfg.node_name = "x"  # type: ignore[misc]


_IN_CLUSTER = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


# --- validation (field case B54): one message naming the setting, its source and what is allowed ---------------------

@pytest.mark.parametrize("argv, env, names", [
    (["--etcd-endpoints", "foo"], {}, ["--etcd-endpoints", "'foo'", "host:port"]),
    (["--etcd-endpoints", "ftp://127.0.0.1:1"], {}, ["--etcd-endpoints", "http or https"]),
    (["--etcd-endpoints", "http://127.0.0.1:99999"], {}, ["--etcd-endpoints", "1-65535"]),
    (["--etcd-endpoints", ","], {}, ["--etcd-endpoints", "no etcd endpoints"]),
    (["--log-level", "LOUD"], {}, ["--log-level", "LOUD", "DEBUG, INFO, WARNING, ERROR"]),
    (["--request-timeout", "-1"], {}, ["--request-timeout", "> 0"]),
    (["--request-timeout", "nan"], {}, ["--request-timeout", "> 0"]),
    (["--etcd-timeout", "0"], {}, ["--etcd-timeout", "> 0"]),
    (["--etcd-timeout", "9"], {}, ["--etcd-timeout", "--request-timeout"]),
    (["--node-lease-ttl", "0"], {}, ["--node-lease-ttl", "2 to 86400"]),
    (["--node-lease-ttl", "1.5"], {}, ["--node-lease-ttl", "whole"]),
    (["--metrics-address", "not-an-address"], {}, ["--metrics-address", "host:port"]),
    (["--metrics-address", "127.0.0.1:70000"], {}, ["--metrics-address", "0-65535"]),
    (["--node-name", "a/b"], {}, ["--node-name", "'a/b'"]),
    # named pools' nodeSelector matches these (docs/configuration.md "Named pools")
    (["--node-labels", "zone"], {}, ["--node-labels", "k=v,k2=v2", "'zone' is not key=value"]),
    ([], {"IPAMD_NODE_LABELS": "zone=a b"}, ["--node-labels", "IPAMD_NODE_LABELS"]),
    (["--reconcile-interval", "-1"], {}, ["--reconcile-interval", "0: off"]),
    (["--reconcile-grace", "inf"], {}, ["--reconcile-grace", ">= 0"]),
    (["--empty-block-release-seconds", "-1"], {}, ["--empty-block-release-seconds", ">= 0"]),
    (["--cni-socket", "/" + "x" * 120], {}, ["--cni-socket", "107 bytes"]),
    (["--etcd-user", "u"], {}, ["--etcd-password", "required"]),
    (["--etcd-cert", __file__], {}, ["--etcd-key", "required"]),
    (["--etcd-endpoints", "https://127.0.0.1:2379"], {}, ["--etcd-ca-cert", "https"]),
    (["--etcd-ca-cert", "/nonexistent/ca.pem"], {}, ["--etcd-ca-cert", "readable"]),
    ([], {"IPAMD_LOG_LEVEL": "LOUD"}, ["--log-level", "IPAMD_LOG_LEVEL"]),
    ([], {"IPAMD_REQUEST_TIMEOUT": "-3"}, ["--request-timeout", "IPAMD_REQUEST_TIMEOUT"]),
    # relations between the deadlines (issue 8 item 1, docs/configuration.md "Deadlines")
    (["--gc-timeout", "5"], {}, ["--gc-timeout", "--request-timeout"]),
    (["--node-lease-ttl", "3", "--etcd-timeout", "2"], {}, ["--node-lease-ttl", "twice --etcd-timeout"]),
    # local API and etcd security (docs/operations.md "Local access")
    (["--grpc-address", "127.0.0.1:0"], {}, ["--grpc-address", "TLS only"]),
    (["--grpc-client-ca", __file__], {}, ["--grpc-client-ca", "--grpc-address"]),
    (["--grpc-tls-cert", __file__], {}, ["--grpc-tls-key", "required"]),
    (["--socket-group", "no-such-group-here"], {}, ["--socket-group", "not a group"]),
    (["--etcd-user", "u", "--etcd-password", "p", "--etcd-password-file", __file__], {},
     ["--etcd-password-file", "exclusive"]),
    (["--etcd-user", "u", "--etcd-password-file", "/nonexistent/pw"], {}, ["--etcd-password-file", "readable"]),
    (["--log-format", "xml"], {}, ["--log-format", "text, json"]),
    # continuous health (docs/namespace-checks.md)
    (["--health-interval", "-1"], {}, ["--health-interval", "0 (off)"]),
    (["--health-interval", "0.01"], {}, ["--health-interval", "0.1 to 86400"]),
    (["--health-interval", "inf"], {}, ["--health-interval", "0.1 to 86400"]),
    ([], {"IPAMD_HEALTH_INTERVAL": "soon"}, ["IPAMD_HEALTH_INTERVAL", "number"]),
    (["--health-max-per-round", "0"], {}, ["--health-max-per-round", "1 to 10000"]),
    (["--health-max-per-round", "2.5"], {}, ["--health-max-per-round", "whole"]),
    # Kubernetes mode (docs/configuration.md "Kubernetes mode")
    (["--kubernetes", "--node-name", "n1"], {}, ["--kubernetes", "--kubeconfig", "KUBERNETES_SERVICE_HOST"]),
    (["--kubeconfig", __file__], {}, ["--kubeconfig", "needs --kubernetes"]),
    (["--kube-pod-cidr-blocks"], {}, ["--kube-pod-cidr-blocks", "needs --kubernetes"]),
    ([], {"IPAMD_KUBE_POD_CIDR_BLOCKS": "1"}, ["--kube-pod-cidr-blocks", "IPAMD_KUBE_POD_CIDR_BLOCKS"]),
    (["--kubernetes", "--kubeconfig", "/nonexistent/kubeconfig"], {"NODE_NAME": "n1"},
     ["--kubeconfig", "/nonexistent/kubeconfig", "readable"]),
    (["--kubernetes", "maybe"], {}, ["--kubernetes", "'maybe'", "boolean"]),
    ([], {"IPAMD_KUBERNETES": "maybe"}, ["IPAMD_KUBERNETES", "boolean"]),
    (["--kube-timeout", "0"], {}, ["--kube-timeout", "> 0"]),
    # automatic node removal (docs/configuration.md "Kubernetes mode")
    (["--kube-node-removal-grace", "-1"], {}, ["--kube-node-removal-grace", "0 (off)", "1 to 604800"]),
    (["--kube-node-removal-grace", "0.5"], {}, ["--kube-node-removal-grace", "0 (off)"]),
    (["--kube-node-removal-grace", "nan"], {}, ["--kube-node-removal-grace", "0 (off)"]),
    (["--kube-node-removal-grace", "604801"], {}, ["--kube-node-removal-grace", "1 to 604800"]),
    ([], {"IPAMD_KUBE_NODE_REMOVAL_GRACE": "soon"}, ["IPAMD_KUBE_NODE_REMOVAL_GRACE", "number"]),
    (["--kube-node-removal-grace", "60"], {}, ["--kube-node-removal-grace", "needs --kubernetes"]),
    ([], {"IPAMD_KUBE_NODE_REMOVAL_GRACE": "60"}, ["--kube-node-removal-grace", "IPAMD_KUBE_NODE_REMOVAL_GRACE",
                                                  "needs --kubernetes"]),
    (["--kubernetes", "--node-name", "Node_1"], _IN_CLUSTER, ["--node-name", "'Node_1'", "Kubernetes node name"]),
    (["--kubernetes"], {**_IN_CLUSTER, "NODE_NAME": "UPPER"}, ["--node-name", "from NODE_NAME", "'UPPER'"]),
])
def test_bad_settings_are_named(argv: list[str], env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(argv, env)
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message, message


@pytest.mark.parametrize("text, names", [
    ('log_level = "LOUD"\n', ["--log-level", "ipamd.toml"]),
    ("request_timeout = -1\n", ["--request-timeout", "ipamd.toml"]),
    ("node_lease_ttl = 0\n", ["--node-lease-ttl", "ipamd.toml"]),
    ("node_lease_ttl = 2.5\n", ["node_lease_ttl", "whole"]),
    ("request_timeout = true\n", ["request_timeout"]),
    ('etcd_endpoints = ["http://a:2379", "ftp://b:1"]\n', ["--etcd-endpoints", "ftp://b:1"]),
])
def test_bad_toml_settings_are_named(tmp_path: Path, text: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(["--config", toml(tmp_path, text)], {})
    for name in names:
        assert name in str(info.value), str(info.value)


@pytest.mark.parametrize("argv", [
    ["--etcd-endpoints", "127.0.0.1:2379"],                       # scheme defaults to http
    ["--etcd-endpoints", "http://[::1]:2379,http://h:1"],
    ["--metrics-address", "[::]:0"],
    ["--node-lease-ttl", "2", "--etcd-timeout", "1", "--request-timeout", "8"],
    ["--grpc-address", "127.0.0.1:0", "--grpc-tls-cert", __file__, "--grpc-tls-key", __file__],
    ["--etcd-user", "u", "--etcd-password-file", __file__],
    ["--log-format", "JSON"],
    ["--log-level", "debug"],
    ["--health-interval", "0"],
    ["--health-interval", "0.5", "--health-max-per-round", "10000"],
])
def test_good_settings_pass(argv: list[str]) -> None:
    load(argv, {})


def test_etcd_binary_from_ipamd_etcd_bin(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """$IPAMD_ETCD_BIN picks the directory of etcd and etcdctl (e.g. Debian's /usr/bin); a directory without the
    binary is an error naming it, never a silent fallback to another etcd."""
    from ipamd.embedded import etcd_binary

    (tmp_path / "etcd").write_text("#!/bin/sh\n")
    monkeypatch.setenv("IPAMD_ETCD_BIN", str(tmp_path))
    assert etcd_binary() == str(tmp_path / "etcd")
    with pytest.raises(FileNotFoundError, match="etcdctl"):
        etcd_binary("etcdctl")
    monkeypatch.delenv("IPAMD_ETCD_BIN")
    assert etcd_binary() != str(tmp_path / "etcd")


def test_version_flags_print_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    """``ipamd --version`` and ``ipamctl --version`` print the package's version and exit 0."""
    from importlib import metadata

    from ipamd import ctl

    version = metadata.version("ipamd")
    with pytest.raises(SystemExit) as info:
        config.parser().parse_args(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == "ipamd " + version
    with pytest.raises(SystemExit) as info:
        ctl.main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == "ipamctl (ipamd %s)" % version


def test_node_labels_as_a_toml_table(tmp_path: Path) -> None:
    """``node_labels = {zone = "a", rack = "r1"}`` in the TOML file is ``zone=a,rack=r1`` (docs/configuration.md)."""
    cfg = load(["--config", toml(tmp_path, 'node_labels = {zone = "a", rack = "r1"}\n')], {})
    assert cfg.node_labels == "zone=a,rack=r1"
