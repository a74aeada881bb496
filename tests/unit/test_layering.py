"""Imports point one way (docs/architecture.md "Layers", docs/DEVELOPING.md "House style").

Parses every module with ``ast`` (nothing is imported): domain is pure stdlib, only the etcd store imports
``pyetcd``, the service never imports the etcd store, the shim imports only ``_socket``, ``posix``, ``sys`` and
``time``. The shim module ``ipamd_cni`` is also the plugin protocol's one Python home (docs/cni-socket.md): the
domain and the CNI server import its constants, which keeps it stdlib-only for them too. Imports inside functions
count too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "ipamd"
SHIM = ROOT / "client" / "ipamd_cni.py"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Absolute dotted names imported by ``path`` (relative imports resolved; ``from a import b`` gives ``a`` and
    ``a.b``, since ``b`` may be a module)."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out.update("%s.%s" % (base, alias.name) for alias in node.names if alias.name != "*")
    out.discard("")
    return out


def python_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "v1" not in p.relative_to(PKG).parts[:1])


DOMAIN = sorted((PKG / "domain").glob("*.py"))
ALL = python_files(PKG)


def test_import_resolution_helper() -> None:
    # guard the helper itself on known facts of the tree
    assert "ipamd.domain.errors" in imports_of(PKG / "domain" / "addr.py")
    assert "ipamd.store.base" in imports_of(PKG / "service.py")
    assert "ipamd.domain.errors" in imports_of(PKG / "store" / "base.py")
    assert "pyetcd" in imports_of(PKG / "store" / "etcd.py")


def test_domain_modules_exist() -> None:
    assert {p.name for p in DOMAIN} >= {"addr.py", "netconf.py", "cni.py", "errors.py", "model.py"}


@pytest.mark.parametrize("path", DOMAIN, ids=lambda p: p.name)
def test_domain_imports_only_stdlib_and_domain(path: Path) -> None:
    bad = []
    for name in imports_of(path):
        top = name.split(".")[0]
        if top == "__future__" or top in sys.stdlib_module_names:
            continue
        if name == "ipamd.domain" or name.startswith("ipamd.domain."):
            continue
        if name == "ipamd_cni" or name.startswith("ipamd_cni."):  # the protocol's home, built-ins only (below)
            continue
        bad.append(name)
    assert not bad, "%s imports %s" % (path.relative_to(ROOT), sorted(bad))


@pytest.mark.parametrize("path", DOMAIN, ids=lambda p: p.name)
def test_domain_forbidden_imports(path: Path) -> None:
    names = imports_of(path)
    for forbidden in ("grpc", "pyetcd", "prometheus_client", "ipamd.store", "ipamd.service", "ipamd.v1"):
        assert not any(n == forbidden or n.startswith(forbidden + ".") for n in names), (path.name, forbidden)


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_etcd_store_imports_pyetcd(path: Path) -> None:
    uses = any(n == "pyetcd" or n.startswith("pyetcd.") for n in imports_of(path))
    assert uses == (path == PKG / "store" / "etcd.py")


def test_client_does_not_import_pyetcd() -> None:
    for path in sorted((ROOT / "client").rglob("*.py")):
        assert not any(n.split(".")[0] == "pyetcd" for n in imports_of(path)), path


def test_service_does_not_import_the_etcd_store() -> None:
    names = imports_of(PKG / "service.py")
    assert "ipamd.store.etcd" not in names
    assert not any(n.startswith("ipamd.store.etcd.") for n in names)
    assert not any(n.split(".")[0] in ("pyetcd", "grpc") for n in names)


def test_store_contract_is_pure() -> None:
    names = imports_of(PKG / "store" / "base.py")
    assert all(n.split(".")[0] in sys.stdlib_module_names | {"__future__"} or n.startswith("ipamd.domain")
               for n in names), sorted(names)


def test_shim_imports_only_builtins() -> None:
    names = imports_of(SHIM)
    assert names <= {"_socket", "posix", "sys", "time"}, sorted(names)
    assert not any(n.startswith("ipamd") for n in names)


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_kube_module_imports_the_kubernetes_client(path: Path) -> None:
    # issue 8 item 6: one module imports the Kubernetes client (and its transport) and translates its errors
    uses = any(n.split(".")[0] in ("kubernetes", "urllib3") for n in imports_of(path))
    assert uses == (path == PKG / "kube.py")


def test_kube_module_is_an_adapter() -> None:
    # nothing below the adapters may depend on Kubernetes mode (docs/architecture.md "Layers")
    for path in ALL:
        if path.name in ("kube.py", "__main__.py"):
            continue
        assert "ipamd.kube" not in imports_of(path), path


def test_the_daemon_never_imports_its_testing_tools() -> None:
    """ipamd.testing (history checker, fault proxy) is for tests and benchmarks only."""
    for path in ALL:
        if "testing" in path.relative_to(PKG).parts[:1]:
            continue
        names = imports_of(path)
        assert not any(n == "ipamd.testing" or n.startswith("ipamd.testing.") for n in names), path


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_netns_module_imports_pyroute2(path: Path) -> None:
    """docs/namespace-checks.md: namespace work goes through ipamd/netns.py (pyroute2's helper processes), so no
    other module can enter a namespace from a daemon thread, and the domain, the service and the plugin stay free
    of pyroute2 (its import alone costs more than a CNI call)."""
    uses = any(n == "pyroute2" or n.startswith("pyroute2.") for n in imports_of(path))
    assert uses == (path == PKG / "netns.py")


def test_client_does_not_import_pyroute2() -> None:
    for path in [SHIM, *sorted((ROOT / "client").rglob("*.py"))]:
        assert not any(n.split(".")[0] == "pyroute2" for n in imports_of(path)), path
