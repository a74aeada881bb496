"""The plugins against a daemon that misbehaves, side by side: the native plugin, the Python plugin (both as
``ipamd install-cni`` installs them) and the native one built with AddressSanitizer and UndefinedBehaviorSanitizer
(``native-sanitized``, skipped with the reason where the toolchain lacks them) must write the same bytes to stdout
and stderr and exit with the same status for every case (docs/cni-socket.md, docs/architecture.md: one CNI JSON object
or nothing on stdout, never a traceback).

The daemon here is a small unix-socket server in the test process (``FakeDaemon``) that records each request frame
and answers, stays silent, closes early or sends garbage; everything real-daemon is in the conformance suite.
Cases: docs/conformance.md T56/T65 (daemon down: 11, STATUS 50), §2.4 (VERSION answered locally), T13 (a directory
on stdin), field case B37 (oversized or broken stdin), issue 7 (deadline, size limits, no traceback).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ipamd_cni
import pytest
from harness import SANITIZER_ENV, _tmpdir, installed_shim, native_plugin, native_tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

VARIANTS = ("native", "python", "native-sanitized")


@dataclass
class Frame:
    env: dict[bytes, bytes]
    stdin: bytes
    stdin_error: bytes


@dataclass
class FakeDaemon:
    """A unix socket server that reads one framed request per connection and then follows ``behaviour``:
    ``answer`` (send ``answer`` bytes, then close), ``silent`` (keep the connection open, say nothing),
    ``close``."""

    path: bytes
    behaviour: str = "answer"
    answer: bytes = b""
    frames: list[Frame] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self.stop_event = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _recv(self, conn: socket.socket, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("short request")
            buf += chunk
        return buf

    def _serve(self) -> None:
        while not self.stop_event.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            try:
                conn.settimeout(10)
                assert self._recv(conn, len(ipamd_cni.MAGIC)) == ipamd_cni.MAGIC
                parts = [self._recv(conn, int.from_bytes(self._recv(conn, 4), "big")) for _ in range(3)]
                env = dict(p.split(b"=", 1) for p in parts[0].split(b"\0") if p)
                self.frames.append(Frame(env, parts[1], parts[2]))
                if self.behaviour == "answer":
                    conn.sendall(self.answer)
                if self.behaviour != "silent":
                    conn.close()
            except (OSError, AssertionError, ConnectionError):
                conn.close()

    def stop(self) -> None:
        self.stop_event.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the thread (close alone does not)
        except OSError:
            pass
        self.sock.close()
        for c in self.conns:
            c.close()
        self.thread.join(5)
        if not self.path.startswith(b"\0"):
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


@pytest.fixture
def sockdir() -> Iterator[str]:
    d = _tmpdir("ipamd-fake-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fake(sockdir: str) -> Iterator[Any]:
    """``fake(behaviour="answer", answer=b"", path=None)`` starts a :class:`FakeDaemon`; all stopped after."""
    started: list[FakeDaemon] = []

    def make(behaviour: str = "answer", answer: bytes = b"", path: bytes | None = None) -> FakeDaemon:
        d = FakeDaemon(path or os.path.join(sockdir, "cni.sock").encode(), behaviour, answer)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


@dataclass
class Run:
    rc: int
    stdout: bytes
    stderr: bytes


def argv_of(variant: str) -> tuple[list[str], dict[str, str]]:
    """How to run ``variant``: (argv, extra environment)."""
    if variant == "native-sanitized":
        path, why = native_tool(sanitized=True)
        if path is None:
            pytest.skip(why or "no sanitizers")
        return [path, "plugin"], dict(SANITIZER_ENV)
    if variant == "native" and native_plugin()[0] is None:
        pytest.skip(native_plugin()[1] or "no native plugin")
    return [installed_shim(variant)], {}


def run(variant: str, env: dict[bytes, bytes], stdin: Any = b"", timeout: float = 30) -> Run:
    """One plugin process with exactly ``env`` (bytes; plus PATH and the sanitizer settings) and ``stdin``
    (bytes, or a file descriptor)."""
    argv, extra = argv_of(variant)
    e = {b"PATH": b"/usr/sbin:/usr/bin:/sbin:/bin", **{k.encode(): v.encode() for k, v in extra.items()}, **env}
    if isinstance(stdin, bytes):
        p = subprocess.run(argv, input=stdin, capture_output=True, env=e, timeout=timeout)
    else:
        p = subprocess.run(argv, stdin=stdin, capture_output=True, env=e, timeout=timeout)
    if variant == "native-sanitized":
        assert p.returncode not in (86, 87), p.stderr.decode(errors="replace")[-3000:]
        assert b"Sanitizer" not in p.stderr and b"runtime error" not in p.stderr, p.stderr[-3000:]
    assert b"Traceback" not in p.stderr and b"Traceback" not in p.stdout, p
    return Run(p.returncode, p.stdout, p.stderr)


def cni_env(command: str, sock: str | bytes | None, **more: str) -> dict[bytes, bytes]:
    e = {b"CNI_COMMAND": command.encode(), b"CNI_CONTAINERID": b"c1", b"CNI_IFNAME": b"eth0",
         b"CNI_NETNS": b"/var/run/netns/x", b"CNI_PATH": b"/opt/cni/bin"}
    if sock is not None:
        e[b"IPAMD_CNI_SOCKET"] = sock if isinstance(sock, bytes) else sock.encode()
    e.update({k.encode(): v.encode() for k, v in more.items()})
    return e


CONF = b'{"cniVersion":"0.4.0","name":"n","ipam":{"type":"ipamd-cni"}}'
SUPPORTED_JSON = b'["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]'


def unreachable(version: bytes, code: int, sock: str, reason: str) -> bytes:
    return (b'{"cniVersion":"%s","code":%d,"msg":"ipamd is not reachable on %s: %s"}'
            % (version, code, sock.encode(), reason.encode()))


@pytest.mark.parametrize("variant", VARIANTS)
def test_answer_and_request_pass_through_unchanged(fake: Any, variant: str) -> None:
    """The daemon's status, stdout and stderr come out as they are; the request carries every CNI_* variable,
    nothing else, and stdin byte for byte (docs/cni-socket.md framing v1)."""
    d = fake(answer=ipamd_cni.encode_response(7, b'{"cniVersion":"0.4.0","code":7,"msg":"x"}', b"ipamd: warn\n"))
    stdin = CONF + b"\n\xff\x00 trailing bytes are the daemon's to judge"
    out = run(variant, cni_env("ADD", d.path, CNI_ARGS="K8S_POD_NAME=a;X=\xe9", OTHER="no"), stdin)
    assert (out.rc, out.stdout, out.stderr) == (7, b'{"cniVersion":"0.4.0","code":7,"msg":"x"}', b"ipamd: warn\n")
    frame = d.frames[-1]
    assert frame.stdin == stdin and frame.stdin_error == b""
    assert frame.env == {b"CNI_COMMAND": b"ADD", b"CNI_CONTAINERID": b"c1", b"CNI_IFNAME": b"eth0",
                         b"CNI_NETNS": b"/var/run/netns/x", b"CNI_PATH": b"/opt/cni/bin",
                         b"CNI_ARGS": "K8S_POD_NAME=a;X=\xe9".encode()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_success_with_empty_stdout(fake: Any, variant: str) -> None:
    d = fake(answer=ipamd_cni.encode_response(0, b"", b""))
    assert run(variant, cni_env("DEL", d.path), CONF) == Run(0, b"", b"")


@pytest.mark.parametrize("variant", VARIANTS)
def test_daemon_down(sockdir: str, variant: str) -> None:
    """T56/T65/§2.4: no socket -> ADD/DEL/CHECK/GC code 11 naming it, STATUS 50, VERSION answered locally with
    the request's cniVersion (1.1.0 when it has none); the reason on stderr too."""
    sock = os.path.join(sockdir, "none.sock")
    for command in ("ADD", "DEL", "CHECK", "GC"):
        out = run(variant, cni_env(command, sock), CONF)
        want = unreachable(b"0.4.0", 11, sock, "No such file or directory")
        assert (out.rc, out.stdout) == (1, want), (command, out)
        assert out.stderr == b"ipamd-cni: ipamd is not reachable on %s: No such file or directory\n" % sock.encode()
    out = run(variant, cni_env("STATUS", sock), b"")
    assert (out.rc, out.stdout) == (1, unreachable(b"1.1.0", 50, sock, "No such file or directory"))
    for stdin, version in ((CONF, b"0.4.0"), (b"", b"1.1.0"), (b"garbage", b"1.1.0"), (b'{"cniVersion":7}', b"1.1.0"),
                           (br'{"cniVersion":"\u00e9\ud83d\ude00\"x"}', br'\u00e9\ud83d\ude00\"x')):
        out = run(variant, cni_env("VERSION", sock), stdin)
        assert out == Run(0, b'{"cniVersion":"%s","supportedVersions":%s}' % (version, SUPPORTED_JSON), b""), stdin


