"""The shim (client/ipamd_cni.py): start-up cost and the tiny JSON scanner ``_pick``.

Field cases: cni-conformance.md T2 (VERSION echoes stdin's cniVersion), §2.4 (VERSION answered locally when the
daemon is unreachable); the shim's docstring (built-in modules only, installed as ``python -I -S``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
SHIM = ROOT / "client" / "ipamd_cni.py"


def load_shim() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ipamd_cni_under_test", SHIM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


shim = load_shim()


# --- start-up: what -X importtime says ----------------------------------------------------------------------------

def imported_modules(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    out = set()
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        name = line.rsplit("|", 1)[-1].strip()
        if name and name != "imported package":
            out.add(name)
    return out


def importtime(args: list[str], env: dict[str, str], data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", *args], input=data,
                          capture_output=True, env=env, timeout=30, cwd=str(ROOT))


@pytest.fixture(scope="module")
def baseline() -> set[str]:
    """The interpreter's own start-up set under ``-I -S`` (the shim uses ``posix`` directly, not ``os``)."""
    bare = importtime(["-c", "pass"], {})
    mods = imported_modules(bare.stderr.decode())
    assert "encodings" in mods
    return mods


@pytest.fixture(scope="module")
def version_run(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[bytes]:
    sock = tmp_path_factory.mktemp("shim") / "missing" / "cni.sock"
    env = {"CNI_COMMAND": "VERSION", "IPAMD_CNI_SOCKET": str(sock)}
    return importtime([str(SHIM)], env, b'{"cniVersion":"0.4.0"}')


def test_shim_imports_nothing_beyond_start_up_and_socket(baseline: set[str],
                                                         version_run: subprocess.CompletedProcess[bytes]) -> None:
    mods = imported_modules(version_run.stderr.decode())
    assert "_socket" in mods
    extra = mods - baseline - {"_socket"}
    assert not extra, "the shim imported %s" % sorted(extra)
    for heavy in ("os", "json", "socket", "struct", "re", "selectors", "ipaddress", "ipamd"):
        assert heavy not in mods


def test_shim_version_answer_is_local_and_echoes(version_run: subprocess.CompletedProcess[bytes]) -> None:
    # T2 + §2.4: daemon unreachable -> VERSION answered locally, exit 0, one JSON object on stdout.
    assert version_run.returncode == 0
    answer = json.loads(version_run.stdout)
    assert answer == {"cniVersion": "0.4.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    # stderr holds only importtime lines: nothing else was logged for VERSION
    assert all(line.startswith("import time:") for line in version_run.stderr.decode().splitlines())


@pytest.mark.parametrize("data, expected", [(b"", "1.1.0"), (b"garbage", "1.1.0"), (b'{"cniVersion":1}', "1.1.0"),
                                            (b'{"cniVersion":"1.1.0"}', "1.1.0")])
def test_shim_version_without_usable_stdin(tmp_path: Path, data: bytes, expected: str) -> None:
    # T3
    env = {"CNI_COMMAND": "VERSION", "IPAMD_CNI_SOCKET": str(tmp_path / "none.sock")}
    p = subprocess.run([sys.executable, "-I", "-S", str(SHIM)], input=data, capture_output=True, env=env,
                       timeout=30)
    assert p.returncode == 0 and json.loads(p.stdout)["cniVersion"] == expected
    assert p.stderr == b""


def test_shim_unreachable_daemon_is_code_11(tmp_path: Path) -> None:
    # T56: daemon down -> err 11 naming the socket, cniVersion of the request, log on stderr only.
    sock = tmp_path / "none.sock"
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "IPAMD_CNI_SOCKET": str(sock)}
    p = subprocess.run([sys.executable, "-I", "-S", str(SHIM)], input=b'{"cniVersion":"0.4.0","name":"n"}',
                       capture_output=True, env=env, timeout=30)
    assert p.returncode == 1
    err = json.loads(p.stdout)
    assert err["code"] == 11 and err["cniVersion"] == "0.4.0" and str(sock) in err["msg"]
    assert str(sock).encode() in p.stderr


# --- _pick ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data, expected", [
    (b'{"cniVersion":"0.4.0","ipam":{"socket":"/run/x.sock"}}', ("0.4.0", "/run/x.sock")),
    (b'{"cniVersion":"1.0.0"}', ("1.0.0", None)),
    (b'{"ipam":{"type":"ipamd-cni"}}', (None, None)),
    (b'{}', (None, None)),
    # whitespace everywhere
    (b' \n{ "cniVersion" :\t"1.1.0" ,\r\n "ipam" : { "socket" : "/s" } } ', ("1.1.0", "/s")),
    # escaped quotes and backslashes inside strings
    (br'{"name":"a\"b","cniVersion":"1.\"0","ipam":{"socket":"/run/a\\b\"c"}}', ('1."0', '/run/a\\b"c')),
    (br'{"x":"\\","cniVersion":"1.0.0"}', ("1.0.0", None)),
    (br'{"x":"\"cniVersion\":\"9\"","cniVersion":"1.0.0"}', ("1.0.0", None)),
    # "socket" keys outside ipam are ignored
    (b'{"socket":"/top","cniVersion":"1.0.0"}', ("1.0.0", None)),
    (b'{"runtimeConfig":{"socket":"/rc"},"ipam":{"type":"t"},"plugins":[{"ipam":{"socket":"/p"}}]}', (None, None)),
    (b'{"ipam":{"ranges":[[{"subnet":"10.1.2.0/24","socket":"/deep"}]],"socket":"/ok"}}', (None, "/ok")),
    (b'{"ipam":{"x":{"socket":"/nested"}}}', (None, None)),
    # cniVersion inside ipam or elsewhere is not the top-level one
    (b'{"ipam":{"cniVersion":"9.9.9","socket":"/s"}}', (None, "/s")),
    (b'{"prevResult":{"cniVersion":"0.4.0","ips":[]},"cniVersion":"1.1.0"}', ("1.1.0", None)),
    # nested objects and arrays of every kind before the keys
    (b'{"a":[1,2.5e3,-3,true,false,null,[],{},[[{"b":[{}]}]]],"b":{"c":{"d":[null]}},"cniVersion":"0.3.1"}',
     ("0.3.1", None)),
    # non-string values give None
    (b'{"cniVersion":1.0,"ipam":{"socket":5}}', (None, None)),
    (b'{"cniVersion":null,"ipam":{"socket":["/x"]}}', (None, None)),
    (b'{"cniVersion":{"v":"1"},"ipam":"ipamd"}', (None, None)),
    (b'{"ipam":[{"socket":"/x"}]}', (None, None)),
    # duplicate keys: the last one wins, like json.loads
    (b'{"cniVersion":"0.3.0","cniVersion":"1.0.0"}', ("1.0.0", None)),
    # unicode escapes and raw UTF-8
    (br'{"cniVersion":"1.0.0","ipam":{"socket":"/run/\u00e9\u0041.sock"}}', ("1.0.0", "/run/\u00e9A.sock")),
    (br'{"cni\u0056ersion":"1.0.0"}', ("1.0.0", None)),                       # escaped key
    (br'{"ipam":{"socket":"/run/\ud83d\ude00.sock"}}', (None, "/run/\U0001F600.sock")),  # surrogate pair
    ('{"ipam":{"socket":"/run/\u00e9\U0001F600.sock"}}'.encode(), (None, "/run/\u00e9\U0001F600.sock")),
    (br'{"cniVersion":"a\/b\n\t\r\b\f"}', ("a/b\n\t\r\b\f", None)),
    # not an object at the top
    (b'["cniVersion","1.0.0"]', (None, None)),
    (b'"cniVersion"', (None, None)),
    (b'5', (None, None)),
])
def test_pick(data: bytes, expected: tuple[str | None, str | None]) -> None:
    assert shim._pick(data) == expected
    # every table case is valid JSON: cross-check the reference
    obj = json.loads(data)
    if isinstance(obj, dict):
        ref_v = obj.get("cniVersion")
        ref_s = obj["ipam"].get("socket") if isinstance(obj.get("ipam"), dict) else None
        assert expected == (ref_v if isinstance(ref_v, str) else None, ref_s if isinstance(ref_s, str) else None)


