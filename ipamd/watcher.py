"""The watch that keeps the node's view fresh (docs/architecture.md "Watch").

From the revision of the view's last full read, one etcd watch stream follows ``pools/``, ``blocks/``,
``poolspecs/`` (named pools' specs) and the
address range and the cooling-record range (B09) of each block this node owns (ranges come and go with the node's
blocks). Each update is applied to the cache (:meth:`ipamd.cache.NodeCache.apply`, which skips what it already knows
better). When etcd has compacted the history the watch needs, the view is read again in full and a new watch starts
from that read: never a stale view. Any other failure closes the watch; the next round (after the supervisor's
backoff) opens a new one from the last revision applied, so nothing is missed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .cache import NodeCache
from .domain.model import BLOCKS, POOLS, POOLSPECS, cooling_range, ips_range, pool_network
from .namedpools import PoolSpecCache
from .store.base import Store, StoreCompacted, Watch, prefix_end

log = logging.getLogger(__name__)

#: Seconds a watch waits for news before asking etcd for a progress report (so the view's revision advances).
IDLE_SECONDS = 1.0


class ViewWatcher:
    """One round per call of :meth:`round` (meant for :func:`ipamd.concurrency.supervise`). ``resync`` reads the
    whole view again (the service's sync) and returns its revision. ``specs``: named pools' specs, which the same
    watch follows (``poolspecs/``)."""

    def __init__(self, store: Store, cache: NodeCache, resync: Callable[[], int],
                 specs: PoolSpecCache | None = None) -> None:
        self.store, self.cache, self.resync = store, cache, resync
        self.specs = specs
        self._watch: Watch | None = None
        self.compactions = 0

    def round(self) -> float:
        try:
            if self.cache.needs_resync:
                self._reset("the watch fell too far behind")
                self.resync()
            if self._watch is None:
                self._start()
            watch = self._watch
            if watch is None:  # _start sets it or raises
                return 0.0
            for gained, pool_id, block, revision in self.cache.own_block_changes():
                for start, end in (ips_range(pool_network(pool_id), block),
                                   cooling_range(pool_network(pool_id), block)):
                    if gained:
                        watch.add(start, end, revision + 1)
                    else:
                        watch.remove(start)
            update = watch.next(IDLE_SECONDS)
            if update is None:
                watch.progress()
            else:
                self.cache.apply(update)
                if self.specs is not None:
                    self.specs.apply(update)
            return 0.0
        except StoreCompacted as exc:
            self.compactions += 1
            self._reset("etcd compacted revision %d the watch still needed" % exc.compact_revision)
            self.resync()
            return 0.0
        except BaseException:
            self._reset(None)
            raise

    def _start(self) -> None:
        revision = self.cache.watch_revision + 1
        watch = self.store.watch()
        self._watch = watch
        self.cache.own_block_changes()  # every current block of ours is added below
        watch.add(POOLS, prefix_end(POOLS), revision)
        watch.add(BLOCKS, prefix_end(BLOCKS), revision)
        if self.specs is not None:
            watch.add(POOLSPECS, prefix_end(POOLSPECS), revision)
        for pool_id, block in self.cache.own_blocks():
            for start, end in (ips_range(pool_network(pool_id), block), cooling_range(pool_network(pool_id), block)):
                watch.add(start, end, revision)
        log.debug("watching pools, blocks and %d block(s) of ours from revision %d",
                  len(self.cache.own_blocks()), revision)

    def _reset(self, why: str | None) -> None:
        if why:
            log.info("re-reading the view: %s", why)
        if self._watch is not None:
            self._watch.close()
        self._watch = None

    def close(self) -> None:
        self._reset(None)