@pytest.mark.parametrize("variant", VARIANTS)
def test_socket_choice(fake: Any, sockdir: str, variant: str) -> None:
    """ipam.socket (escapes decoded; last key wins), else IPAMD_CNI_SOCKET, else the default; an abstract
    socket name (leading NUL) works as Python's socket module takes it."""
    d = fake(answer=ipamd_cni.encode_response(0, b"", b""))
    escaped = d.path.decode().replace("/", "\\/").replace("c", "\\u0063")
    conf = b'{"ipam":{"socket":"/wrong","socket":"%s"}}' % escaped.encode()
    assert run(variant, cni_env("DEL", os.path.join(sockdir, "env.sock")), conf).rc == 0
    assert d.frames[-1].stdin == conf
    abstract = fake(answer=ipamd_cni.encode_response(0, b"", b""), path=b"\0ipamd-test-" + uuid.uuid4().hex.encode())
    conf = b'{"ipam":{"socket":"\\u0000%s"}}' % abstract.path[1:]
    assert run(variant, cni_env("DEL", None), conf).rc == 0
    assert len(abstract.frames) == 1
    if not os.path.exists(ipamd_cni.DEFAULT_SOCKET):  # nothing names a socket: the default one
        out = run(variant, cni_env("DEL", None), b"{}")
        assert out.stdout == unreachable(b"1.1.0", 11, ipamd_cni.DEFAULT_SOCKET, "No such file or directory")


