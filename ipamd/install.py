"""``ipamd install-cni DIR``: put the CNI plugin into a CNI bin directory (docs/cni-socket.md "Two plugins").

Two plugins speak the same protocol and pass the same conformance suite:

- **native**: ``ipamd/_bin/ipamd-cni``, compiled from ``client/cni/ipamd-cni.c`` by the package build when a C
  compiler was there; a call costs about what ``host-local`` costs (docs/benchmarks.md).
- **python**: one self-contained file: a ``/bin/sh`` header that execs ``<interpreter> -I -S`` and a loader that
  reads the shim's byte code (compiled here with that interpreter) and its source from the same file. Nothing is
  looked up beside the file, so it works when the runtime reaches it through a symlink, a hard link or a copy in
  another directory (field case B40), and the directory can be installed from a mount (a DaemonSet's init
  container).

Either is written to a temporary file in ``DIR`` and renamed over ``DIR/<name>``: a runtime calling the plugin at
that moment runs the old file or the new one, never half of one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import ipamd_cni

PLUGINS = ("native", "python")
NATIVE = Path(__file__).resolve().parent / "_bin" / "ipamd-cni"

#: The Python plugin's sh header. %(interpreter)s must not contain a quote (checked); the loader is Python inside
#: single quotes (so it has none). %(layout)s is five fixed-width hexadecimal numbers: the magic number the byte
#: code was compiled for (0: none), where the byte code is in this file and its length, where the source is and its
#: length. The loader reads the file it was started as ("$0", whatever path reached it), runs the byte code when it
#: was compiled for this interpreter and else compiles the source, then calls main(3) on the stdin moved to fd 3.
PYTHON_HEADER = """#!/bin/sh
# %(name)s: the ipamd CNI plugin, Python build, installed by `ipamd install-cni --plugin python`. Self-contained:
# the plugin's byte code and source follow this header, so any symlink, hard link or copy of this file works.
# The runtime's stdin moves to fd 3 and Python gets /dev/null: CPython refuses to start with a directory on
# stdin, and the CNI contract wants error code 5 for that case. A closed stdin stays closed (fd 3 closed too): the
# plugin answers code 5 for it as the native one does, where "3<&0" would end this shell with an error (B40).
[ -x '%(interpreter)s' ] || { printf '%%s' %(missing)s; exit 1; }
i=0; [ -d /proc/self/fd ] && ! [ -e /proc/self/fd/0 ] && i=-
exec '%(interpreter)s' -I -S -c '%(loader)s' "$0" %(layout)s "$@" 3<&$i 0</dev/null
"""

LOADER = r'''import sys,marshal,posix
p=sys.argv[1];m,a,b,c,e=(int(x,16) for x in sys.argv[2:7]);del sys.argv[1:7]
try:
 f=posix.open(p,posix.O_RDONLY)
 if b and m==int.from_bytes(sys.modules["_frozen_importlib_external"].MAGIC_NUMBER,"big"):posix.lseek(f,a,0);x=marshal.loads(posix.read(f,b))
 else:posix.lseek(f,c,0);x=compile(posix.read(f,e),p,"exec")
 posix.close(f);g={"__name__":"ipamd_cni"};exec(x,g)
except BaseException as x:
 posix.write(1,b"{\"cniVersion\":\"1.1.0\",\"code\":999,\"msg\":\"ipamd-cni: cannot load the plugin from its own file: "+x.__class__.__name__.encode()+b"\"}")
 raise SystemExit(1)
sys.exit(g["main"](3))'''
LAYOUT = "%08x %08x %08x %08x %08x"


def default_interpreter() -> str:
    """The node's system ``/usr/bin/python3`` when present (it starts faster than most others), else this Python's
    real binary (never a pyenv shim)."""
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else os.path.realpath(sys.executable)


def native_binary() -> Path | None:
    """The native plugin the package build compiled, or ``None`` (no C compiler at build time)."""
    return NATIVE if os.access(NATIVE, os.X_OK) else None


def python_plugin(interpreter: str, name: str = "ipamd-cni") -> tuple[bytes, str | None]:
    """The Python plugin's file for ``interpreter``: (contents, warning or ``None``).

    The shim's byte code is compiled by ``interpreter`` itself (so its magic number is that interpreter's), without
    docstrings (``optimize=2``: less to load on every call; the shim has no ``assert``); if that fails, the file
    carries only the source and each call compiles it (slower, still correct): the warning says so.
    Raises ``ValueError`` for an interpreter path with a quote in it.
    """
    if "'" in interpreter:
        raise ValueError("the interpreter path may not contain a quote: %r" % interpreter)
    source = Path(ipamd_cni.__file__).read_bytes()
    missing = json.dumps({"cniVersion": "1.1.0", "code": 999, "msg": "ipamd-cni: the interpreter %s is not there; "
                          "run ipamd install-cni again" % interpreter})
    compiled = subprocess.run(
        [interpreter, "-I", "-S", "-c",
         "import sys,marshal;s=sys.stdin.buffer.read();o=sys.stdout.buffer;"
         "o.write(sys.modules['_frozen_importlib_external'].MAGIC_NUMBER);"
         "o.write(marshal.dumps(compile(s,'ipamd_cni.py','exec',optimize=2)))"],
        input=source, capture_output=True, check=False)
    warning = None
    if compiled.returncode == 0 and len(compiled.stdout) > 4:
        magic, code = int.from_bytes(compiled.stdout[:4], "big"), compiled.stdout[4:]
    else:
        magic, code = 0, b""
        warning = ("could not compile the plugin with %s (each call will compile it): %s"
                   % (interpreter, compiled.stderr.decode(errors="replace").strip()[-300:]))
    fields = {"name": name, "interpreter": interpreter, "loader": LOADER, "missing": "'" + missing + "'"}
    header_len = len((PYTHON_HEADER % dict(fields, layout=LAYOUT % (0, 0, 0, 0, 0))).encode())
    layout = LAYOUT % (magic, header_len, len(code), header_len + len(code), len(source))
    header = (PYTHON_HEADER % dict(fields, layout=layout)).encode()
    if len(header) != header_len:
        raise ValueError("the plugin file is larger than its layout can say")
    return header + code + source, warning


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents 0755 whatever the umask (field case B46: the runtime executes
    what is in it as root, so no other user may write it). Each is made 0700 first, so it is never wider than
    0755 at any moment; existing directories are left as they are."""
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, left as it is
        os.chmod(d, 0o755)


