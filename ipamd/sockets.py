"""The daemon's unix sockets, made safely whatever the umask (field case B46; docs/operations.md "Local access").

One shape for the CNI and the gRPC socket:

1. :func:`claim` — the directories of the path that do not exist are created owner-only (0700, or 0750 for a
   configured group); a lock file beside the socket (``<path>.lock``, ``flock``) is taken for the daemon's life,
   so a second daemon on the same path stops here, exit status non-zero, before it touches anything. A socket at
   the path that still answers is live (a daemon of a version without the lock): refused too. A symlink or any
   non-socket at the path is refused and left as it is. A socket nobody answers on is stale: it will be replaced.
2. :meth:`Claim.bind` — the socket is bound under a temporary name in the same directory (the daemon's umask is
   0077, so it is owner-only from its first moment), given its mode (0600, or 0660 and the group) and owner, and
   only then renamed onto the path: there is no moment at which the path names a socket wider than configured,
   and the stale one is replaced atomically.
3. :meth:`Claim.release` — the path is removed on a clean stop, only if it is still the socket this daemon made.

Errors are :class:`SocketError` with a message naming the path and what to do.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import stat
import zlib
from collections.abc import Callable

log = logging.getLogger(__name__)

#: The daemon's umask: nothing it creates is ever readable or writable by others unless it says so.
UMASK = 0o077


class SocketError(OSError):
    """A socket path cannot be used: in use by a live daemon, a symlink or a non-socket, or not creatable."""


def _mode(gid: int | None) -> tuple[int, int]:
    """(socket mode, directory mode) for owner-only or owner-and-group access."""
    return (0o660, 0o750) if gid is not None else (0o600, 0o700)


def make_dirs(directory: str, gid: int | None) -> list[str]:
    """Create ``directory`` and its missing parents owner-only (0700), or 0750 with group ``gid``; returns the
    directories created. Existing directories are left as they are. ``mkdir`` asks for 0700, so the umask can only
    narrow it, and the group's access is added after the group is set: never wider than configured. Idempotent."""
    _, dir_mode = _mode(gid)
    missing = []
    d = os.path.abspath(directory)
    while not os.path.lexists(d):
        missing.append(d)
        d = os.path.dirname(d)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs, left alone
        if gid is not None:
            os.chown(d, -1, gid)
        os.chmod(d, dir_mode)
    return missing


class Claim:
    """The right to serve one socket path, held until :meth:`close`. Made by :func:`claim`."""

    def __init__(self, path: str, gid: int | None, lock_fd: int) -> None:
        self.path = path
        self.gid = gid
        self._lock_fd = lock_fd
        self._ino: int | None = None

    def temp_path(self) -> str:
        """Where the socket is bound before it is renamed onto :attr:`path` (same directory, hidden name)."""
        directory, name = os.path.split(self.path)
        # short and fixed-length, so it fits the 107-byte limit whenever the path itself does (almost always)
        return os.path.join(directory, ".%08x" % zlib.crc32(("%d/%s" % (os.getpid(), name)).encode()))

    def bind(self, bind_at: Callable[[str], None]) -> None:
        """Call ``bind_at(temp)`` to create the socket at a temporary path, set its mode and group, and rename it
        onto :attr:`path` (replacing a stale socket atomically). Raises :class:`SocketError`."""
        temp = self.temp_path()
        mode, _ = _mode(self.gid)
        try:
            if os.path.lexists(temp):
                if not stat.S_ISSOCK(os.lstat(temp).st_mode):
                    raise SocketError(errno.EEXIST, "%s exists and is not a socket; refusing to replace it" % temp)
                os.unlink(temp)  # named after our pid and path: a leftover of an earlier process
            bind_at(temp)
            if self.gid is not None:
                os.chown(temp, -1, self.gid)
            os.chmod(temp, mode)
            _check_replaceable(self.path)  # still nothing but a stale socket there (never replace anything else)
            os.rename(temp, self.path)
            self._ino = os.lstat(self.path).st_ino
        except OSError as exc:
            try:
                os.unlink(temp)
            except OSError:
                pass
            if isinstance(exc, SocketError):
                raise
            raise SocketError(exc.errno, "cannot create socket %s: %s" % (self.path, exc.strerror or exc)) from exc

    def release(self) -> None:
        """Remove the socket if the path still names the one this claim made; then drop the lock. Idempotent."""
        if self._ino is not None:
            try:
                if os.lstat(self.path).st_ino == self._ino:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass
            self._ino = None
        self.close()

    def close(self) -> None:
        """Drop the lock (the lock file stays: removing it would let two daemons lock two different files)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _check_replaceable(path: str) -> None:
    """Raise :class:`SocketError` unless ``path`` is absent or a socket nobody answers on."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise SocketError(errno.EEXIST, "%s is a symbolic link (to %s); refusing to use it: remove it or choose "
                          "another socket path" % (path, os.readlink(path)))
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketError(errno.EEXIST, "%s exists and is not a socket; refusing to replace it: remove it or "
                          "choose another socket path" % path)
    if _answers(path):
        raise SocketError(errno.EADDRINUSE, "%s is served by another live process (is another ipamd running?); "
                          "leaving it alone" % path)


def _answers(path: str) -> bool:
    """Whether something accepts connections on the unix socket at ``path`` (a full backlog counts as live)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
        return True
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        return exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ETIMEDOUT) or isinstance(exc, TimeoutError)
    finally:
        probe.close()


def claim(path: str, gid: int | None = None) -> Claim:
    """Take ``path`` for this daemon (step 1 of the module docstring). Raises :class:`SocketError` when another
    daemon holds it, when something other than a stale socket is there, or when its directory cannot be made."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        for d in make_dirs(directory, gid):
            log.info("created %s (mode %04o)", d, _mode(gid)[1])
    except OSError as exc:
        raise SocketError(exc.errno, "cannot create the directory of socket %s: %s"
                          % (path, exc.strerror or exc)) from exc
    lock_path = path + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SocketError(exc.errno, "cannot open the lock file %s: %s" % (lock_path, exc.strerror or exc)) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SocketError(errno.EEXIST, "%s is not a regular file; refusing to use it as a lock" % lock_path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SocketError(errno.EADDRINUSE, "%s is held by another ipamd (lock %s); leaving it alone"
                              % (path, lock_path)) from None
        _check_replaceable(path)
    except BaseException:
        os.close(fd)
        raise
    return Claim(path, gid, fd)
