"""The CNI socket: the daemon side of ``ipamd-cni`` (framing in docs/cni-socket.md) and the CNI verb handler.

Framing v1 (both directions start with the 7-byte magic ``IPAMD1\\n``; lengths are 4-byte big-endian)::

    request:  magic | len | env ("K=V\\0" pairs) | len | stdin bytes | len | stdin read error text ("" if none)
    response: magic | exit status (1 byte) | len | stdout bytes | len | stderr bytes

A request is at most :data:`MAX_REQUEST` bytes and must arrive within :data:`READ_DEADLINE` seconds. The framing's
constants and encoders have one Python home, the plugin module ``ipamd_cni`` (client/ipamd_cni.py), imported here.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Mapping

from ipamd_cni import MAGIC, MAX_REQUEST, READ_DEADLINE, encode_response

from .domain.cni import (
    ABOUT,
    SUPPORTED_VERSIONS,
    VERBS,
    AboutRequest,
    CniRequest,
    decode_request,
    decode_version_request,
    loads_strict,
    render_result,
    requested_addresses,
)
from .domain.errors import InvalidConfig, IpamError, TryAgainLater
from .domain.netconf import parse_netconf_cached
from .service import IpamService
from .sockets import Claim

log = logging.getLogger(__name__)


def handle_cni(service: IpamService, env: Mapping[str, str], stdin: bytes,
               stdin_error: str | None) -> tuple[int, bytes, bytes]:
    """Run one CNI call; returns ``(exit status, stdout, stderr)``.

    stdout carries exactly one JSON document (ADD result, VERSION object, or error object) or nothing
    (DEL/CHECK/GC/STATUS success). Never raises: unexpected exceptions become code 999 without a traceback on
    stdout (the traceback goes to the daemon log). Logs one line per call with its context
    (docs/configuration.md "Log lines").
    """
    started = time.monotonic()
    command = env.get("CNI_COMMAND", "") or ""
    stderr: list[str] = []
    cni_version = "1.1.0"
    ctx: dict[str, object] = {"container_id": env.get("CNI_CONTAINERID"), "if_name": env.get("CNI_IFNAME")}
    try:
        if command == "VERSION":
            out = {"cniVersion": decode_version_request(None if stdin_error else stdin),
                   "supportedVersions": list(SUPPORTED_VERSIONS)}
            return _finish(service, "VERSION", started, 0, json.dumps(out).encode(), stderr, ctx)
        try:
            req = decode_request(env, stdin, stdin_error)
        except AboutRequest:
            stderr.append(ABOUT)
            return _finish(service, "ABOUT", started, 0, b"", stderr, ctx)
        except IpamError:
            try:
                raw = loads_strict(stdin or b"")
                if isinstance(raw, dict) and isinstance(raw.get("cniVersion"), str) and raw["cniVersion"]:
                    cni_version = raw["cniVersion"]
            except (ValueError, UnicodeDecodeError, RecursionError):
                pass
            raise
        cni_version = req.cni_version
        ctx["network"] = req.name
        stderr.extend(req.warnings)
        out_obj = _run_verb(service, req, stderr, ctx)
        body = json.dumps(out_obj).encode() if out_obj is not None else b""
        return _finish(service, command, started, 0, body, stderr, ctx)
    except IpamError as exc:
        return _finish(service, command, started, 1, json.dumps(exc.to_cni(cni_version)).encode(), stderr, ctx,
                       exc)
    except Exception as exc:
        log.exception("CNI %s: unexpected error", command, extra=ctx)
        err = IpamError("internal error: %s" % (exc.__class__.__name__,), str(exc))
        return _finish(service, command, started, 1, json.dumps(err.to_cni(cni_version)).encode(), stderr, ctx,
                       err)


def _run_verb(service: IpamService, req: CniRequest, stderr: list[str],
              ctx: dict[str, object]) -> dict[str, object] | None:
    att = req.attachment
    if req.command == "ADD":
        netconf = parse_netconf_cached(req.conf, req.name)
        stderr.extend(netconf.warnings)
        pod = {k: req.args[a] for k, a in (("namespace", "K8S_POD_NAMESPACE"), ("name", "K8S_POD_NAME"),
                                             ("uid", "K8S_POD_UID")) if req.args.get(a)}
        # requested addresses are looked up in the named pools (ipam.pools) resolved for the pod's namespace
        allocations = service.add(att, netconf, netns=req.netns, pod=pod,
                                  requested_of=lambda resolved: requested_addresses(req, resolved))
        ctx["addresses"] = [a.cidr for a in allocations]
        return render_result(req.cni_version, allocations, service.with_pool_routes(netconf, allocations))
    if req.command == "DEL":
        service.delete(att)
        return None
    if req.command == "CHECK":
        netconf = parse_netconf_cached(req.conf, req.name)
        stderr.extend(service.check(att, netconf, req.conf.get("prevResult"), req.netns))
        return None
    if req.command == "STATUS":
        netconf = parse_netconf_cached(req.conf, req.name)
        service.status(netconf)
        return None
    if req.command == "GC":
        valid = gc_valid_attachments(req.conf)
        if valid is None:
            stderr.append("GC without cni.dev/valid-attachments or cni.dev/attachments: releasing nothing")
            return None
        service.gc(req.name, valid)
        return None
    raise TryAgainLater("unhandled verb %s" % req.command)


def gc_valid_attachments(conf: dict[str, object]) -> set[tuple[str, str]] | None:
    """The GC keep-list: ``cni.dev/valid-attachments``, else the legacy ``cni.dev/attachments`` (cni#1101),
    as a set of (containerID, ifname); ``None`` when neither key is present (then GC releases nothing).
    Raises :class:`InvalidConfig` (7) naming the key for a malformed list."""
    for key in ("cni.dev/valid-attachments", "cni.dev/attachments"):
        if key not in conf:
            continue
        raw = conf[key]
        if not isinstance(raw, list):
            raise InvalidConfig("%s %r is not a list" % (key, raw))
        out = set()
        for item in raw:
            if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                    or not isinstance(item.get("ifname"), str):
                raise InvalidConfig("%s entry %r needs string containerID and ifname" % (key, item))
            out.add((item["containerID"], item["ifname"]))
        return out
    return None


def _finish(service: IpamService, verb: str, started: float, status: int, stdout: bytes, stderr: list[str],
            ctx: dict[str, object], error: IpamError | None = None) -> tuple[int, bytes, bytes]:
    m = service.metrics
    label = verb if verb in VERBS or verb == "ABOUT" else "OTHER"  # no label per junk command
    code = error.cni_code if error is not None else 0
    took = time.monotonic() - started
    m.request(label, code, took)
    if verb != "VERSION" and log.isEnabledFor(logging.INFO):
        ctx["duration_ms"] = took * 1000.0
        ctx["code"] = code
        if error is None:
            log.info("CNI %s ok", label, extra=ctx)
        else:
            log.info("CNI %s failed: %s", label, error.msg, extra=ctx)
    text = "".join("ipamd: %s\n" % line for line in stderr).encode()
    return status, stdout, text


def read_request(conn: socket.socket) -> tuple[dict[str, str], bytes, str | None]:
    """Read one framed request (docs/cni-socket.md); most arrive in one ``recv``. The whole request must arrive
    within :data:`READ_DEADLINE` seconds and be at most :data:`MAX_REQUEST` bytes. Raises ``ValueError`` on a bad
    frame, ``ConnectionError``/``OSError`` (``TimeoutError``) on I/O."""
    deadline = time.monotonic() + READ_DEADLINE
    conn.settimeout(READ_DEADLINE)
    buf = bytearray()

    def need(n: int) -> None:
        while len(buf) < n:
            if time.monotonic() > deadline:
                raise TimeoutError("request not received within %.0f s" % READ_DEADLINE)
            chunk = conn.recv(max(1 << 16, n - len(buf)))
            if not chunk:
                raise ConnectionError("peer closed after %d of %d bytes" % (len(buf), n))
            buf.extend(chunk)

    need(len(MAGIC))
    if buf[:len(MAGIC)] != MAGIC:
        raise ValueError("bad magic: not an ipamd-cni v1 request")
    pos = len(MAGIC)
    parts = []
    for _ in range(3):
        need(pos + 4)
        n = int.from_bytes(buf[pos:pos + 4], "big")
        pos += 4
        if pos + n > MAX_REQUEST:
            raise ValueError("request larger than %d bytes" % MAX_REQUEST)
        need(pos + n)
        parts.append(bytes(buf[pos:pos + n]))
        pos += n
    env = {}
    for pair in parts[0].split(b"\0"):
        if pair:
            k, _, v = pair.decode("utf-8", "surrogateescape").partition("=")
            env[k] = v
    err = parts[2].decode("utf-8", "replace") or None
    return env, parts[1], err


class CniServer:
    """Serves the CNI socket of ``claim`` (:func:`ipamd.sockets.claim`: mode, owner and replacement rules of field
    case B46) with ``workers`` threads, each accepting and answering one connection at a time (no hand-off between
    threads: a request costs one accept, one or two recvs and one send). :meth:`stop` stops accepting and lets the
    requests in flight finish. Raises :class:`ipamd.sockets.SocketError` when the socket cannot be made."""

    def __init__(self, service: IpamService, claim: Claim, workers: int = 32) -> None:
        self.service = service
        self.path = claim.path
        self._claim = claim
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            claim.bind(self._sock.bind)
        except BaseException:
            self._sock.close()
            raise
        self._sock.listen(256)
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._worker, name="cni-%d" % i, daemon=True)
                         for i in range(workers)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _worker(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                # e.g. EMFILE: back off instead of spinning on a listening socket that stays readable
                log.warning("CNI socket accept failed: %s", exc)
                self._stopping.wait(0.1)
                continue
            try:
                self._serve(conn)
            except Exception:
                log.exception("CNI worker: unexpected error")

    def _serve(self, conn: socket.socket) -> None:
        try:
            try:
                env, stdin, err = read_request(conn)
            except (ValueError, ConnectionError, OSError) as exc:
                log.warning("bad CNI request: %s", exc)
                return
            conn.sendall(encode_response(*handle_cni(self.service, env, stdin, err)))
        except OSError as exc:
            log.info("CNI client went away: %s", exc)
        finally:
            conn.close()

    def stop(self) -> None:
        """Stop accepting, finish requests in flight, close and remove the socket."""
        self._stopping.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        for t in self._threads:
            t.join(timeout=self.service.request_timeout + READ_DEADLINE)
        self._claim.release()