def _replace(target: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``target`` (mode 0755) and rename it over ``target``."""
    fd, tmp = tempfile.mkstemp(prefix="." + target.name + ".", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install_plugin(directory: str, plugin: str | None = None, interpreter: str | None = None,
                   name: str = "ipamd-cni") -> tuple[Path, str, list[str]]:
    """Install a CNI plugin as ``<directory>/<name>``: ``(path, "native" or "python", notes)``.

    ``plugin`` ``None`` means native when the package carries the binary, else python (a note says why).
    Idempotent; atomic (temporary file + rename). Removes the ``.<name>/`` directory an earlier version installed
    beside the plugin. Raises ``ValueError`` for ``plugin="native"`` without a binary or a quote in the
    interpreter path, ``OSError`` if the directory cannot be written.
    """
    notes: list[str] = []
    native = native_binary()
    if plugin is None:
        plugin = "native" if native else "python"
        if native is None:
            notes.append("no native plugin in this installation (no C compiler when it was built): "
                         "installing the Python plugin")
    if plugin not in PLUGINS:
        raise ValueError("unknown plugin %r (choose native or python)" % plugin)
    target = Path(directory).resolve() / name
    _make_dirs(target.parent)
    if plugin == "native":
        if native is None:
            raise ValueError("no native plugin in this installation (%s is missing: the package was built "
                             "without a C compiler); use --plugin python" % NATIVE)
        _replace(target, native.read_bytes())
    else:
        interpreter = interpreter or default_interpreter()
        data, warning = python_plugin(interpreter, name)
        if warning:
            notes.append(warning)
        _replace(target, data)
        notes.append("interpreter %s" % interpreter)
    old = target.with_name("." + name)
    if (old / "ipamd_cni.py").exists():  # the earlier layout: a script plus the shim module in .<name>/
        shutil.rmtree(old, ignore_errors=True)
    return target, plugin, notes


def install_cni(argv: Sequence[str]) -> int:
    """``ipamd install-cni DIR [--plugin native|python] [--interpreter PATH] [--name NAME]``; prints which plugin
    it installed. Exit status 2 for a choice that cannot be installed, 1 when the directory cannot be written."""
    p = argparse.ArgumentParser(prog="ipamd install-cni",
                                description="Install the ipamd CNI plugin into a CNI bin directory "
                                            "(native when built, else Python; docs/cni-socket.md).")
    p.add_argument("dir", help="CNI bin directory, e.g. /opt/cni/bin")
    p.add_argument("--plugin", choices=PLUGINS, default=None,
                   help="which plugin (default: native when this installation has it, else python)")
    p.add_argument("--interpreter", default=None,
                   help="python3 the Python plugin runs with on this node (default: %s)" % default_interpreter())
    p.add_argument("--name", default="ipamd-cni", help="file name; the network config's ipam.type")
    args = p.parse_args(list(argv))
    try:
        target, plugin, notes = install_plugin(args.dir, args.plugin, args.interpreter, args.name)
    except ValueError as exc:
        print("ipamd install-cni: %s" % exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print("ipamd install-cni: cannot write %s: %s" % (args.dir, exc), file=sys.stderr)
        return 1
    print("installed %s (%s plugin%s)" % (target, plugin, "".join("; " + n for n in notes)))
    return 0
