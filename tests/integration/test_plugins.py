"""The installed plugins (``ipamd install-cni``, ipamd/install.py) against a real daemon: field case B40 (the runtime
reaches the plugin through a symlink, a hard link or a copy in another directory) for both plugins, and what
install-cni promises: which plugin it installs and says so, atomic and idempotent replacement, the earlier layout
cleaned up, and the Python plugin's fallbacks (source compiled when the byte code is for another interpreter, a
JSON error when the interpreter is gone).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import _tmpdir, cni_config, native_plugin

import ipamd.install

ENV = {"CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_NETNS": "/var/run/netns/x", "CNI_PATH": "/opt/cni/bin"}


@pytest.fixture
def bindirs() -> Iterator[Path]:
    d = Path(_tmpdir("ipamd-b40-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def install(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ipamd", "install-cni", str(directory), *args],
                          capture_output=True, text=True, timeout=60)


def call(path: str | Path, command: str, stdin: bytes, sock: str, cwd: str | None = None,
         **env: str) -> subprocess.CompletedProcess[bytes]:
    e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command, "IPAMD_CNI_SOCKET": sock, **ENV, **env}
    return subprocess.run([str(path)], input=stdin, capture_output=True, env=e, timeout=60, cwd=cwd)


def links(bindirs: Path, plugin: str) -> dict[str, Path]:
    """B40's repro: D1 installed, D2 a symlink to it, D3 a hard link, D4 a copy; each in its own directory."""
    out = install(bindirs / "d1", "--plugin", plugin)
    assert out.returncode == 0, out
    original = bindirs / "d1" / "ipamd-cni"
    paths = {"installed": original}
    for kind in ("symlink", "hardlink", "copy"):
        d = bindirs / kind
        d.mkdir()
        paths[kind] = d / "ipamd-cni"
    os.symlink(original, paths["symlink"])
    os.link(original, paths["hardlink"])
    shutil.copy2(original, paths["copy"])
    return paths


@pytest.mark.both_plugins
def test_b40_plugin_through_symlink_hard_link_and_copy(daemons: Any, bindirs: Path, plugin: str) -> None:
    """B40: VERSION, ADD and DEL behave the same through every path (and from a relative path); a failure is one
    CNI JSON object, never a traceback."""
    d = daemons("A")
    conf = json.dumps(cni_config("b40", subnet="10.40.0.0/24")).encode()
    paths = links(bindirs, plugin)
    for i, (kind, path) in enumerate(paths.items()):
        version = call(path, "VERSION", b'{"cniVersion":"0.4.0"}', d.cni_socket)
        assert version.returncode == 0 and json.loads(version.stdout)["cniVersion"] == "0.4.0", (kind, version)
        add = call(path, "ADD", conf, d.cni_socket, CNI_CONTAINERID="b40-%d" % i)
        assert add.returncode == 0, (kind, add)
        assert [ip["address"] for ip in json.loads(add.stdout)["ips"]] == ["10.40.0.2/24"], kind  # DEL frees it
        rm = call(path, "DEL", conf, d.cni_socket, CNI_CONTAINERID="b40-%d" % i)
        assert (rm.returncode, rm.stdout, b"Traceback" in rm.stderr) == (0, b"", False), (kind, rm)
    relative = call("./ipamd-cni", "VERSION", b"", d.cni_socket, cwd=str(paths["symlink"].parent))
    assert relative.returncode == 0 and json.loads(relative.stdout)["cniVersion"] == "1.1.0", relative
    # the copy and the hard link do not need the original any more
    shutil.rmtree(bindirs / "d1")
    for kind in ("hardlink", "copy"):
        down = call(paths[kind], "ADD", conf, str(bindirs / "none.sock"), CNI_CONTAINERID="b40-x")
        err = json.loads(down.stdout)
        assert down.returncode == 1 and err["code"] == 11 and "none.sock" in err["msg"], (kind, down)
        assert b"Traceback" not in down.stderr


def test_install_cni_says_which_plugin_and_replaces_atomically(bindirs: Path) -> None:
    """Default: native when this installation has it; --plugin chooses; each install replaces the file by a
    rename (no temporary file left, hard links to the old file keep the old contents)."""
    native = native_plugin()[0] is not None
    out = install(bindirs)
    assert out.returncode == 0, out
    target = bindirs / "ipamd-cni"
    assert out.stdout.strip().startswith("installed %s (%s plugin" % (target, "native" if native else "python"))
    os.link(target, bindirs / "old")
    out = install(bindirs, "--plugin", "python", "--interpreter", sys.executable)
    assert out.returncode == 0 and "(python plugin; interpreter %s)" % sys.executable in out.stdout, out
    assert target.read_bytes().startswith(b"#!/bin/sh\n")
    assert (bindirs / "old").read_bytes() != target.read_bytes() or not native
    again = install(bindirs, "--plugin", "python", "--interpreter", sys.executable)
    assert again.returncode == 0 and again.stdout == out.stdout
    assert sorted(p.name for p in bindirs.iterdir()) == ["ipamd-cni", "old"]
    assert os.access(target, os.X_OK)
    if native:
        out = install(bindirs, "--plugin", "native")
        assert out.returncode == 0 and "(native plugin)" in out.stdout, out
        assert target.read_bytes()[:4] == b"\x7fELF"