@pytest.mark.parametrize("variant", VARIANTS)
def test_unusable_socket_paths(sockdir: str, variant: str) -> None:
    """Paths the kernel cannot take, and bytes that are not UTF-8 (written back as U+DC80+byte escapes)."""
    long = "/" + "x" * 200
    out = run(variant, cni_env("ADD", long), CONF)
    assert (out.rc, out.stdout) == (1, unreachable(b"0.4.0", 11, long, "AF_UNIX path too long"))
    raw = os.path.join(sockdir, "bad-\xff\xed\xa0\x80.sock").encode("latin-1")
    out = run(variant, cni_env("ADD", raw), CONF)
    shown = raw.decode("latin-1").replace("\xff", "\\udcff").replace("\xed", "\\udced").replace("\xa0", "\\udca0") \
        .replace("\x80", "\\udc80")
    assert (out.rc, out.stdout) == (1, unreachable(b"0.4.0", 11, shown, "No such file or directory"))
    assert out.stderr == b"ipamd-cni: ipamd is not reachable on " + raw + b": No such file or directory\n"
    out = run(variant, cni_env("ADD", sockdir), CONF)  # a directory
    assert (out.rc, out.stdout) == (1, unreachable(b"0.4.0", 11, sockdir, "Connection refused"))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("behaviour, answer, reason", [
    ("close", b"", "ipamd closed the connection early"),
    ("answer", b"HTTP/1.1 400 Bad Request\r\n\r\n", "unexpected answer from ipamd"),
    ("answer", ipamd_cni.MAGIC + b"\0\0\0", "ipamd closed the connection early"),
    ("answer", ipamd_cni.MAGIC + b"\0" + (ipamd_cni.MAX_ANSWER + 1).to_bytes(4, "big"),
     "answer from ipamd is larger than %d bytes" % ipamd_cni.MAX_ANSWER),
    ("answer", ipamd_cni.MAGIC + b"\0" + (5).to_bytes(4, "big") + b"{}", "ipamd closed the connection early"),
])
def test_broken_answers(fake: Any, variant: str, behaviour: str, answer: bytes, reason: str) -> None:
    d = fake(behaviour, answer)
    out = run(variant, cni_env("ADD", d.path), CONF)
    assert (out.rc, out.stdout) == (1, unreachable(b"0.4.0", 11, d.path.decode(), reason)), out
    out = run(variant, cni_env("VERSION", d.path), CONF)
    assert out == Run(0, b'{"cniVersion":"0.4.0","supportedVersions":%s}' % SUPPORTED_JSON, b"")


