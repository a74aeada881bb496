"""The Python plugin (client/ipamd_cni.py): start-up cost and its local answers, run as ``python -I -S`` on the
module. Its scanner is tested against the native one and ``json`` in test_plugin_scanner.py.

Field cases: docs/conformance.md T2 (VERSION echoes stdin's cniVersion), §2.4 (VERSION answered locally when the
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

import pytest

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
    assert answer == {"cniVersion": "0.4.0", "supportedVersions": list(shim.SUPPORTED_VERSIONS)}
    assert shim.SUPPORTED_VERSIONS == ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
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


def test_shim_module_has_no_side_effects_on_import() -> None:
    # importing the shim (as this test does) must not run main() or touch stdin/stdout
    assert callable(shim.main) and shim.DEFAULT_SOCKET == "/run/ipamd/cni.sock"
    assert os.path.basename(shim.__file__ or "") == "ipamd_cni.py"