def test_install_cni_native_without_a_binary_is_refused(bindirs: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A build without a C compiler has no native plugin: the default falls back to Python and says so;
    --plugin native is refused (exit 2) naming the missing file."""
    monkeypatch.setattr(ipamd.install, "NATIVE", bindirs / "no-such-binary")
    assert ipamd.install.install_cni([str(bindirs / "a"), "--plugin", "native"]) == 2
    assert "no-such-binary" in capsys.readouterr().err
    assert not (bindirs / "a" / "ipamd-cni").exists()
    assert ipamd.install.install_cni([str(bindirs / "b"), "--interpreter", sys.executable]) == 0
    said = capsys.readouterr().out
    assert "(python plugin; no native plugin in this installation" in said, said


def test_install_cni_removes_the_earlier_layout(bindirs: Path) -> None:
    old = bindirs / ".ipamd-cni"
    old.mkdir()
    (old / "ipamd_cni.py").write_text("# the shim module of the earlier script+directory layout\n")
    assert install(bindirs, "--plugin", "python").returncode == 0
    assert not old.exists()


def test_python_plugin_falls_back_to_its_source(daemons: Any, bindirs: Path) -> None:
    """Byte code compiled for another interpreter (its magic number differs) is not run: the source that travels
    in the same file is compiled instead, and the call works."""
    d = daemons("A")
    assert install(bindirs, "--plugin", "python").returncode == 0
    path = bindirs / "ipamd-cni"
    data = path.read_bytes()
    layout = re.search(rb'"\$0" ([0-9a-f]{8}) ', data)
    assert layout and int(layout.group(1), 16) != 0, data[:2000]
    path.write_bytes(data[:layout.start(1)] + b"00000001" + data[layout.end(1):])  # another interpreter's
    out = call(path, "VERSION", b'{"cniVersion":"1.0.0"}', d.cni_socket)
    assert out.returncode == 0 and json.loads(out.stdout)["cniVersion"] == "1.0.0", out
    add = call(path, "ADD", json.dumps(cni_config("src", subnet="10.41.0.0/24")).encode(), d.cni_socket)
    assert add.returncode == 0 and json.loads(add.stdout)["ips"][0]["address"] == "10.41.0.2/24", add
    assert call(path, "DEL", json.dumps(cni_config("src", subnet="10.41.0.0/24")).encode(),
                d.cni_socket).returncode == 0


def test_python_plugin_without_its_interpreter_answers_json(bindirs: Path) -> None:
    """The interpreter named at install time is gone (e.g. removed by an upgrade): one CNI error object on stdout
    naming it, exit 1, nothing from a shell; a damaged file also ends in one JSON object."""
    missing = bindirs / "python-gone"
    shutil.copy2(os.path.realpath(sys.executable), missing)
    assert install(bindirs, "--plugin", "python", "--interpreter", str(missing)).returncode == 0
    missing.unlink()
    out = call(bindirs / "ipamd-cni", "VERSION", b"", "/none")
    err = json.loads(out.stdout)
    assert out.returncode == 1 and err["code"] == 999 and str(missing) in err["msg"], out
    assert install(bindirs, "--plugin", "python").returncode == 0
    path = bindirs / "ipamd-cni"
    path.write_bytes(path.read_bytes()[:3000])  # cut inside the byte code
    out = call(path, "VERSION", b"", "/none")
    err = json.loads(out.stdout)
    assert out.returncode == 1 and err["code"] == 999 and "cannot load the plugin" in err["msg"], out
    assert out.stderr == b""


@pytest.mark.both_plugins
def test_b40_closed_stdin_is_a_json_error_never_a_shell_error(daemons: Any, bindirs: Path, plugin: str) -> None:
    """Field case B40's rule for both plugins alike ("any failure is one CNI JSON error on stdout; VERSION never
    fails"), with the runtime's stdin closed instead of a pipe: the Python plugin's sh header died on ``3<&0``
    (exit 2, empty stdout, "Bad file descriptor" from the shell) while the native one answered. Now VERSION succeeds
    and ADD is code 5 (I/O error reading stdin) with nothing written, through the installed file and a symlink."""
    d = daemons("A")
    paths = links(bindirs, plugin)
    for kind in ("installed", "symlink"):
        e = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "IPAMD_CNI_SOCKET": d.cni_socket, **ENV}
        version = subprocess.run([str(paths[kind])], stdin=None, capture_output=True, timeout=60,
                                 env={**e, "CNI_COMMAND": "VERSION"}, preexec_fn=lambda: os.close(0))
        assert version.returncode == 0, (kind, version)
        assert "1.1.0" in json.loads(version.stdout)["supportedVersions"], (kind, version)
        add = subprocess.run([str(paths[kind])], stdin=None, capture_output=True, timeout=60,
                             env={**e, "CNI_COMMAND": "ADD"}, preexec_fn=lambda: os.close(0))
        assert add.returncode != 0 and json.loads(add.stdout)["code"] == 5, (kind, add)
    from harness import handle_ids
    assert handle_ids(d) == set()
