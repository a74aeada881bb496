"""Build hook: generate the gRPC stubs (ipamd/v1/*_pb2*.py) from proto/, and compile the native CNI plugin
(client/cni/ipamd-cni.c -> ipamd/_bin/ipamd-cni) when a C compiler is present, before building.

The stubs are never committed (.gitignore) and never hand-edited; tests/unit/test_proto_stubs.py regenerates them
and compares, so they cannot drift from proto/. The native plugin is optional: without a compiler (or with
IPAMD_BUILD_NATIVE=0) the build says so and `ipamd install-cni` installs the Python plugin (docs/cni-socket.md).
A wheel that carries the binary is tagged for this platform; one without it stays pure Python.
"""

import importlib.util
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def generate_stubs(out_dir: Path = ROOT) -> list[Path]:
    """Run protoc (grpcio-tools) on proto/ipamd/v1/*.proto; outputs land in out_dir/ipamd/v1/."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    (out_dir / "ipamd" / "v1").mkdir(parents=True, exist_ok=True)
    args = ["protoc", "-I%s" % (ROOT / "proto"), "-I%s" % include,
            "--python_out=%s" % out_dir, "--pyi_out=%s" % out_dir, "--grpc_python_out=%s" % out_dir, *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on %s" % protos)
    init = out_dir / "ipamd" / "v1" / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC stubs of proto/ipamd/v1 (made by the build; do not edit)."""\n')
    return sorted((out_dir / "ipamd" / "v1").glob("*_pb2*.py"))


NATIVE = ROOT / "ipamd" / "_bin" / "ipamd-cni"


def build_native() -> bool:
    """Compile the native plugin into ipamd/_bin/ (client/cni/native_build.py); False, with a note on stderr, when
    there is no compiler or it fails: the Python plugin is then the one installed."""
    if os.environ.get("IPAMD_BUILD_NATIVE", "1") == "0":
        print("ipamd build: IPAMD_BUILD_NATIVE=0: native ipamd-cni not built; falling back to the Python plugin",
              file=sys.stderr)
        NATIVE.unlink(missing_ok=True)
        return False
    spec = importlib.util.spec_from_file_location("native_build", ROOT / "client" / "cni" / "native_build.py")
    assert spec is not None and spec.loader is not None
    native_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(native_build)
    try:
        mode = native_build.build(NATIVE)
    except native_build.BuildError as exc:
        print("ipamd build: native ipamd-cni not built (%s); falling back to the Python plugin" % exc,
              file=sys.stderr)
        NATIVE.unlink(missing_ok=True)
        return False
    print("ipamd build: native ipamd-cni built (%s) at %s" % (mode, NATIVE), file=sys.stderr)
    return True


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


cmdclass = {"build_py": BuildPyWithStubs}
try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70
    from wheel.bdist_wheel import bdist_wheel  # type: ignore[no-redef]


class PlatformWheel(bdist_wheel):  # type: ignore[misc,valid-type]
    """A wheel with the native binary in it is for this platform only (py3-none-<platform>)."""

    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = not NATIVE.exists()

    def get_tag(self) -> tuple[str, str, str]:
        python, abi, plat = super().get_tag()
        return ("py3", "none", plat) if NATIVE.exists() else (python, abi, plat)


cmdclass["bdist_wheel"] = PlatformWheel

# Also at import: setuptools checks that every listed package directory exists before build_py runs, and an
# editable install runs no build_py at all (the binary then lives in the source tree's ipamd/_bin/).
generate_stubs()
build_native()
setup(cmdclass=cmdclass)
