"""A history checker for ipamd (issue 8 "history checker and soak"; docs/reliability.md): record every ADD and DEL
several daemons answered, with start and end times and results, plus snapshots of etcd taken along the way, then
check the two promises an IPAM makes:

1. **No address is ever held by two live attachments at once.** An attachment *surely* holds what an acknowledged
   ADD returned from the moment that ADD answered until the moment the next DEL of it was sent; two attachments
   whose sure intervals overlap on one address are a duplicate.
2. **Every acknowledged allocation is still there until its DEL.** A snapshot of the handles read during a sure
   interval must hold the attachment with exactly those addresses; a retried ADD of an attachment that surely holds
   addresses must return the same ones.

An operation that failed (code 11 after a fault) proves nothing either way: it may or may not have committed, and
only later acknowledged operations and snapshots are judged. The checker is pure; :class:`Workload` drives
clients against daemons' CNI sockets (the plugin's framing from ``ipamd_cni``), used by the integration test
(tests/integration/test_history_faults.py) and the soak (bench/soak.py).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import ipamd_cni


@dataclass(frozen=True, slots=True)
class Op:
    """One answered call: ``kind`` ADD or DEL (or GONE: the owner vanished without a DEL, its namespace removed),
    the daemon's ``node``, the ``attachment`` (handle id), monotonic ``start``/``end`` seconds, ``code`` (0:
    success), and the ``addresses`` an ADD returned."""

    kind: str
    node: str
    attachment: str
    start: float
    end: float
    code: int
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The handles read from etcd between ``start`` and ``end``: attachment -> its addresses."""

    start: float
    end: float
    handles: dict[str, tuple[str, ...]]


@dataclass(slots=True)
class History:
    """The record of a run; thread-safe :meth:`add` and :meth:`snapshot`."""

    ops: list[Op] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, op: Op) -> None:
        with self._lock:
            self.ops.append(op)

    def snapshot(self, snap: Snapshot) -> None:
        with self._lock:
            self.snapshots.append(snap)

    def sure_intervals(self) -> dict[str, list[tuple[float, float, tuple[str, ...]]]]:
        """attachment -> [(from, until, addresses)]: from an acknowledged ADD's answer to the next DEL's start (or
        forever)."""
        by_att: dict[str, list[Op]] = {}
        for op in sorted(self.ops, key=lambda o: o.start):
            by_att.setdefault(op.attachment, []).append(op)
        out: dict[str, list[tuple[float, float, tuple[str, ...]]]] = {}
        for att, ops in by_att.items():
            spans = []
            held: tuple[float, tuple[str, ...]] | None = None
            for op in ops:
                if op.kind in ("DEL", "GONE"):  # GONE: the owner went away without a DEL (the reconciler's job)
                    if held is not None:
                        spans.append((held[0], op.start, held[1]))
                        held = None
                elif op.kind == "ADD" and op.code == 0 and held is None:
                    held = (op.end, op.addresses)
            if held is not None:
                spans.append((held[0], float("inf"), held[1]))
            out[att] = spans
        return out

    def check(self) -> list[str]:
        """Every problem found (empty: both promises held)."""
        problems: list[str] = []
        intervals = self.sure_intervals()
        # 1. duplicates: sweep each address's sure intervals in time order
        by_address: dict[str, list[tuple[float, float, str]]] = {}
        for att, spans in intervals.items():
            for start, end, addresses in spans:
                for address in addresses:
                    by_address.setdefault(address.split("/")[0], []).append((start, end, att))
        for address, held_by in by_address.items():
            held_by.sort()
            latest: tuple[float, float, str] | None = None  # the span reaching furthest so far
            for s2, e2, a2 in held_by:
                if latest is not None and s2 < latest[1] and latest[2] != a2:
                    problems.append("address %s held by %s and %s at once (%.3f-%.3f and %.3f-%.3f)"
                                    % (address, latest[2], a2, latest[0], latest[1], s2, e2))
                if latest is None or e2 > latest[1]:
                    latest = (s2, e2, a2)
        # 2a. a retried ADD of an attachment that surely holds addresses returns the same ones
        for op in self.ops:
            if op.kind != "ADD" or op.code != 0:
                continue
            for start, end, addresses in intervals.get(op.attachment, ()):
                if start <= op.start and op.end <= end and op.addresses != addresses:
                    problems.append("ADD of %s at %.3f returned %s, but it held %s"
                                    % (op.attachment, op.start, op.addresses, addresses))
        # 2b. every snapshot taken inside a sure interval shows the allocation unchanged
        for snap in self.snapshots:
            for att, spans in intervals.items():
                for start, end, addresses in spans:
                    if start <= snap.start and snap.end <= end and snap.handles.get(att) != addresses:
                        problems.append("acknowledged allocation of %s (%s) missing from the snapshot at "
                                        "%.3f-%.3f: found %s" % (att, addresses, snap.start, snap.end,
                                                                 snap.handles.get(att)))
        return problems

    def summary(self) -> dict[str, int]:
        adds = [o for o in self.ops if o.kind == "ADD"]
        dels = [o for o in self.ops if o.kind == "DEL"]
        return {"adds": len(adds), "adds_ok": sum(o.code == 0 for o in adds), "dels": len(dels),
                "dels_ok": sum(o.code == 0 for o in dels), "snapshots": len(self.snapshots),
                "attachments": len({o.attachment for o in self.ops}),
                "abandoned": sum(o.kind == "GONE" for o in self.ops)}


