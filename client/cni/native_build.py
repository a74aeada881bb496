"""Build the native plugin ``client/cni/ipamd-cni.c`` with the system C compiler (docs/cni-socket.md "Two plugins").

Used by ``setup.py`` (the package build puts the binary at ``ipamd/_bin/ipamd-cni``, so a Linux wheel carries it),
by ``deploy/Dockerfile`` (through that build) and by the tests (which rebuild it when the source is newer). Stdlib
only; loaded by file path, never imported as part of a package.

Flags: C99 with every warning an error, FORTIFY_SOURCE and the stack protector, full RELRO, linked statically as a
PIE where the toolchain can (glibc's static PIE: the plugin uses only sockets, read, write and poll, none of the NSS
functions that a static glibc cannot serve), else static, else a dynamic PIE. ``build`` says which one it made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "ipamd-cni.c"
CFLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong",
          "-fPIE"]
LDFLAGS = ["-Wl,-z,relro,-z,now", "-s"]
#: Link modes, most wanted first.
LINKS = (("static-pie", ["-static-pie"]), ("static", ["-static"]), ("dynamic-pie", ["-pie"]))
#: Extra flags of the sanitizer build the tests run
#: (tests/unit/test_plugin_scanner.py, tests/integration/test_plugins.py).
SANITIZE = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]


class BuildError(Exception):
    """No C compiler, or none of the link modes compiled; the message says what the compiler printed."""


def compiler() -> str | None:
    """The C compiler: ``$CC`` (a command name or path), else ``cc``; ``None`` when it is not there."""
    return shutil.which(os.environ.get("CC") or "cc")


def build(out: Path, source: Path = SOURCE, extra: list[str] | None = None) -> str:
    """Compile ``source`` to ``out`` (written atomically, mode 0755) and return the link mode used.

    ``extra`` (e.g. ``["-DIPAMD_CNI_TEST"]``) is added to every attempt. Raises :class:`BuildError`.
    """
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler (%s) on PATH" % (os.environ.get("CC") or "cc"))
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for mode, link in LINKS:
        fd, tmp = tempfile.mkstemp(prefix="." + out.name + ".", dir=out.parent)
        os.close(fd)
        cmd = [cc, *CFLAGS, *(extra or []), *link, *LDFLAGS, "-o", tmp, str(source)]
        p = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if p.returncode == 0:
            os.chmod(tmp, 0o755)
            os.replace(tmp, out)
            return mode
        os.unlink(tmp)
        errors.append("%s: %s" % (mode, (p.stderr or p.stdout).strip()[-600:]))
    raise BuildError("could not compile %s:\n%s" % (source, "\n".join(errors)))


def build_sanitized(out: Path, source: Path = SOURCE, extra: list[str] | None = None) -> None:
    """Compile ``source`` with AddressSanitizer and UndefinedBehaviorSanitizer (dynamic). Raises :class:`BuildError`
    where the toolchain lacks them."""
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [cc, *[f for f in CFLAGS if f not in ("-O2", "-D_FORTIFY_SOURCE=2")], *SANITIZE, *(extra or []),
           "-o", str(out), str(source)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise BuildError("sanitizer build failed: %s" % (p.stderr or p.stdout).strip()[-600:])


def ensure_built(out: Path, source: Path = SOURCE) -> Path:
    """``out``, rebuilt first when it is missing or older than ``source`` (the tests keep the editable install's
    binary current this way). Raises :class:`BuildError`."""
    if not out.exists() or out.stat().st_mtime < source.stat().st_mtime:
        build(out, source)
    return out
