"""ipamd-cni, the portable Python plugin, and the one Python home of the plugin protocol (docs/cni-socket.md).

The plugin forwards one CNI call to the node's ipamd over a unix socket: it reads ``CNI_*`` and all of stdin, sends
them unchanged (framing v1), writes the daemon's stderr and stdout and exits with its status. The native plugin
``client/cni/ipamd-cni.c`` does exactly the same; both pass one conformance suite (docs/conformance.md).

It parses nothing except ``ipam.socket`` (which socket to use) and ``cniVersion`` (for its own error object), with a
scanner that agrees with the daemon's ``json.loads`` (docs/cni-socket.md "What the plugins read").

Socket path: the network configuration's ``ipam.socket``, else ``IPAMD_CNI_SOCKET``, else :data:`DEFAULT_SOCKET`.
Deadline: ``IPAMD_CNI_TIMEOUT`` seconds for the whole exchange (default :data:`DEFAULT_TIMEOUT`). If the daemon
cannot be reached: a code-11 error naming the socket (code 50 for STATUS; VERSION is answered locally instead, so a
runtime's version probe never fails). On no failure does it print anything but one CNI JSON object on stdout.

Imports only modules built into the interpreter and already loaded when ``python -I -S`` starts (``posix``, ``sys``,
``time``), plus ``_socket``: one call costs about as much as starting Python (docs/architecture.md, docs/benchmarks.md).
The daemon (``ipamd.cniserver``, ``ipamd.domain.cni``) and the tests import the protocol constants from here.
"""

import _socket
import posix
import sys
import time

# --- the protocol (docs/cni-socket.md); client/cni/ipamd-cni.c repeats these and a test pins them equal ---------

#: Both directions start with it; the digit is the framing version.
MAGIC = b"IPAMD1\n"
#: A request frame is at most this many bytes (the daemon refuses more).
MAX_REQUEST = 4 << 20
#: The largest stdin the plugins forward: the request limit less room for the environment.
MAX_STDIN = MAX_REQUEST - (64 << 10)
#: The largest stdout or stderr section a plugin accepts in an answer.
MAX_ANSWER = MAX_REQUEST
#: Seconds the daemon waits for a whole request to arrive.
READ_DEADLINE = 5.0
#: Seconds a plugin waits for the whole exchange unless ``IPAMD_CNI_TIMEOUT`` says otherwise (0 < t <= MAX_TIMEOUT).
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 86400.0
DEFAULT_SOCKET = "/run/ipamd/cni.sock"
#: CNI spec versions ipamd speaks (docs/cni-contract.md), oldest first.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
#: Integers longer than this are refused by the daemon's ``json.loads`` (CPython's int/str conversion limit).
MAX_INT_DIGITS = 4300

_SUPPORTED_JSON = '["' + '","'.join(SUPPORTED_VERSIONS) + '"]'


def section(data: bytes) -> bytes:
    """One framed section: 4-byte big-endian length, then ``data``."""
    return len(data).to_bytes(4, "big") + data


def encode_request(env: bytes, stdin: bytes, stdin_error: bytes) -> bytes:
    """A v1 request frame; ``env`` is the ``KEY=VALUE\\0`` pairs of the ``CNI_*`` variables."""
    return MAGIC + section(env) + section(stdin) + section(stdin_error)


def encode_response(status: int, stdout: bytes, stderr: bytes) -> bytes:
    """A v1 answer frame: exit status (one byte), then the stdout and stderr sections."""
    return MAGIC + bytes([status & 0xFF]) + section(stdout) + section(stderr)


# --- the scanner ----------------------------------------------------------------------------------------------------

_WS = b" \t\r\n"
_HEX = frozenset(b"0123456789abcdefABCDEF")
_DIGITS = frozenset(b"0123456789")
_ESCAPES = {0x22: b'"', 0x5C: b"\\", 0x2F: b"/", 0x62: b"\b", 0x66: b"\f", 0x6E: b"\n", 0x72: b"\r", 0x74: b"\t"}


#: Raised where the document is not one the daemon's ``json.loads`` would accept (no class of its own: defining
#: one costs start-up time on every call).
_Invalid = ValueError


def _encoding(data: bytes) -> str:
    """``json.detect_encoding``: the encoding the daemon's ``json.loads(bytes)`` decodes ``data`` with."""
    if data[:4] in (b"\x00\x00\xfe\xff", b"\xff\xfe\x00\x00"):
        return "utf-32"
    if data[:2] in (b"\xfe\xff", b"\xff\xfe"):
        return "utf-16"
    if data[:3] == b"\xef\xbb\xbf":
        return "utf-8-sig"
    if len(data) >= 4:
        if not data[0]:
            return "utf-16-be" if data[1] else "utf-32-be"
        if not data[1]:
            return "utf-16-le" if data[2] or data[3] else "utf-32-le"
    elif len(data) == 2:
        if not data[0]:
            return "utf-16-be"
        if not data[1]:
            return "utf-16-le"
    return "utf-8"