def _call(path: str, command: str, network: str, container_id: str, conf: bytes, timeout: float,
          netns: str = "/var/run/netns/history") -> tuple[int, tuple[str, ...]]:
    """One CNI call through a daemon's socket: (code, addresses). A daemon that cannot be reached is code 11."""
    env = b"".join(b"%s=%s\0" % (k, v) for k, v in (
        (b"CNI_COMMAND", command.encode()), (b"CNI_CONTAINERID", container_id.encode()), (b"CNI_IFNAME", b"eth0"),
        (b"CNI_NETNS", netns.encode()), (b"CNI_PATH", b"/opt/cni/bin")))
    try:
        status, out, _ = ipamd_cni.exchange(path.encode(), ipamd_cni.encode_request(env, conf, b""), timeout)
    except OSError:
        return 11, ()
    if status != 0:
        try:
            return int(json.loads(out).get("code", 999)), ()
        except ValueError:
            return 999, ()
    if command != "ADD":
        return 0, ()
    return 0, tuple(ip["address"] for ip in json.loads(out)["ips"])


class Workload:
    """Clients calling ADD and DEL like a runtime would: each keeps a few attachments live, sometimes repeats an ADD,
    retries an ADD or DEL that answered 11, and at the end deletes everything it created. ``sockets`` maps node ->
    CNI socket path (read at every call, so a restarted daemon's new path is picked up). With ``netns_dir``, every
    attachment gets a file there as its namespace, and a fraction ``abandon`` of them is abandoned instead of
    deleted: the file is removed and no DEL is sent (a pod that vanished; the daemon's reconciler must release it)."""

    def __init__(self, sockets: dict[str, str], conf: bytes, history: History, *, clients_per_node: int = 2,
                 live: int = 4, seed: int = 1, timeout: float = 30.0, netns_dir: str | None = None,
                 abandon: float = 0.0) -> None:
        self.sockets, self.conf, self.history = sockets, conf, history
        self.netns_dir, self.abandon = netns_dir, abandon
        self.network = json.loads(conf)["name"]
        self.clients_per_node, self.live, self.timeout = clients_per_node, live, timeout
        self.rand = random.Random(seed)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def _netns(self, cid: str) -> str:
        return os.path.join(self.netns_dir, cid) if self.netns_dir else "/var/run/netns/history"

    def _op(self, node: str, kind: str, cid: str) -> int:
        start = time.monotonic()
        code, addresses = _call(self.sockets[node], kind, self.network, cid, self.conf, self.timeout,
                                self._netns(cid))
        self.history.add(Op(kind, node, "%s/%s/eth0" % (self.network, cid), start, time.monotonic(), code,
                            addresses))
        return code

    def _until_ok(self, node: str, kind: str, cid: str, bound: float) -> bool:
        deadline = time.monotonic() + bound
        while True:
            code = self._op(node, kind, cid)
            if code == 0:
                return True
            if code != 11 or time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def _client(self, node: str, index: int, seed: int) -> None:
        rand = random.Random(seed)
        live: list[str] = []
        n = 0
        while not self.stop.is_set():
            if len(live) < self.live and (not live or rand.random() < 0.6):
                cid = "%s-%d-%d" % (node, index, n)
                n += 1
                if self.netns_dir:
                    with open(self._netns(cid), "w"):
                        pass
                if self._until_ok(node, "ADD", cid, 60):
                    live.append(cid)
                    if rand.random() < 0.2:
                        self._op(node, "ADD", cid)  # a runtime repeating ADD: must return the same address
                else:
                    self._until_ok(node, "DEL", cid, 120)  # give back whatever a failed ADD may have taken
            elif live:
                cid = live.pop(rand.randrange(len(live)))
                if self.netns_dir and rand.random() < self.abandon:
                    now = time.monotonic()
                    self.history.add(Op("GONE", node, "%s/%s/eth0" % (self.network, cid), now, now, 0))
                    os.unlink(self._netns(cid))
                elif not self._until_ok(node, "DEL", cid, 120):
                    live.append(cid)
        for cid in live:
            self._until_ok(node, "DEL", cid, 300)

    def start(self) -> None:
        for node in sorted(self.sockets):
            for i in range(self.clients_per_node):
                t = threading.Thread(target=self._client, args=(node, i, self.rand.random()), daemon=True,
                                     name="client-%s-%d" % (node, i))
                t.start()
                self.threads.append(t)

    def finish(self, timeout: float = 600.0) -> None:
        """Stop creating attachments, delete every live one, wait for the clients."""
        self.stop.set()
        for t in self.threads:
            t.join(timeout)


def snapshot_of(read: Callable[[], Iterable[tuple[str, tuple[str, ...]]]]) -> Snapshot:
    """A :class:`Snapshot` around one read of the handles (``read`` returns (attachment, addresses) pairs)."""
    start = time.monotonic()
    handles = dict(read())
    return Snapshot(start, time.monotonic(), handles)
