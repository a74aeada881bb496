"""The gRPC stubs in ipamd/v1/ are generated from proto/ by the build and never committed (docs/DEVELOPING.md;
house style "committed generated stubs rot against new protobuf runtimes: generate from proto/ in the build").

Regenerates them with grpc_tools.protoc into a temporary directory exactly as setup.py's ``generate_stubs`` does and
compares the bytes, so the stubs in the tree cannot drift from proto/.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
STUBS = ROOT / "ipamd" / "v1"


def generate(out_dir: Path) -> list[Path]:
    """setup.generate_stubs, minus the import of setup.py (which would run setup())."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO)) for p in PROTO.rglob("*.proto"))
    assert protos, "no .proto files under proto/"
    args = ["protoc", "-I%s" % PROTO, "-I%s" % include, "--python_out=%s" % out_dir, "--pyi_out=%s" % out_dir,
            "--grpc_python_out=%s" % out_dir, *protos]
    assert protoc.main(args) == 0, "protoc failed on %s" % protos
    return sorted((out_dir / "ipamd" / "v1").glob("*_pb2*.py*"))


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("stubs")
    generate(out)
    yield out / "ipamd" / "v1"
    shutil.rmtree(out, ignore_errors=True)


def test_stubs_exist() -> None:
    names = {p.name for p in STUBS.glob("*_pb2*.py*")}
    assert {"ipam_pb2.py", "ipam_pb2_grpc.py", "ipam_pb2.pyi"} <= names, sorted(names)


def test_regenerated_file_set_matches(regenerated: Path) -> None:
    assert sorted(p.name for p in regenerated.glob("*_pb2*.py*")) == sorted(p.name for p in STUBS.glob("*_pb2*.py*"))


@pytest.mark.parametrize("name", ["ipam_pb2.py", "ipam_pb2_grpc.py", "ipam_pb2.pyi"])
def test_no_drift(regenerated: Path, name: str) -> None:
    assert (regenerated / name).read_bytes() == (STUBS / name).read_bytes(), (
        "ipamd/v1/%s differs from what proto/ generates: rebuild (pip install -e .)" % name)


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30)


def test_stubs_not_committed() -> None:
    listed = git("ls-files", "ipamd/v1")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == "", "generated stubs are committed: %s" % listed.stdout


@pytest.mark.parametrize("name", ["ipam_pb2.py", "ipam_pb2_grpc.py", "ipam_pb2.pyi"])
def test_stubs_are_git_ignored(name: str) -> None:
    path = "ipamd/v1/%s" % name
    ignored = git("check-ignore", "-q", "--no-index", path)
    assert ignored.returncode == 0, "%s is not covered by .gitignore" % path


def test_gitignore_names_the_stub_directory() -> None:
    lines = [line.strip() for line in (ROOT / ".gitignore").read_text().splitlines()]
    assert any(line.rstrip("/") in ("ipamd/v1", "/ipamd/v1") or "_pb2" in line for line in lines), lines