@pytest.mark.parametrize("variant", VARIANTS)
def test_deadline(fake: Any, variant: str) -> None:
    """IPAMD_CNI_TIMEOUT is the whole exchange's deadline, read as Python's float() reads it; a daemon that
    never answers gets code 11 saying so (STATUS 50)."""
    d = fake("silent")
    for raw, shown in (("0.25", "0.25"), (" 2.5e-1\n", "0.25"), ("0.2_5", "0.25"), ("+.3", "0.3")):
        out = run(variant, cni_env("ADD", d.path, IPAMD_CNI_TIMEOUT=raw), CONF)
        assert (out.rc, out.stdout) == (1, unreachable(b"0.4.0", 11, d.path.decode(), "no answer within %s s"
                                                       % shown)), raw
    out = run(variant, cni_env("STATUS", d.path, IPAMD_CNI_TIMEOUT="0.2"), b"")
    assert (out.rc, out.stdout) == (1, unreachable(b"1.1.0", 50, d.path.decode(), "no answer within 0.2 s"))
    assert len(d.frames) == 5


@pytest.mark.parametrize("variant", VARIANTS)
def test_stdin_problems(fake: Any, sockdir: str, variant: str) -> None:
    """T13: a directory on stdin is reported in the frame (the daemon answers 5); B37: stdin over the limit is
    refused here with code 6 (VERSION still answered), counting every byte."""
    d = fake(answer=ipamd_cni.encode_response(0, b"", b""))
    fd = os.open(sockdir, os.O_RDONLY)
    try:
        assert run(variant, cni_env("ADD", d.path), fd).rc == 0
    finally:
        os.close(fd)
    assert d.frames[-1].stdin == b"" and d.frames[-1].stdin_error == b"Is a directory"
    big = b"{" + b" " * ipamd_cni.MAX_STDIN + b"}"
    out = run(variant, cni_env("ADD", d.path), big)
    assert out == Run(1, b'{"cniVersion":"1.1.0","code":6,"msg":"network configuration is %d bytes; the limit is '
                         b'%d"}' % (len(big), ipamd_cni.MAX_STDIN), b"")
    out = run(variant, cni_env("VERSION", d.path), big)
    assert out == Run(0, b'{"cniVersion":"1.1.0","supportedVersions":%s}' % SUPPORTED_JSON, b"")
    assert len(d.frames) == 1
    exact = b"{" + b" " * (ipamd_cni.MAX_STDIN - 2) + b"}"
    assert run(variant, cni_env("DEL", d.path), exact).rc == 0
    assert d.frames[-1].stdin == exact


@pytest.mark.parametrize("variant", VARIANTS)
def test_closed_stdout_is_no_crash(fake: Any, variant: str) -> None:
    """A runtime that stops reading: the write fails, the plugin exits 1 without a traceback or a signal."""
    d = fake(answer=ipamd_cni.encode_response(0, b'{"cniVersion":"1.1.0"}', b""))
    argv, extra = argv_of(variant)
    r, w = os.pipe()
    os.close(r)
    try:
        env = {b"PATH": b"/usr/bin:/bin", **{k.encode(): v.encode() for k, v in extra.items()},
               **cni_env("ADD", d.path)}
        p = subprocess.run(argv, input=CONF, stdout=w, stderr=subprocess.PIPE, env=env, timeout=30)
    finally:
        os.close(w)
    assert p.returncode == 1, p
    assert b"Traceback" not in p.stderr and b"Sanitizer" not in p.stderr, p.stderr