def _wtf8(data: bytes) -> bytes:
    """The document as UTF-8 bytes in which lone surrogates are encoded like any code point (``surrogatepass``),
    decoded the way ``json.loads(bytes)`` decodes it. Raises :class:`_Invalid` where that decoding fails."""
    enc = _encoding(data)
    try:
        if enc == "utf-8":
            data.decode("utf-8", "surrogatepass")  # validates only
            return data
        if enc == "utf-8-sig":
            data = data[3:]
            data.decode("utf-8", "surrogatepass")
            return data
        return data.decode(enc, "surrogatepass").encode("utf-8", "surrogatepass")
    except UnicodeError:
        raise _Invalid("not decodable as %s" % enc) from None


def _string(s: bytes, i: int, out: bytearray | None) -> int:
    """Scan the string whose opening quote is at ``s[i]``; append its value (UTF-8, surrogates passed) to ``out``
    unless it is ``None``; return the index after the closing quote."""
    i += 1
    q = -1
    while True:
        if q < i:  # the next quote, unless an escape before it is still to come
            q = s.find(b'"', i)
            if q < 0:
                raise _Invalid
        b = s.find(b"\\", i, q)
        end = q if b < 0 else b
        if end > i:
            if min(s[i:end]) < 0x20:
                raise _Invalid
            if out is not None:
                out += s[i:end]
        if b < 0:
            return q + 1
        i = b + 1
        c = s[i]
        if c != 0x75:
            esc = _ESCAPES.get(c)
            if esc is None:
                raise _Invalid
            if out is not None:
                out += esc
            i += 1
            continue
        code = _hex4(s, i + 1)
        i += 5
        if 0xD800 <= code < 0xDC00 and s[i:i + 2] == b"\\u":  # a UTF-16 pair written as two escapes is one
            low = _hex4(s, i + 2)
            if 0xDC00 <= low < 0xE000:
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                i += 6
        if out is not None:
            out += chr(code).encode("utf-8", "surrogatepass")


def _hex4(s: bytes, i: int) -> int:
    digits = s[i:i + 4]
    if len(digits) != 4 or not _HEX.issuperset(digits):
        raise _Invalid
    return int(digits, 16)


def _number(s: bytes, i: int) -> int:
    """Index after the number at ``s[i]`` (``-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][-+]?[0-9]+)?``)."""
    n = len(s)
    j = i + 1 if s[i] == 0x2D else i
    start = j
    if j < n and s[j] == 0x30:
        j += 1
    elif j < n and 0x31 <= s[j] <= 0x39:
        while j < n and s[j] in _DIGITS:
            j += 1
    else:
        raise _Invalid  # also -Infinity, which the daemon refuses
    digits = j - start
    exact = True
    if j + 1 < n and s[j] == 0x2E and s[j + 1] in _DIGITS:
        exact = False
        j += 2
        while j < n and s[j] in _DIGITS:
            j += 1
    if j < n and s[j] in b"eE":
        k = j + 1
        if k < n and s[k] in b"+-":
            k += 1
        if k < n and s[k] in _DIGITS:
            exact = False
            while k < n and s[k] in _DIGITS:
                k += 1
            j = k
    if exact and digits > MAX_INT_DIGITS:
        raise _Invalid
    return j


def _ws(s: bytes, i: int) -> int:
    n = len(s)
    while i < n and s[i] in _WS:
        i += 1
    return i


def pick(data: bytes) -> tuple[bytes | None, bytes | None]:
    """``(cniVersion, ipam.socket)`` of a network configuration, each as UTF-8 bytes (lone surrogates encoded as
    ``surrogatepass`` does) when it is a string, else ``None``; both ``None`` unless ``data`` is a document the
    daemon's ``json.loads`` accepts (any nesting depth; duplicate keys: the last wins). Never raises."""
    try:
        return _pick(_wtf8(data))
    except (_Invalid, IndexError):
        return None, None


