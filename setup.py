"""Build hook: generate the gRPC stubs (ipamd/v1/*_pb2*.py) from proto/ before building.

The stubs are never committed (.gitignore) and never hand-edited; tests/unit/test_proto_stubs.py regenerates them
and compares, so they cannot drift from proto/.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def generate_stubs(out_dir: Path = ROOT) -> list[Path]:
    """Run protoc (grpcio-tools) on proto/ipamd/v1/*.proto; outputs land in out_dir/ipamd/v1/."""
    from grpc_tools import protoc
    import grpc_tools

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


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        generate_stubs()
        super().run()


# Also at import: setuptools checks that every listed package directory exists before build_py runs.
generate_stubs()
setup(cmdclass={"build_py": BuildPyWithStubs})
