"""ipamd-cni: the CNI IPAM plugin. Forwards one CNI call to the node's ipamd over a unix socket.

Imports only modules built into the interpreter (``_socket``, ``posix``, ``sys``; not even ``os``, which costs ~1 ms)
so that one call costs about as much as starting Python (design.md §1). It reads ``CNI_*`` and all of stdin, sends them unchanged (framing v1,
docs/cni-socket.md), writes the daemon's stdout/stderr and exits with its status. It parses nothing except, when
present, ``ipam.socket`` (which socket to use) and ``cniVersion`` (for its own error object).

Socket path: the network configuration's ``ipam.socket``, else ``IPAMD_CNI_SOCKET``, else ``/run/ipamd/cni.sock``.
Deadline: ``IPAMD_CNI_TIMEOUT`` seconds (default 30). If the daemon cannot be reached: a code-11 error naming the
socket (code 50 for STATUS; VERSION is answered locally instead, so a runtime's version probe never fails).
"""

import _socket
import posix
import sys

MAGIC = b"IPAMD1\n"
DEFAULT_SOCKET = "/run/ipamd/cni.sock"
MAX_STDIN = (4 << 20) - (64 << 10)  # the daemon's request limit (4 MiB) less room for the environment
SUPPORTED = '["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]'


class _Scan:
    """Just enough of a JSON scanner to pick two strings out of the config (no ``json`` import: ~20 ms)."""

    def __init__(self, data):
        self.s = data
        self.i = 0

    def ws(self):
        s, i = self.s, self.i
        while i < len(s) and s[i] in b" \t\r\n":
            i += 1
        self.i = i

    def string(self):
        s, i = self.s, self.i + 1
        out = bytearray()
        while True:
            c = s[i]
            if c == 0x22:
                self.i = i + 1
                return out.decode("utf-8", "replace")
            if c == 0x5C:
                nxt = s[i + 1]
                if nxt == 0x75:  # \uXXXX, joining a UTF-16 surrogate pair into one character
                    code = int(s[i + 2:i + 6], 16)
                    i += 6
                    if 0xD800 <= code < 0xDC00 and s[i:i + 2] == b"\\u":
                        low = int(s[i + 2:i + 6], 16)
                        if 0xDC00 <= low < 0xE000:
                            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                            i += 6
                    out += chr(code).encode("utf-8", "surrogatepass")
                    continue
                out.append({0x6E: 10, 0x74: 9, 0x72: 13, 0x62: 8, 0x66: 12}.get(nxt, nxt))
                i += 2
                continue
            out.append(c)
            i += 1

    def value(self, want=None):
        """Parse one value; for objects, return {key: str} of the string members named in ``want``."""
        self.ws()
        c = self.s[self.i]
        if c == 0x22:
            return self.string()
        if c == 0x7B:
            found = {}
            self.i += 1
            self.ws()
            if self.s[self.i] == 0x7D:
                self.i += 1
                return found
            while True:
                self.ws()
                key = self.string()
                self.ws()
                self.i += 1  # ':'
                sub = want.get(key) if want else None
                v = self.value(sub if isinstance(sub, dict) else None)
                if want and key in want:
                    found[key] = v
                self.ws()
                c = self.s[self.i]
                self.i += 1
                if c == 0x7D:
                    return found
        if c == 0x5B:
            self.i += 1
            self.ws()
            if self.s[self.i] == 0x5D:
                self.i += 1
                return None
            while True:
                self.value()
                self.ws()
                c = self.s[self.i]
                self.i += 1
                if c == 0x5D:
                    return None
        s, i = self.s, self.i
        while i < len(s) and s[i] not in b",}] \t\r\n":
            i += 1
        self.i = i
        return None


def _pick(data):
    """(cniVersion, ipam.socket) from the config bytes, each a str or None; never raises."""
    try:
        top = _Scan(data).value({"cniVersion": None, "ipam": {"socket": None}})
    except Exception:  # noqa: BLE001 - garbage stdin is the daemon's to report
        return None, None
    if not isinstance(top, dict):
        return None, None
    version = top.get("cniVersion")
    ipam = top.get("ipam")
    sock = ipam.get("socket") if isinstance(ipam, dict) else None
    return (version if isinstance(version, str) else None), (sock if isinstance(sock, str) else None)


def _quote(text):
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " ":
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _write(fd, data):
    while data:
        n = posix.write(fd, data)
        data = data[n:]


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("ipamd closed the connection early")
        buf += chunk
    return buf


def _section(data):
    return len(data).to_bytes(4, "big") + data


def main(stdin_fd=0):
    """One CNI call. ``stdin_fd`` is where the runtime's stdin is (3 when run by the installed plugin script)."""
    env = posix.environ  # bytes -> bytes, forwarded unchanged
    command = env.get(b"CNI_COMMAND", b"").decode("utf-8", "replace")
    chunks = []
    read_error = b""
    try:
        while True:
            chunk = posix.read(stdin_fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as exc:
        read_error = (exc.strerror or "read error").encode()
    data = b"".join(chunks)
    if len(data) > MAX_STDIN:
        # the daemon would refuse it; say why here instead of as a broken connection (which reads as "retry")
        _write(1, ('{"cniVersion":"1.1.0","code":6,"msg":"network configuration is %d bytes; the limit is %d"}'
                   % (len(data), MAX_STDIN)).encode())
        return 1
    # the config is scanned only when it names a socket; cniVersion is picked only for an error of our own
    conf_socket = _pick(data)[1] if b'"socket"' in data else None
    path = conf_socket or env.get(b"IPAMD_CNI_SOCKET", b"").decode("utf-8", "surrogateescape") or DEFAULT_SOCKET
    env_bytes = b"".join(k + b"=" + v + b"\0" for k, v in env.items() if k.startswith(b"CNI_"))
    frame = MAGIC + _section(env_bytes) + _section(data) + _section(read_error)
    try:
        timeout = float(env.get(b"IPAMD_CNI_TIMEOUT") or 30)
    except ValueError:
        timeout = 30.0
    if not 0 < timeout <= 86400:  # also NaN
        timeout = 30.0
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(frame)
        head = _recv_exact(sock, len(MAGIC) + 1)
        if head[:len(MAGIC)] != MAGIC:
            raise OSError("unexpected answer from ipamd")
        out = _recv_exact(sock, int.from_bytes(_recv_exact(sock, 4), "big"))
        err = _recv_exact(sock, int.from_bytes(_recv_exact(sock, 4), "big"))
        status = head[-1]
    except OSError as exc:
        sock.close()
        version = _pick(data)[0] if data else None
        if command == "VERSION":
            _write(1, ('{"cniVersion":%s,"supportedVersions":%s}' % (_quote(version or "1.1.0"), SUPPORTED)).encode())
            return 0
        reason = exc.strerror or str(exc) or exc.__class__.__name__
        if isinstance(exc, TimeoutError) or "timed out" in reason:
            reason = "no answer within %g s" % timeout
        msg = "ipamd is not reachable on %s: %s" % (path, reason)
        # STATUS reports "plugin not available" (50); every other verb "try again later" (11)
        code = 50 if command == "STATUS" else 11
        _write(2, ("ipamd-cni: %s\n" % msg).encode())
        _write(1, ('{"cniVersion":%s,"code":%d,"msg":%s}' % (_quote(version or "1.1.0"), code, _quote(msg))).encode())
        return 1
    sock.close()
    if err:
        _write(2, err)
    if out:
        _write(1, out)
    return status


if __name__ == "__main__":
    sys.exit(main())