def _pick(s: bytes) -> tuple[bytes | None, bytes | None]:
    n = len(s)
    version = sock = None
    # one entry per open container: 0 array, 1 object, 2 the top-level object, 3 the top-level object's "ipam"
    stack = bytearray()
    member = b""  # the key whose value comes next (decoded only in objects 2 and 3)
    need_key = False
    i = _ws(s, 0)
    top_is_object = i < n and s[i] == 0x7B
    while True:
        if need_key:
            kind = stack[-1]
            member, i = _key(s, i, kind)
            if kind == 2:  # a repeated key starts over: the last one wins, as in json.loads
                if member == b"cniVersion":
                    version = None
                elif member == b"ipam":
                    sock = None
            elif kind == 3 and member == b"socket":
                sock = None
        # a value starts at s[i]
        c = s[i]
        if c == 0x7B or c == 0x5B:
            kind = 0
            if c == 0x7B:
                kind = 1 if stack else 2
                if kind == 1 and stack[-1] == 2 and member == b"ipam":
                    kind = 3
            stack.append(kind)
            i = _ws(s, i + 1)
            if s[i] != (0x7D if kind else 0x5D):
                need_key = kind > 0
                continue
            stack.pop()
            i += 1
        elif c == 0x22:
            out = None
            if stack and ((stack[-1] == 2 and member == b"cniVersion") or (stack[-1] == 3 and member == b"socket")):
                out = bytearray()
            i = _string(s, i, out)
            if out is not None:
                if stack[-1] == 3:
                    sock = bytes(out)
                else:
                    version = bytes(out)
        elif c == 0x2D or 0x30 <= c <= 0x39:
            i = _number(s, i)
        elif s.startswith(b"true", i) or s.startswith(b"null", i):
            i += 4
        elif s.startswith(b"false", i):
            i += 5
        else:
            raise _Invalid  # also NaN and Infinity, which the daemon refuses
        # the value ended: then a comma, a closing bracket, or the end of the document
        while True:
            i = _ws(s, i)
            if not stack:
                if i != n:
                    raise _Invalid
                return (version, sock) if top_is_object else (None, None)
            c = s[i]
            if c == 0x2C:
                i = _ws(s, i + 1)
                need_key = stack[-1] > 0
                break
            if c != (0x7D if stack[-1] else 0x5D):
                raise _Invalid
            stack.pop()
            i += 1


def _key(s: bytes, i: int, kind: int) -> tuple[bytes, int]:
    """Scan ``"key" :`` at ``s[i]``; return the key (decoded where it matters: objects 2 and 3) and the index of
    the member's value. A repeated key starts over: its old value is forgotten here (the last one wins)."""
    if s[i] != 0x22:
        raise _Invalid
    key = bytearray() if kind >= 2 else None
    i = _ws(s, _string(s, i, key))
    if s[i] != 0x3A:
        raise _Invalid
    return (bytes(key) if key is not None else b""), _ws(s, i + 1)


def _needs_scan(data: bytes) -> bool:
    """False only when scanning cannot find an ``ipam.socket``: no ``"socket"`` and no ``\\u`` escape (the only way
    to spell a letter otherwise) in a document the daemon reads as UTF-8."""
    return b'"socket"' in data or b"\\u" in data or _encoding(data) not in ("utf-8", "utf-8-sig")


# --- the plugin -----------------------------------------------------------------------------------------------------

def _quote(text: bytes) -> bytes:
    """``text`` as a JSON string of ASCII only: characters outside ``' '..'~'`` as ``\\uXXXX`` escapes (a pair
    beyond the BMP), each byte of an invalid UTF-8 sequence as U+DC80+byte (``surrogateescape``)."""
    out = ['"']
    for ch in text.decode("utf-8", "surrogateescape"):
        if ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            code = ord(ch)
            if code > 0xFFFF:
                code -= 0x10000
                out.append("\\u%04x\\u%04x" % (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)))
            else:
                out.append("\\u%04x" % code)
    out.append('"')
    return "".join(out).encode()


def _error(version: bytes | None, code: int, msg: bytes) -> bytes:
    """A CNI error object (cniVersion ``version``, else 1.1.0)."""
    return b'{"cniVersion":%s,"code":%d,"msg":%s}' % (_quote(version or b"1.1.0"), code, _quote(msg))


def _write(fd: int, data: bytes) -> bool:
    """Write all of ``data``; ``False`` when the descriptor refuses (closed, EPIPE)."""
    try:
        while data:
            data = data[posix.write(fd, data):]
    except OSError:
        return False
    return True


