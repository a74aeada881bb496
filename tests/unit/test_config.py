"""Daemon configuration (ipamd.config.load): defaults < TOML (--config) < IPAMD_* environment < flags.

Field cases: docs/configuration.md via ipamd/config.py (flag names are the operators' contract).
"""

from __future__ import annotations

import socket
from dataclasses import fields
from pathlib import Path

import pytest

from ipamd.config import DaemonConfig, load


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
    args = ["--config", toml(tmp_path, toml_line + "\n")] + argv
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


def test_every_field_has_a_flag_and_an_env_var() -> None:
    for f in fields(DaemonConfig):
        if f.name in ("request_timeout", "etcd_timeout"):
            value, expected = "1.5", 1.5
        elif f.name == "node_lease_ttl":
            value, expected = "7", 7
        else:
            value, expected = "/x/", "/x/"
        assert getattr(load(["--" + f.name.replace("_", "-"), value], {}), f.name) == expected, f.name
        assert getattr(load([], {"IPAMD_" + f.name.upper(): value}), f.name) == expected, f.name


def test_unknown_toml_key_names_it(tmp_path: Path) -> None:
    path = toml(tmp_path, 'node_name = "a"\netcd_endpoint = "http://typo:2379"\n')
    with pytest.raises(SystemExit) as info:
        load(["--config", path], {})
    assert "etcd_endpoint" in str(info.value.code)


@pytest.mark.parametrize("text, must_contain", [
    ('node_lease_ttl = "soon"\n', "node_lease_ttl"),
    ("node_name = 5\n", "node_name"),
    ("node_name = \n", "cannot read config"),
])
def test_bad_toml_values(tmp_path: Path, text: str, must_contain: str) -> None:
    with pytest.raises(SystemExit) as info:
        load(["--config", toml(tmp_path, text)], {})
    assert must_contain in str(info.value.code)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        load(["--config", str(tmp_path / "nope.toml")], {})
    assert "nope.toml" in str(info.value.code)


@pytest.mark.parametrize("env, argv", [({"IPAMD_REQUEST_TIMEOUT": "x"}, []), ({}, ["--node-lease-ttl", "x"])])
def test_bad_numbers_name_the_source(env: dict[str, str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        load(argv, env)
    assert ("IPAMD_REQUEST_TIMEOUT" if env else "--node-lease-ttl") in str(info.value.code)


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