# --- the two production plugins agree on generated input --------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stdin=st.one_of(st.binary(max_size=80),
                       st.builds(lambda v, s: ('{"cniVersion":%s,"ipam":{"socket":%s}}' % (v, s)).encode(),
                                 st.sampled_from(['"0.4.0"', '"\\u00e9"', "1", '"\\ud800"', '"a\\"b"']),
                                 st.sampled_from(['"/nowhere"', '""', "null", '"\\u0000abstract-none"']))),
       command=st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "", "add"]),
       value=st.binary(max_size=12).filter(lambda b: b"\0" not in b))
def test_native_and_python_plugins_agree(sockdir: str, stdin: bytes, command: str, value: bytes) -> None:
    """Same input, same frame to the daemon (when it is reachable) and the same bytes out (when it is not)."""
    d = FakeDaemon(os.path.join(sockdir, uuid.uuid4().hex[:8] + ".sock").encode(),
                   answer=ipamd_cni.encode_response(0, b"", b""))
    try:
        env = cni_env(command, d.path)
        env[b"CNI_ARGS"] = value
        outs = {v: run(v, env, stdin) for v in ("native", "python")}
    finally:
        d.stop()
    assert outs["native"] == outs["python"]
    if len(d.frames) == 2:
        assert d.frames[0] == d.frames[1]
    down = cni_env(command, b"/nonexistent/" + value.replace(b"/", b"_"))
    outs = {v: run(v, down, stdin) for v in ("native", "python")}
    assert outs["native"] == outs["python"]
    for o in outs.values():
        assert o.rc in (0, 1) and o.stdout.startswith(b'{"cniVersion":"') and o.stdout.isascii()


# --- the sanitized native plugin against a real daemon, case by case ---------------------------------------------

def test_sanitized_native_plugin_over_conformance_cases(daemons: Any, sockdir: str) -> None:
    """The native plugin under ASan+UBSan through the verbs and versions of docs/cni-contract.md §6 against a real
    daemon, step by step beside the production build: identical stdout, stderr and exit status, no report."""
    if native_tool(sanitized=True)[0] is None:
        pytest.skip(native_tool(sanitized=True)[1] or "no sanitizers")
    d = daemons("A")
    steps: list[tuple[str, dict[str, str], bytes]] = []
    for version in ipamd_cni.SUPPORTED_VERSIONS:
        conf = ('{"cniVersion":"%s","name":"san","type":"bridge","ipam":{"type":"ipamd-cni","ranges":'
                '[[{"subnet":"10.77.0.0/24"}],[{"subnet":"2001:db8:77::/64"}]]}}' % version).encode()
        steps += [("VERSION", {}, conf), ("ADD", {}, conf), ("ADD", {}, conf), ("DEL", {}, conf), ("DEL", {}, conf),
                  ("ADD", {"CNI_IFNAME": "x" * 16}, conf), ("ADD", {"CNI_CONTAINERID": ""}, conf),
                  ("STATUS", {}, conf), ("GC", {}, conf[:-1] + b',"cni.dev/valid-attachments":[]}'),
                  ("CHECK", {}, conf)]
    steps += [("ADD", {}, b""), ("ADD", {}, b"{"), ("ADD", {}, b'{"cniVersion":"9.9.9","name":"n"}'),
              ("FOO", {}, b"{}"), ("", {}, b"{}"), ("ADD", {}, b"[" * 100000)]
    for command, extra, stdin in steps:
        env = cni_env(command, d.cni_socket, **extra)
        got = {v: run(v, env, stdin) for v in ("native", "native-sanitized")}
        assert got["native"] == got["native-sanitized"], (command, extra, stdin[:100])
