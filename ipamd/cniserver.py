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
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping

from ipamd_cni import MAGIC, MAX_REQUEST, READ_DEADLINE, encode_response

from .domain.cni import (ABOUT, SUPPORTED_VERSIONS, VERBS, AboutRequest, CniRequest, decode_request,
                         decode_version_request, loads_strict, render_result, requested_addresses)
from .domain.errors import InvalidConfig, IpamError, TryAgainLater
from .domain.netconf import parse_netconf
from .service import IpamService

log = logging.getLogger(__name__)


def handle_cni(service: IpamService, env: Mapping[str, str], stdin: bytes,
               stdin_error: str | None) -> tuple[int, bytes, bytes]:
    """Run one CNI call; returns ``(exit status, stdout, stderr)``.

    stdout carries exactly one JSON document (ADD result, VERSION object, or error object) or nothing
    (DEL/CHECK/GC/STATUS success). Never raises: unexpected exceptions become code 999 without a traceback
    on stdout (the traceback goes to the daemon log).
    """
    started = time.monotonic()
    command = env.get("CNI_COMMAND", "") or ""
    stderr: list[str] = []
    cni_version = "1.1.0"
    try:
        if command == "VERSION":
            out = {"cniVersion": decode_version_request(None if stdin_error else stdin),
                   "supportedVersions": list(SUPPORTED_VERSIONS)}
            return _finish(service, "VERSION", started, 0, json.dumps(out).encode(), stderr)
        try:
            req = decode_request(env, stdin, stdin_error)
        except AboutRequest:
            stderr.append(ABOUT)
            return _finish(service, "ABOUT", started, 0, b"", stderr)
        except IpamError:
            try:
                raw = loads_strict(stdin or b"")
                if isinstance(raw, dict) and isinstance(raw.get("cniVersion"), str) and raw["cniVersion"]:
                    cni_version = raw["cniVersion"]
            except (ValueError, UnicodeDecodeError, RecursionError):
                pass
            raise
        cni_version = req.cni_version
        stderr.extend(req.warnings)
        out_obj = _run_verb(service, req, stderr)
        body = json.dumps(out_obj).encode() if out_obj is not None else b""
        return _finish(service, command, started, 0, body, stderr, req)
    except IpamError as exc:
        log.info("CNI %s failed: code %d: %s", command, exc.cni_code, exc.msg,
                 extra={"container_id": env.get("CNI_CONTAINERID"), "if_name": env.get("CNI_IFNAME")})
        return _finish(service, command, started, 1, json.dumps(exc.to_cni(cni_version)).encode(), stderr,
                       code=exc.cni_code)
    except Exception as exc:  # noqa: BLE001 - the CNI contract wants code 999, not a crash
        log.exception("CNI %s: unexpected error", command)
        err = IpamError("internal error: %s" % (exc.__class__.__name__,), str(exc))
        return _finish(service, command, started, 1, json.dumps(err.to_cni(cni_version)).encode(), stderr,
                       code=999)


def _run_verb(service: IpamService, req: CniRequest, stderr: list[str]) -> dict[str, object] | None:
    att = req.attachment
    if req.command == "ADD":
        netconf = parse_netconf(req.conf, req.name)
        stderr.extend(netconf.warnings)
        requested = requested_addresses(req, netconf)
        pod = {k: req.args[a] for k, a in (("namespace", "K8S_POD_NAMESPACE"), ("name", "K8S_POD_NAME"),
                                             ("uid", "K8S_POD_UID")) if req.args.get(a)}
        allocations = service.add(att, netconf, requested=requested, netns=req.netns, pod=pod)
        return render_result(req.cni_version, allocations, netconf)
    if req.command == "DEL":
        service.delete(att)
        return None
    if req.command == "CHECK":
        netconf = parse_netconf(req.conf, req.name)
        service.check(att, netconf, req.conf.get("prevResult"))
        return None
    if req.command == "STATUS":
        netconf = parse_netconf(req.conf, req.name)
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
            req: CniRequest | None = None, code: int = 0) -> tuple[int, bytes, bytes]:
    m = service.metrics
    label = verb if verb in VERBS or verb == "ABOUT" else "OTHER"  # no label per junk command
    m.requests.labels(label, "ok" if status == 0 else str(code)).inc()
    if verb == "ADD":
        m.add_seconds.observe(time.monotonic() - started)
    if status == 0 and req is not None:
        log.info("CNI %s ok", verb, extra={"container_id": req.container_id, "if_name": req.if_name})
    text = "".join("ipamd: %s\n" % line for line in stderr).encode()
    return status, stdout, text


def _recv_exact(conn: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("request not received within %.0f s" % READ_DEADLINE)
        conn.settimeout(remaining)  # the whole request must arrive by the deadline, not each recv
        chunk = conn.recv(min(n - len(buf), 1 << 16))
        if not chunk:
            raise ConnectionError("peer closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def read_request(conn: socket.socket) -> tuple[dict[str, str], bytes, str | None]:
    """Read one framed request; raises ``ValueError`` on a bad frame, ``ConnectionError``/``OSError`` on I/O."""
    deadline = time.monotonic() + READ_DEADLINE
    if _recv_exact(conn, len(MAGIC), deadline) != MAGIC:
        raise ValueError("bad magic: not an ipamd-cni v1 request")
    parts = []
    total = 0
    for _ in range(3):
        n = int.from_bytes(_recv_exact(conn, 4, deadline), "big")
        total += n
        if total > MAX_REQUEST:
            raise ValueError("request larger than %d bytes" % MAX_REQUEST)
        parts.append(_recv_exact(conn, n, deadline))
    env = {}
    for pair in parts[0].split(b"\0"):
        if pair:
            k, _, v = pair.decode("utf-8", "surrogateescape").partition("=")
            env[k] = v
    err = parts[2].decode("utf-8", "replace") or None
    return env, parts[1], err


class CniServer:
    """Serves the CNI socket at ``path`` with a bounded worker pool; :meth:`stop` drains requests in flight."""

    def __init__(self, service: IpamService, path: str, workers: int = 32) -> None:
        self.service = service
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cni")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # a stale socket of a previous run; a live daemon holds a lock elsewhere
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(path)
        os.chmod(path, 0o600)
        self._sock.listen(256)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="cni-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _accept_loop(self) -> None:
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
                self._pool.submit(self._serve, conn, time.monotonic())
            except RuntimeError:  # shutting down
                conn.close()

    def _serve(self, conn: socket.socket, accepted: float) -> None:
        try:
            try:
                env, stdin, err = read_request(conn)
            except (ValueError, ConnectionError, OSError) as exc:
                log.warning("bad CNI request: %s", exc)
                return
            conn.settimeout(None)
            if time.monotonic() - accepted > self.service.request_timeout:
                out = encode_response(1, json.dumps(TryAgainLater("ipamd overloaded: request waited too long")
                                                    .to_cni("1.1.0")).encode(), b"")
            else:
                out = encode_response(*handle_cni(self.service, env, stdin, err))
            conn.sendall(out)
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
        self._thread.join(timeout=2)
        self._pool.shutdown(wait=True)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