def _read_all(fd: int) -> tuple[bytes, int, bytes]:
    """All of ``fd``: (the first :data:`MAX_STDIN` bytes or fewer, how many there were, the read error's text)."""
    chunks = []
    size = 0
    try:
        while True:
            chunk = posix.read(fd, 1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size <= MAX_STDIN:
                chunks.append(chunk)
    except OSError as exc:
        return b"".join(chunks), size, (exc.strerror or "read error").encode()
    return b"".join(chunks), size, b""


def _timeout(raw: bytes | None) -> float:
    """``IPAMD_CNI_TIMEOUT`` as Python's ``float`` reads it, when 0 < t <= MAX_TIMEOUT; else the default."""
    try:
        t = float(raw or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT
    return t if 0 < t <= MAX_TIMEOUT else DEFAULT_TIMEOUT


def _recv_exact(sock: _socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(left)
        chunk = sock.recv(min(n - len(buf), 1 << 16))
        if not chunk:
            raise OSError("ipamd closed the connection early")
        buf += chunk
    return bytes(buf)


def _recv_section(sock: _socket.socket, deadline: float) -> bytes:
    n = int.from_bytes(_recv_exact(sock, 4, deadline), "big")
    if n > MAX_ANSWER:
        raise OSError("answer from ipamd is larger than %d bytes" % MAX_ANSWER)
    return _recv_exact(sock, n, deadline)


def exchange(path: bytes, frame: bytes, timeout: float) -> tuple[int, bytes, bytes]:
    """Send one request frame to the daemon's socket at ``path`` and read its answer, all within ``timeout``
    seconds: ``(exit status, stdout, stderr)``. Raises ``OSError`` (``TimeoutError`` past the deadline)."""
    deadline = time.monotonic() + timeout
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(left)
        sock.sendall(frame)
        head = _recv_exact(sock, len(MAGIC) + 1, deadline)
        if head[:-1] != MAGIC:
            raise OSError("unexpected answer from ipamd")
        out = _recv_section(sock, deadline)
        err = _recv_section(sock, deadline)
    finally:
        sock.close()
    return head[-1], out, err


def _version_answer(version: bytes | None) -> bytes:
    return b'{"cniVersion":%s,"supportedVersions":%s}' % (_quote(version or b"1.1.0"), _SUPPORTED_JSON.encode())


def _main(stdin_fd: int) -> int:
    env = posix.environ  # bytes -> bytes, forwarded unchanged
    command = env.get(b"CNI_COMMAND", b"")
    data, size, read_error = _read_all(stdin_fd)
    if size > MAX_STDIN:
        if command == b"VERSION":  # VERSION never fails (docs/cni-contract.md §2.4)
            _write(1, _version_answer(None))
            return 0
        # the daemon would refuse it; say why here instead of as a broken connection (which reads as "retry")
        _write(1, _error(None, 6, b"network configuration is %d bytes; the limit is %d" % (size, MAX_STDIN)))
        return 1
    conf_socket = pick(data)[1] if _needs_scan(data) else None
    path = conf_socket or env.get(b"IPAMD_CNI_SOCKET") or DEFAULT_SOCKET.encode()
    env_bytes = b"".join(k + b"=" + v + b"\0" for k, v in env.items() if k.startswith(b"CNI_"))
    timeout = _timeout(env.get(b"IPAMD_CNI_TIMEOUT"))
    try:
        status, out, err = exchange(path, encode_request(env_bytes, data, read_error), timeout)
    except OSError as exc:
        version = pick(data)[0] if data else None
        if command == b"VERSION":
            return 0 if _write(1, _version_answer(version)) else 1
        if isinstance(exc, TimeoutError):
            reason = b"no answer within %g s" % timeout
        else:
            reason = (exc.strerror or str(exc) or exc.__class__.__name__).encode()
        msg = b"ipamd is not reachable on " + path + b": " + reason
        _write(2, b"ipamd-cni: " + msg + b"\n")
        # STATUS reports "plugin not available" (50); every other verb "try again later" (11)
        _write(1, _error(version, 50 if command == b"STATUS" else 11, msg))
        return 1
    if err:
        _write(2, err)
    if out and not _write(1, out):
        return 1
    return status


def main(stdin_fd: int = 0) -> int:
    """One CNI call; returns the exit status. ``stdin_fd`` is where the runtime's stdin is (3 when run by the
    installed plugin script, which gives Python ``/dev/null`` as its own stdin). Never raises, never prints a
    traceback: an unexpected failure is a code-999 error object."""
    try:
        return _main(stdin_fd)
    except BaseException as exc:  # noqa: BLE001 - the CNI contract wants one JSON object, not a traceback
        _write(1, _error(None, 999, b"ipamd-cni: internal error: " + exc.__class__.__name__.encode()))
        return 1


if __name__ == "__main__":
    sys.exit(main())
