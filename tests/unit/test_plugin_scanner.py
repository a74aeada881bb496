"""The plugins' JSON scanner, differentially: the native scanner (client/cni/ipamd-cni.c, built with
AddressSanitizer and UndefinedBehaviorSanitizer where the toolchain has them), the Python plugin's ``pick``
(client/ipamd_cni.py) and the daemon's own decoder (``loads_strict``, i.e. Python's ``json``) must pick the same
``cniVersion`` and ``ipam.socket`` from any bytes; neither scanner may crash or hang (docs/cni-socket.md "What the
plugins read", field case B37 for broken stdin, issue 7). Also: the C definitions of the protocol pinned to the
Python home, and the two JSON string writers (``_quote`` / ``json_quote``) compared byte for byte.

Where the daemon's decoder gives up on nesting deeper than Python's recursion limit (it answers code 6 then), the
scanners, which have no depth limit, must still agree with each other.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ipamd_cni
import pytest
from harness import SANITIZER_ENV, native_tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipamd.domain.cni import SUPPORTED_VERSIONS as DAEMON_VERSIONS
from ipamd.domain.cni import loads_strict

ROOT = Path(__file__).resolve().parents[2]
C_SOURCE = ROOT / "client" / "cni" / "ipamd-cni.c"

Picked = tuple[bytes | None, bytes | None]


def wtf8(value: Any) -> bytes | None:
    return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else None


def reference(data: bytes) -> Picked | None:
    """What the daemon's decoder reads: (cniVersion, ipam.socket) as UTF-8 bytes when strings; ``None`` when it
    gives up on the nesting depth (RecursionError: no verdict on the document)."""
    try:
        obj = loads_strict(data)
    except RecursionError:
        return None
    except ValueError:  # also UnicodeDecodeError
        return None, None
    if not isinstance(obj, dict):
        return None, None
    ipam = obj.get("ipam")
    return wtf8(obj.get("cniVersion")), wtf8(ipam.get("socket")) if isinstance(ipam, dict) else None


class NativeScanner:
    """The native test tool in ``scan`` mode, kept running: one framed document in, two lines out."""

    def __init__(self, path: str, sanitized: bool) -> None:
        env = dict(SANITIZER_ENV) if sanitized else {}
        self.proc = subprocess.Popen([path, "scan"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)
        self.sanitized = sanitized

    def pick(self, data: bytes, timeout: float = 20.0) -> Picked:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(len(data).to_bytes(4, "big") + data)
        self.proc.stdin.flush()
        out = b""
        while out.count(b"\n") < 2:  # unbuffered reads: select() must see every byte still to come
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            assert ready, "the native scanner hangs on %r" % data[:200]
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            assert chunk, "the native scanner died (exit %s) on %r: %s" % (
                self.proc.wait(5), data[:200], self.proc.stderr.read().decode(errors="replace")[-3000:]
                if self.proc.stderr else "")
            out += chunk
        lines = [line.decode().split() for line in out.splitlines()]
        assert [ln[0] for ln in lines] == ["version", "socket"], lines
        return tuple(bytes.fromhex(v[1:]) if v != "-" else None for _, v in lines)  # type: ignore[return-value]

    def close(self) -> str:
        """Stop it; returns its stderr (sanitizer reports land there)."""
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        rc = self.proc.wait(30)
        err = self.proc.stderr.read().decode(errors="replace")
        self.proc.stderr.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        assert rc == 0, "native scanner exited %d: %s" % (rc, err[-3000:])
        return err


@pytest.fixture(scope="module")
def native() -> Iterator[NativeScanner]:
    """The sanitized scanner where the toolchain has the sanitizers, else the plain one."""
    path, _ = native_tool(sanitized=True)
    sanitized = path is not None
    if path is None:
        path, why = native_tool()
        if path is None:
            pytest.skip(why or "no native tool")
    scanner = NativeScanner(path, sanitized)
    yield scanner
    err = scanner.close()
    assert "Sanitizer" not in err and "runtime error" not in err, err[-3000:]


def check(native: NativeScanner, data: bytes) -> Picked:
    """All three agree on ``data`` (the scanners with each other where the reference gives no verdict)."""
    py = ipamd_cni.pick(data)
    c = native.pick(data)
    ref = reference(data)
    assert c == py, "native %r != python %r on %r" % (c, py, data[:300])
    if ref is not None:
        assert py == ref, "scanners %r != json %r on %r" % (py, ref, data[:300])
    return py


# --- tables -----------------------------------------------------------------------------------------------------

TABLE: list[tuple[bytes, Picked]] = [
    (b'{"cniVersion":"0.4.0","ipam":{"socket":"/run/x.sock"}}', (b"0.4.0", b"/run/x.sock")),
    (b'{"cniVersion":"1.0.0"}', (b"1.0.0", None)),
    (b'{"ipam":{"type":"ipamd-cni"}}', (None, None)),
    (b"{}", (None, None)),
    (b' \n{ "cniVersion" :\t"1.1.0" ,\r\n "ipam" : { "socket" : "/s" } } ', (b"1.1.0", b"/s")),
    (br'{"name":"a\"b","cniVersion":"1.\"0","ipam":{"socket":"/run/a\\b\"c"}}', (b'1."0', b'/run/a\\b"c')),
    (br'{"x":"\"cniVersion\":\"9\"","cniVersion":"1.0.0"}', (b"1.0.0", None)),
    (b'{"socket":"/top","cniVersion":"1.0.0"}', (b"1.0.0", None)),
    (b'{"runtimeConfig":{"socket":"/rc"},"ipam":{"type":"t"},"plugins":[{"ipam":{"socket":"/p"}}]}', (None, None)),
    (b'{"ipam":{"ranges":[[{"subnet":"10.1.2.0/24","socket":"/deep"}]],"socket":"/ok"}}', (None, b"/ok")),
    (b'{"ipam":{"x":{"socket":"/nested"}}}', (None, None)),
    (b'{"ipam":{"cniVersion":"9.9.9","socket":"/s"}}', (None, b"/s")),
    (b'{"prevResult":{"cniVersion":"0.4.0","ips":[]},"cniVersion":"1.1.0"}', (b"1.1.0", None)),
    (b'{"a":[1,2.5e3,-3,true,false,null,[],{},[[{"b":[{}]}]]],"b":{"c":{"d":[null]}},"cniVersion":"0.3.1"}',
     (b"0.3.1", None)),
    (b'{"cniVersion":1.0,"ipam":{"socket":5}}', (None, None)),
    (b'{"cniVersion":{"v":"1"},"ipam":"ipamd"}', (None, None)),
    # duplicate keys: the last one wins, also when it is not a string, and a later "ipam" replaces the whole object
    (b'{"cniVersion":"0.3.0","cniVersion":"1.0.0"}', (b"1.0.0", None)),
    (b'{"cniVersion":"0.3.0","cniVersion":null}', (None, None)),
    (b'{"ipam":{"socket":"/a"},"ipam":{"type":"x"}}', (None, None)),
    (b'{"ipam":{"socket":"/a","socket":"/b"}}', (None, b"/b")),
    (b'{"ipam":{"socket":"/a"},"ipam":5}', (None, None)),
    # escapes: \u in keys and values, surrogate pairs, lone surrogates (UTF-8 as "surrogatepass" writes them)
    (br'{"cni\u0056ersion":"1.0.0","ipam":{"s\u006fcket":"/run/\u00e9\u0041.sock"}}',
     (b"1.0.0", "/run/\u00e9A.sock".encode())),
    (br'{"ipam":{"socket":"/run/\ud83d\ude00.sock"}}', (None, "/run/\U0001F600.sock".encode())),
    (br'{"ipam":{"socket":"\ud800x\udc00\ud83d"}}', (None, b"\xed\xa0\x80x\xed\xb0\x80\xed\xa0\xbd")),
    (br'{"cniVersion":"a\/b\n\t\r\b\f"}', (b"a/b\n\t\r\b\f", None)),
    (br'{"cniVersion":"\u0000"}', (b"\x00", None)),
    ('{"ipam":{"socket":"/run/\u00e9\U0001F600.sock"}}'.encode(), (None, "/run/\u00e9\U0001F600.sock".encode())),
    # encodings json.loads(bytes) detects: UTF-8 with a BOM, UTF-16 and UTF-32 with and without one
    (b'\xef\xbb\xbf{"cniVersion":"1.0.0"}', (b"1.0.0", None)),
    ('{"ipam":{"socket":"/u16"}}'.encode("utf-16"), (None, b"/u16")),
    ('{"ipam":{"socket":"/u16be"}}'.encode("utf-16-be"), (None, b"/u16be")),
    ('{"ipam":{"socket":"/u16le"}}'.encode("utf-16-le"), (None, b"/u16le")),
    ('{"ipam":{"socket":"/u32"}}'.encode("utf-32"), (None, b"/u32")),
    ('{"cniVersion":"\ud800"}'.encode("utf-32-le", "surrogatepass"), (b"\xed\xa0\x80", None)),
    ('{"cniVersion":"\ud800"}'.encode("utf-16-be", "surrogatepass"), (b"\xed\xa0\x80", None)),
    # raw encoded surrogates are accepted as the daemon's decoder accepts them
    (b'{"cniVersion":"\xed\xa0\x80"}', (b"\xed\xa0\x80", None)),
    # not an object at the top
    (b'["cniVersion","1.0.0"]', (None, None)),
    (b'"cniVersion"', (None, None)),
    (b"5", (None, None)),
    # integers: CPython's json refuses more than 4300 digits; floats have no limit
    (b'{"cniVersion":"1","n":' + b"9" * 4300 + b"}", (b"1", None)),
    (b'{"cniVersion":"1","n":-' + b"9" * 4300 + b"}", (b"1", None)),
    (b'{"cniVersion":"1","n":' + b"9" * 4301 + b"}", (None, None)),
    (b'{"cniVersion":"1","n":' + b"9" * 4301 + b".5}", (b"1", None)),
    (b'{"cniVersion":"1","n":' + b"9" * 4301 + b"e1}", (b"1", None)),
]

INVALID = [
    b"", b"{", b"}", b"[", b'{"cniVersion"', b'{"cniVersion":', b'{"cniVersion":"1.0', b'{"cniVersion":"1.0.0"',
    b'{"a":[1,2', b"garbage", b"\xff\xfe\x00", b"\x00" * 10, b'{"cniVersion":"\\u12"}', b'{"cniVersion":"\\uzzzz"}',
    b'{"cniVersion":"\\u+123"}', b'{"cniVersion":"\\u 123"}', b'{"cniVersion":"\\u1_23"}', b'{"cniVersion":"\\x41"}',
    b'{"cniVersion":"\\', b'{"ipam":{"socket":', b"null", b"true", b'{"cniVersion":"1"} x', b'{"cniVersion":"1"}{}',
    b'{"cniVersion":"1",}', b'{"cniVersion":"1",,"a":1}', b'{"a":[1,]}', b"{'cniVersion':'1'}",
    b'{"cniVersion":"a\x01b"}', b'{"cniVersion":"a\nb"}', b'{"cniVersion":"1","n":NaN}', b'{"n":Infinity}',
    b'{"n":-Infinity}', b'{"n":01}', b'{"n":1.}', b'{"n":.5}', b'{"n":+1}', b'{"n":-}', b'{"n":1e}', b'{"n":1e+}',
    b'{"n":0x10}', b'{"n":tru}', b'{"n":nul}', b'{"n":False}', b'{"cniVersion":"\xc3"}', b'{"cniVersion":"\xc0\xaf"}',
    b'{"cniVersion":"\xed\xa0"}', b'{"cniVersion":"\xf4\x90\x80\x80"}', b'{"cniVersion":"\xe0\x80\xaf"}',
    b'\xef\xbb\xbf\xef\xbb\xbf{}', b'\xff\xfe{\x00', '{"a":1}'.encode("utf-16")[:-1], b'\x0b{}', b'{}\x0c',
    b'{"a" 1}', b'{"a"::1}', b'{1:2}', b'[1 2]', b'{"a":1 "b":2}',
]


def test_protocol_constants_are_pinned_to_the_python_home() -> None:
    """One home per language (issue 6 item 6): the C #defines equal client/ipamd_cni.py's definitions, and the
    daemon's supported versions are the plugin's."""
    src = C_SOURCE.read_text()

    def define(name: str) -> str:
        m = re.search(r"^#define %s (.+)$" % name, src, re.M)
        assert m, name
        return m.group(1).strip()

    def c_int(expr: str) -> int:
        return int(eval(re.sub(r"(\d+)UL", r"\1", expr)))

    assert json.loads(define("MAGIC")).encode() == ipamd_cni.MAGIC
    assert int(define("MAGIC_LEN")) == len(ipamd_cni.MAGIC)
    assert c_int(define("MAX_REQUEST")) == ipamd_cni.MAX_REQUEST
    assert c_int(define("MAX_STDIN").replace("MAX_REQUEST", str(ipamd_cni.MAX_REQUEST))) == ipamd_cni.MAX_STDIN
    assert define("MAX_ANSWER") == "MAX_REQUEST" and ipamd_cni.MAX_ANSWER == ipamd_cni.MAX_REQUEST
    assert float(define("DEFAULT_TIMEOUT")) == ipamd_cni.DEFAULT_TIMEOUT
    assert float(define("MAX_TIMEOUT")) == ipamd_cni.MAX_TIMEOUT
    assert json.loads(define("DEFAULT_SOCKET")) == ipamd_cni.DEFAULT_SOCKET
    assert tuple(json.loads(json.loads(define("SUPPORTED_VERSIONS")))) == ipamd_cni.SUPPORTED_VERSIONS
    assert int(define("MAX_INT_DIGITS")) == ipamd_cni.MAX_INT_DIGITS
    # the one message with a number in it that C spells out
    assert '"answer from ipamd is larger than %d bytes"' % ipamd_cni.MAX_ANSWER in src
    assert DAEMON_VERSIONS == ipamd_cni.SUPPORTED_VERSIONS


@pytest.mark.parametrize("data, expected", TABLE, ids=range(len(TABLE)))
def test_table(native: NativeScanner, data: bytes, expected: Picked) -> None:
    assert check(native, data) == expected


@pytest.mark.parametrize("data", INVALID, ids=range(len(INVALID)))
def test_invalid_documents_pick_nothing(native: NativeScanner, data: bytes) -> None:
    # every entry is refused by the daemon's decoder too (check() compares with it)
    assert reference(data) == (None, None)
    assert check(native, data) == (None, None)


def truncations(doc: bytes) -> list[bytes]:
    return [doc[:i] for i in range(len(doc))]


def test_every_truncation_of_a_config(native: NativeScanner) -> None:
    doc = (br'{"cniVersion":"1.0.0","name":"n\u00e9t","ipam":{"type":"ipamd-cni","socket":"/run/\ud83d\ude00",'
           br'"ranges":[[{"subnet":"10.1.2.0/24"}]],"n":-1.5e+3}}')
    assert check(native, doc) == (b"1.0.0", "/run/\U0001F600".encode())
    for cut in truncations(doc):
        assert check(native, cut) == (None, None)


def big_documents() -> Iterator[tuple[str, bytes]]:
    """Adversarial sizes: up to the plugins' 4 MiB stdin limit, nesting far past Python's recursion limit."""
    limit = ipamd_cni.MAX_STDIN
    tail = b',"cniVersion":"0.4.0","ipam":{"socket":"/big"}}'
    yield "4 MiB string", b'{"pad":"' + b"x" * (limit - 100) + b'"' + tail
    yield "4 MiB of escapes", b'{"pad":"' + b"\\u00e9\\n" * ((limit - 100) // 8) + b'"' + tail
    yield "4 MiB of white space", b"{" + b" \t\r\n" * ((limit - 100) // 4) + tail[1:]
    yield "unterminated 4 MiB string", b'{"pad":"' + b"x" * (limit - 100)
    yield "invalid UTF-8 at the end of 4 MiB", b'{"pad":"' + b"x" * (limit - 100) + b'\xff"' + tail
    yield "1 MiB of small numbers", b'{"a":[' + b"1," * (1 << 19) + b"0]" + tail
    depth = 100_000
    yield "100k nested arrays", b'{"a":' + b"[" * depth + b"]" * depth + tail
    yield "100k nested objects", b'{"a":' + b'{"b":' * depth + b"1" + b"}" * depth + tail
    yield "100k nested in ipam", b'{"ipam":{"x":' + b"[" * depth + b"]" * depth + b',"socket":"/d"}}'
    yield "100k unclosed", b'{"a":' + b"[" * depth
    yield "2M unclosed", b"[" * (2 << 20)


@pytest.mark.parametrize("name", [n for n, _ in big_documents()])
def test_big_and_deep_documents(native: NativeScanner, name: str) -> None:
    data = dict(big_documents())[name]
    picked = check(native, data)
    if name.startswith(("4 MiB string", "4 MiB of", "1 MiB", "100k nested a", "100k nested o")):
        assert picked == (b"0.4.0", b"/big"), name
    elif name == "100k nested in ipam":
        assert picked == (None, b"/d")
    else:
        assert picked == (None, None), name


# --- hypothesis -------------------------------------------------------------------------------------------------

class Obj(list):  # type: ignore[type-arg]
    """A JSON object as a list of (key, value) pairs, so a key may repeat."""


SUPPORTED_VERSIONS = ipamd_cni.SUPPORTED_VERSIONS
any_text = st.text(st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)), max_size=12)  # surrogates too
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                         any_text)
key_names = st.one_of(st.sampled_from(["cniVersion", "ipam", "socket", "name", "type", "cni\"Version"]), any_text)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.lists(st.tuples(key_names, inner), max_size=4).map(Obj)),
    max_leaves=12)


@st.composite
def configs(draw: st.DrawFn) -> Obj:
    top = draw(st.lists(st.tuples(key_names, json_values), max_size=4))
    for _ in range(draw(st.integers(0, 2))):  # the keys that matter, maybe more than once
        if draw(st.booleans()):
            top.append(("cniVersion", draw(st.one_of(any_text, st.sampled_from(SUPPORTED_VERSIONS), json_values))))
        if draw(st.booleans()):
            ipam = draw(st.lists(st.tuples(key_names, json_values), max_size=3))
            for _ in range(draw(st.integers(0, 2))):
                ipam.insert(draw(st.integers(0, len(ipam))), ("socket", draw(st.one_of(any_text, json_values))))
            top.append(("ipam", draw(st.one_of(st.just(Obj(ipam)), json_values))))
    order = draw(st.permutations(range(len(top))))
    return Obj(top[i] for i in order)


WS = st.text(st.sampled_from(" \t\r\n"), max_size=3)


@st.composite
def render(draw: st.DrawFn, value: Any) -> str:
    """JSON text for ``value`` with drawn white space and drawn escapes (any character may be written as \\uXXXX
    in either case, '/' as \\/, surrogate pairs as two escapes)."""
    def ws() -> str:
        return draw(WS)

    def string(text: str) -> str:
        out = ['"']
        for ch in text:
            code = ord(ch)
            form = draw(st.integers(0, 3))
            if ch == '"' or ch == "\\" or code < 0x20 or 0xD800 <= code < 0xE000 or form == 0:
                short = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\b": "\\b", "\f": "\\f",
                         "/": "\\/"}
                if ch in short and form < 2:
                    out.append(short[ch])
                elif code > 0xFFFF:
                    code -= 0x10000
                    esc = "\\u%04x\\u%04x" % (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF))
                    out.append(esc.upper().replace("\\U", "\\u") if form == 1 else esc)
                else:
                    esc = "\\u%04x" % code
                    out.append(esc.upper().replace("\\U", "\\u") if form == 1 else esc)
            else:
                out.append(ch)
        return "".join(out) + '"'

    def value_text(v: Any) -> str:
        if isinstance(v, Obj):
            return "{" + ws() + ("," + ws()).join(string(k) + ws() + ":" + ws() + value_text(x) + ws()
                                                  for k, x in v) + "}"
        if isinstance(v, list):
            return "[" + ws() + ("," + ws()).join(value_text(x) + ws() for x in v) + "]"
        if isinstance(v, str):
            return string(v)
        return json.dumps(v)

    return ws() + value_text(value) + ws()


ENCODINGS = ["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le",
             "utf-32-be"]


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    text = draw(render(draw(configs())))
    data = text.encode(draw(st.sampled_from(ENCODINGS)), "surrogatepass")
    mutation = draw(st.sampled_from(["none", "none", "truncate", "flip", "insert", "delete"]))
    if mutation != "none" and data:
        i = draw(st.integers(0, len(data) - 1))
        if mutation == "truncate":
            data = data[:i]
        elif mutation == "flip":
            data = data[:i] + bytes([data[i] ^ (1 << draw(st.integers(0, 7)))]) + data[i + 1:]
        elif mutation == "insert":
            data = data[:i] + draw(st.binary(min_size=1, max_size=4)) + data[i:]
        else:
            data = data[:i] + data[i + 1:]
    return data


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(documents())
def test_scanners_agree_with_json_on_generated_documents(native: NativeScanner, data: bytes) -> None:
    check(native, data)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=64), st.text(max_size=40).map(str.encode)))
def test_scanners_agree_on_random_bytes(native: NativeScanner, data: bytes) -> None:
    check(native, b'{"cniVersion":' + data + b"}")
    check(native, data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["-", "0", "1", "9", ".", "e", "E", "+", "x", " "]), max_size=10).map("".join))
def test_scanners_agree_on_number_forms(native: NativeScanner, number: str) -> None:
    check(native, ('{"cniVersion":"1","n":%s}' % number).encode())
    check(native, ("[%s]" % number).encode())


# --- the JSON strings the plugins write -------------------------------------------------------------------------

def native_quote(data: bytes) -> bytes:
    path, why = native_tool()
    if path is None:
        pytest.skip(why or "no native tool")
    return subprocess.run([path, "quote"], input=data, capture_output=True, check=True, timeout=30).stdout


@pytest.mark.parametrize("data", [b"", b"plain /run/x.sock", b'"\\', b"\x00\x1f\x7f", "é€😀".encode(),
                                  b"\xed\xa0\x80", b"\xff\xfe", b"\xe2\x82", b"a\xc3", b"\xf4\x90\x80\x80",
                                  b"\xc0\xaf", b"\xf0\x9f\x98"])
def test_quote_matches_python(data: bytes) -> None:
    assert native_quote(data) == ipamd_cni._quote(data)
    assert json.loads(native_quote(data)) == data.decode("utf-8", "surrogateescape")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=40))
def test_quote_matches_python_on_random_bytes(data: bytes) -> None:
    out = native_quote(data)
    assert out == ipamd_cni._quote(data)
    assert out.isascii() and json.loads(out) == data.decode("utf-8", "surrogateescape")


# --- IPAMD_CNI_TIMEOUT, read as Python's float() reads it --------------------------------------------------------

def native_timeout(raw: str) -> float:
    path, why = native_tool()
    if path is None:
        pytest.skip(why or "no native tool")
    return float(subprocess.run([path, "timeout", raw], capture_output=True, check=True, timeout=30).stdout)


@pytest.mark.parametrize("raw, expected", [
    ("", 30.0), ("5", 5.0), (" 2.5e-1\n", 0.25), ("0.2_5", 0.25), ("1_0", 10.0), ("+.5", 0.5), ("5.", 5.0),
    ("1e1_0", 30.0), ("0" * 80 + "7", 7.0), ("86400", 86400.0), ("86400.0001", 30.0), ("0", 30.0), ("-1", 30.0),
    ("nan", 30.0), ("inf", 30.0), ("1e999", 30.0), ("1e-999", 30.0), ("0x10", 30.0), ("_1", 30.0), ("1_", 30.0),
    ("1__0", 30.0), ("1 0", 30.0), (".", 30.0), ("e5", 30.0), ("1e", 30.0), ("1e+", 30.0), ("\u0663", 30.0),
    ("soon", 30.0), ("\v\f7\r", 7.0),
])
def test_timeout_table(raw: str, expected: float) -> None:
    assert ipamd_cni._timeout(raw.encode() or None) == expected
    assert native_timeout(raw) == expected


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["0", "1", "5", "9", ".", "e", "E", "+", "-", "_", " ", "\t", "x", "inf", "nan"]),
                min_size=1, max_size=8).map("".join))
def test_timeout_agrees_with_python(raw: str) -> None:
    assert native_timeout(raw) == ipamd_cni._timeout(raw.encode())
