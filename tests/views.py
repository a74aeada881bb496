"""Comparing a daemon's cached view with what etcd holds (tests of the watch-fed view, unit and integration)."""

from __future__ import annotations

from typing import Any

from ipamd.domain.model import BLOCKS, IPS, decode_block_record, parse_block_key, parse_ip_key
from ipamd.service import IpamService
from ipamd.store.base import Store, prefix_end


def assert_view_matches(store: Store, svc: IpamService) -> None:
    """Every block the cache knows has etcd's owner and mod_revision; every loaded address set of one of our blocks
    equals etcd's address records in that block; and the cache knows every block etcd has."""
    view: dict[str, Any] = svc.cache.snapshot()
    kvs, _ = store.read(BLOCKS, prefix_end(BLOCKS), 1)
    etcd_blocks = {}
    for kv in kvs:
        pool_id, block = parse_block_key(kv.key)
        etcd_blocks[(pool_id, block.key)] = (decode_block_record(kv.value), kv.mod_revision, block)
    cached = {(pool_id, bkey): info for pool_id, pool in view.items() for bkey, info in pool["blocks"].items()}
    assert set(cached) == set(etcd_blocks)
    ips = [parse_ip_key(kv.key) for kv in store.read(IPS, prefix_end(IPS), 1)[0]]
    for key, info in cached.items():
        node, revision, block = etcd_blocks[key]
        assert (info["node"], info["mod_revision"]) == (node, revision), key
        if info["taken"] is not None and node == svc.node:
            actual = sorted(v for _, fam, v in ips if fam == block.family and block.first <= v <= block.last)
            assert info["taken"] == actual, key
