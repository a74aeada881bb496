"""Group commit: concurrent transactions of this daemon sent to etcd as one transaction when that is equivalent to
sending them one after the other (docs/architecture.md "Group commit").

Why: the etcd client's per-call cost (~0.2-0.3 ms of CPU for a small transaction from Python) is most of an ADD's
cost, while etcd applies a transaction of 20 puts about as fast as one of 2. So requests that arrive while earlier
ones are on the wire share the next round trip.

When it is safe: a transaction of several parts succeeds only if every part's compares hold on the state before it,
and then applies every part's writes. That equals running the parts one by one, in any order, exactly when no part
compares or writes a key another part writes (then no part's writes can change another's compares, and no key is
written twice, which etcd would refuse). :class:`GroupCommit` merges only such parts, and only parts whose success
branch has no reads. If the merged transaction fails (some part's compare failed), every part is sent again on its
own, with its own failure reads: the caller sees exactly the answer it would have had alone. An error (etcd
unavailable, outcome unknown) is every part's error: an unknown outcome is resolved by each caller's next attempt
as usual.

No request waits for a batch to fill: a request is sent as soon as a send slot is free, with whatever is queued.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .domain.errors import IpamError
from .store.base import Compare, Delete, Get, Op, Put, Store, StoreRejected, StoreUnavailable, TxnResult

#: etcd's default --max-txn-ops is 128 per list; stay under it.
MAX_BATCH_OPS = 120


@dataclass(slots=True)
class _Part:
    compares: Sequence[Compare]
    success: Sequence[Op]
    failure: Sequence[Op]
    timeout: float
    done: threading.Event = field(default_factory=threading.Event)
    result: TxnResult | None = None
    error: IpamError | None = None
    alone: bool = False  # answer by sending it again on its own

    def keys(self) -> tuple[set[str], set[str]]:
        """(keys its compares read, keys its success branch writes)."""
        return ({c.key for c in self.compares},
                {op.key for op in self.success if isinstance(op, (Put, Delete))})


class GroupCommit:
    """Send transactions through ``store``, merging concurrent ones (see the module docstring).

    A transaction that finds no round trip on the wire and nothing queued is sent at once by its caller. Otherwise
    it is queued, and one of ``max_inflight`` sender threads sends everything queued that can go together as soon as
    a round trip is free; the caller waits for its own answer only. ``on_send(parts)`` is called for every round
    trip with the number of transactions it carried (metrics). Thread-safe. :meth:`txn` has the store's signature
    and semantics (same result, same errors, for each caller).
    """

    def __init__(self, store: Store, max_inflight: int = 2,
                 on_send: Callable[[int], None] | None = None) -> None:
        self.store = store
        self.on_send = on_send
        #: operations per list a merged transaction may carry; lowered when etcd's --max-txn-ops refuses one (B24)
        self.max_ops = MAX_BATCH_OPS
        self.max_inflight = max_inflight
        self._cond = threading.Condition()
        self._queue: list[_Part] = []
        self._inflight = 0
        self._senders: list[threading.Thread] = []

    def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op],
            timeout: float) -> TxnResult:
        """Like :meth:`ipamd.store.base.Store.txn`; may share its round trip with concurrent calls."""
        if any(isinstance(op, Get) for op in success):
            return self._direct(compares, success, failure, timeout)
        with self._cond:
            alone = self._inflight < self.max_inflight and not self._queue
            if alone:
                self._inflight += 1
            else:
                part = _Part(compares, success, failure, timeout)
                self._queue.append(part)
                if len(self._senders) < self.max_inflight:
                    t = threading.Thread(target=self._sender, name="etcd-batch-%d" % len(self._senders), daemon=True)
                    self._senders.append(t)
                    t.start()
                self._cond.notify()
        if alone:
            try:
                return self._direct(compares, success, failure, timeout)
            finally:
                with self._cond:
                    self._inflight -= 1
                    self._cond.notify()
        if not part.done.wait(timeout):
            with self._cond:
                if part in self._queue:  # never sent: the caller may simply retry it
                    self._queue.remove(part)
                    raise StoreUnavailable("no etcd round trip free within %.1f s" % timeout)
            part.done.wait()  # on the wire: its answer (or error) comes within the store's own timeout
        if part.alone:
            return self._direct(compares, success, failure, timeout)
        if part.error is not None:
            raise part.error
        if part.result is None:  # cannot happen: done is set with a result or an error
            raise StoreRejected("internal: a batched transaction ended without an answer")
        return part.result

    def _sender(self) -> None:
        """Sends queued transactions, as many together as may go together, whenever a round trip is free."""
        while True:
            with self._cond:
                while not self._queue or self._inflight >= self.max_inflight:
                    self._cond.wait()
                self._inflight += 1
                batch = self._take()
            try:
                self._send(batch)
            except Exception as exc:  # noqa: BLE001 - a sender never dies; its parts get the error (B53)
                for part in batch:
                    if not part.done.is_set():
                        part.error = StoreUnavailable("internal: %s: %s" % (exc.__class__.__name__, exc))
                        part.done.set()
            finally:
                with self._cond:
                    self._inflight -= 1
                    self._cond.notify()

    def _direct(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op],
                timeout: float) -> TxnResult:
        if self.on_send is not None:
            self.on_send(1)
        return self.store.txn(compares, success, failure, timeout)

    def _take(self) -> list[_Part]:
        """The queued parts that can go together, oldest first, within the op limit; the others stay queued.
        Called with the condition held and the queue not empty."""
        batch: list[_Part] = []
        compared: set[str] = set()
        written: set[str] = set()
        ops = [0, 0]
        keep: list[_Part] = []
        for part in self._queue:
            reads, writes = part.keys()
            fits = ops[0] + len(part.compares) <= self.max_ops and ops[1] + len(part.success) <= self.max_ops
            independent = not (writes & (compared | written)) and not (reads & written)
            if not batch or (fits and independent):
                batch.append(part)
                compared |= reads
                written |= writes
                ops[0] += len(part.compares)
                ops[1] += len(part.success)
            else:
                keep.append(part)
        self._queue = keep
        return batch

    def _send(self, batch: list[_Part]) -> None:
        if len(batch) == 1:
            part = batch[0]
            try:
                part.result = self._direct(part.compares, part.success, part.failure, part.timeout)
            except IpamError as exc:
                part.error = exc
            finally:
                part.done.set()
            return
        compares = [c for part in batch for c in part.compares]
        success = [op for part in batch for op in part.success]
        try:
            if self.on_send is not None:
                self.on_send(len(batch))
            res = self.store.txn(compares, success, [], min(part.timeout for part in batch))
        except StoreRejected as exc:
            if "too many operations" in exc.msg:  # etcd's --max-txn-ops is lower than ours: merge less from now on
                with self._cond:
                    self.max_ops = max(1, min(self.max_ops, max(len(compares), len(success)) // 2))
            for part in batch:  # e.g. too large together: each on its own
                part.alone = True
                part.done.set()
            return
        except IpamError as exc:
            for part in batch:
                part.error = exc
                part.done.set()
            return
        for part in batch:
            if res.succeeded:
                part.result = TxnResult(True, res.revision, ())
            else:
                part.alone = True  # some part's compare failed: each learns its own answer alone
            part.done.set()
