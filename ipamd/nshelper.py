"""Sockets inside other network namespaces, made by a helper process (docs/namespace-checks.md "How it looks").

A socket belongs to the namespace it was created in, for good; so to read a pod's links or send its gateway an
echo, the daemon needs a socket created inside the pod's namespace. Creating one means ``setns``, which moves only
the calling thread, and the daemon is multi-threaded: every later request served by that thread would run in the
pod's namespace. ``fork`` from the daemon (what ``pyroute2.netns.create_socket`` does) is no way out either: the
child of a multi-threaded process may inherit locks held by other threads, and here it died with SIGSEGV now and
then. So the daemon starts one small helper, a separate single-threaded Python process (``fork`` + ``exec`` by
``subprocess``, stdlib only), and asks it:

    request:  one SOCK_SEQPACKET message "!iii" (family, type, proto) carrying the namespace's fd (SCM_RIGHTS)
    answer:   b"\\0" carrying the new socket's fd, or b"\\1" + "!i" errno + the error text

The helper enters the namespace, creates the socket, returns to its own namespace (or exits if it cannot) and
sends the socket back. It serves one request at a time (each takes well under a millisecond) and exits when the
daemon closes its end. :class:`NamespaceSockets` is the daemon's side: started on first use, replaced when it dies
or does not answer. This file is also the helper's program (run by path, ``python -I -S``), so it imports only the
standard library.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import threading

CLONE_NEWNET = 0x40000000
_REQUEST = struct.Struct("!iii")
_ERROR = struct.Struct("!i")


class NamespaceSocketError(OSError):
    """The helper could not make the socket (``errno`` from ``setns``/``socket``) or did not answer."""


class NamespaceSockets:
    """The daemon's side of the helper. Thread-safe (one request at a time, under a lock); the helper process is
    started on first use with this interpreter and stopped by :meth:`close` (or when this process exits: it
    reads EOF). ``timeout`` is how long one answer may take, in seconds."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._chan: socket.socket | None = None

    def socket_in(self, netns_fd: int, family: int, kind: int, proto: int = 0,
                  timeout: float | None = None) -> socket.socket:
        """A new socket ``(family, kind, proto)`` created inside the network namespace open at ``netns_fd``.

        Raises :class:`NamespaceSocketError` with the errno of the failure (``EINVAL``: the fd is not a network
        namespace; ``EPERM``: not allowed to enter it), or ``ETIMEDOUT``/``EPIPE`` when the helper did not answer
        within ``timeout`` seconds (the helper is then replaced)."""
        wait = self.timeout if timeout is None else max(0.05, timeout)
        with self._lock:
            chan = self._channel()
            chan.settimeout(wait)
            try:
                socket.send_fds(chan, [_REQUEST.pack(family, kind, proto)], [netns_fd])
                data, fds, _flags, _addr = socket.recv_fds(chan, 4096, 1)
            except TimeoutError:
                self._stop()
                raise NamespaceSocketError(errno.ETIMEDOUT, "namespace helper did not answer within %.1f s"
                                           % wait) from None
            except OSError as exc:
                self._stop()
                raise NamespaceSocketError(errno.EPIPE, "namespace helper failed: %s" % exc) from None
            if not data:
                self._stop()
                raise NamespaceSocketError(errno.EPIPE, "namespace helper exited")
        if data[:1] == b"\0" and len(fds) == 1:
            return socket.socket(fileno=fds[0])
        for fd in fds:
            os.close(fd)
        code = _ERROR.unpack(data[1:5])[0] if len(data) >= 5 else 0
        raise NamespaceSocketError(code, data[5:].decode("utf-8", "replace") or os.strerror(code))

    def _channel(self) -> socket.socket:
        if self._proc is not None and self._proc.poll() is None and self._chan is not None:
            return self._chan
        self._stop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen([sys.executable, "-I", "-S", os.path.abspath(__file__)],
                                          stdin=theirs.fileno(), stdout=subprocess.DEVNULL, close_fds=True)
        finally:
            theirs.close()
        self._chan = ours
        return ours

    def _stop(self) -> None:
        """Close our end (the helper exits on EOF) and reap it; kill it, by its PID, if it does not go."""
        if self._chan is not None:
            self._chan.close()
            self._chan = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def close(self) -> None:
        """Stop the helper (idempotent)."""
        with self._lock:
            self._stop()


def _serve(chan: socket.socket) -> int:
    """The helper's loop (runs in the helper process): answer each request until EOF."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    while True:
        try:
            data, fds, _flags, _addr = socket.recv_fds(chan, 64, 1)
        except OSError:
            return 1
        if not data:
            return 0
        try:
            if len(data) != _REQUEST.size or len(fds) != 1:
                raise OSError(errno.EBADMSG, "malformed request")
            family, kind, proto = _REQUEST.unpack(data)
            if libc.setns(fds[0], CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, "setns: %s" % os.strerror(code))
            try:
                made = socket.socket(family, kind, proto)
            finally:
                if libc.setns(home, CLONE_NEWNET) != 0:
                    os._exit(3)  # never serve another request from a pod's namespace
            try:
                socket.send_fds(chan, [b"\0"], [made.fileno()])
            finally:
                made.close()
        except OSError as exc:
            text = (exc.strerror or str(exc)).encode("utf-8", "replace")[:1000]
            try:
                chan.send(b"\1" + _ERROR.pack(exc.errno or 0) + text)
            except OSError:
                return 1
        finally:
            for fd in fds:
                os.close(fd)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when the helper ends (it closes the channel)
    sys.exit(_serve(socket.socket(fileno=0)))
