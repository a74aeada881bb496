"""Release cooldown (field case B09, decision 1): the etcd leases that end cooling records, and the records a
release writes.

A release of an address whose pool has ``releaseCooldownSeconds`` > 0 writes ``cooling/<network>/v4|v6/<hex>``
in the same transaction that deletes the address record (docs/etcd-layout.md). The record is attached to an etcd
lease, so it is etcd that ends the cooldown: the local clock is never asked (a daemon restarted with its clock ten
minutes ahead still sees the record), and the record outlives the daemon that wrote it.

Leases are shared, so their number stays flat however many addresses are released: one lease per cooldown value
and *window* of ``window(seconds)`` seconds (a tenth of the cooldown, at least 1 s), granted with TTL ``seconds +
window`` and used only during the window after its grant. A record attached during the window therefore cools for
at least ``seconds`` and at most ``seconds + window`` (10 % more). A daemon holds at most about 11 live leases per
cooldown value in use, whatever the churn; a release costs one LeaseGrant round trip only when its window's lease
is not granted yet. Cooling leases are never revoked (not even at shutdown): their expiry *is* the cooldown.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from .domain.model import CoolingRecord, cooling_key
from .store.base import Put, Store


def window(seconds: int) -> int:
    """Seconds during which one lease is used for new cooling records of a ``seconds`` cooldown."""
    return max(1, -(-seconds // 10))


def lease_is_gone(exc: BaseException) -> bool:
    """etcd refused a put because its lease no longer exists (expired or revoked; ``requested lease not found``)."""
    return "lease not found" in str(exc)


class CoolingLeases:
    """The leases of one process's cooling records, by cooldown value. Thread-safe. ``clock``: a monotonic clock in
    seconds, used only to tell when a window is over (never to measure a cooldown)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self._lock = threading.Lock()
        self._leases: dict[int, tuple[int, float]] = {}
        self.grants = 0

    def lease(self, seconds: int, timeout: float) -> int:
        """A lease for a cooling record of ``seconds``: the current window's, granted now when there is none.
        Raises the store's errors (``StoreUnavailable``: code 11)."""
        now = self.clock()
        with self._lock:
            found = self._leases.get(seconds)
            if found is not None and now - found[1] < window(seconds):
                return found[0]
        lease_id = self.store.grant_lease(seconds + window(seconds), timeout)
        with self._lock:
            self.grants += 1
            self._leases[seconds] = (lease_id, now)  # the window counts from before the grant: conservative
        return lease_id

    def forget(self) -> None:
        """Drop every lease known (after etcd said one is gone): the next release grants a new one."""
        with self._lock:
            self._leases.clear()

    def puts(self, ip_keys: Iterable[str], cooldown_of: Callable[[str], tuple[str, int]],
             timeout: float) -> dict[str, Put]:
        """The cooling record puts for releasing ``ip_keys``, by address key: one for each key whose pool has a
        cooldown (``cooldown_of(key)`` -> ``(pool id, seconds)``), none otherwise (no lease is granted then)."""
        out: dict[str, Put] = {}
        for key in ip_keys:
            pool, seconds = cooldown_of(key)
            if seconds > 0:
                out[key] = Put(cooling_key(key), CoolingRecord(pool, seconds).encode(), self.lease(seconds, timeout))
        return out