@pytest.mark.parametrize("data", [
    b"", b"{", b"}", b"[", b'{"cniVersion"', b'{"cniVersion":', b'{"cniVersion":"1.0', b'{"cniVersion":"1.0.0"',
    b'{"a":[1,2', b"garbage", b"\xff\xfe\x00", b"\x00" * 10, b'{"cniVersion":"\\u12"}', b'{"cniVersion":"\\uzzzz"}',
    b'{"cniVersion":"\\', b"[" * 100_000, b'{"a":' * 50_000, b'{"ipam":{"socket":',
    b"null", b"true",
])
def test_pick_garbage_never_raises(data: bytes) -> None:
    version, sock = shim._pick(data)
    assert version is None or isinstance(version, str)
    assert sock is None or isinstance(sock, str)
    assert (version, sock) == (None, None) or data.startswith(b"{")


def reference(data: bytes) -> tuple[str | None, str | None]:
    obj = json.loads(data)
    if not isinstance(obj, dict):
        return None, None
    v = obj.get("cniVersion")
    ipam = obj.get("ipam")
    s = ipam.get("socket") if isinstance(ipam, dict) else None
    return (v if isinstance(v, str) else None), (s if isinstance(s, str) else None)


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         st.text())
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
key_names = st.one_of(st.sampled_from(["cniVersion", "ipam", "socket", "name", "type", "cni\"Version"]),
                      st.text(max_size=8))


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    top = draw(st.dictionaries(key_names, json_values, max_size=5))
    if draw(st.booleans()):
        top["cniVersion"] = draw(st.one_of(st.text(), json_values))
    if draw(st.booleans()):
        ipam = draw(st.dictionaries(key_names, json_values, max_size=4))
        if draw(st.booleans()):
            ipam["socket"] = draw(st.one_of(st.text(), json_values))
        top["ipam"] = draw(st.one_of(st.just(ipam), json_values))
    return {**top}


@settings(max_examples=300, deadline=None)
@given(configs(), st.booleans(), st.sampled_from([None, 0, 2]))
def test_pick_agrees_with_json_loads(conf: dict[str, Any], ensure_ascii: bool, indent: int | None) -> None:
    data = json.dumps(conf, ensure_ascii=ensure_ascii, indent=indent).encode()
    note("stdin: %r" % data)
    assert shim._pick(data) == reference(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_pick_never_raises_on_random_bytes(data: bytes) -> None:
    version, sock = shim._pick(data)
    assert version is None or isinstance(version, str)
    assert sock is None or isinstance(sock, str)


def test_shim_module_has_no_side_effects_on_import() -> None:
    # importing the shim (as this test does) must not run main() or touch stdin/stdout
    assert callable(shim.main) and shim.DEFAULT_SOCKET == "/run/ipamd/cni.sock"
    assert os.path.basename(shim.__file__ or "") == "ipamd_cni.py"
