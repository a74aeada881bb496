"""Do etcd's members hold the same data? A history check judges ipamd only while they do: a member that diverged
answers from a state the others never had (etcd 3.5.0-3.5.2 after a crash: etcd-io/etcd#13766; the measurement is
bench/etcd_divergence.py, the consequences docs/reliability.md)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable

from ..embedded import etcd_binary


def member_hashes(endpoints: Iterable[str], revision: int) -> dict[str, str]:
    """endpoint -> the member's hash of the key space at ``revision`` (``etcdctl endpoint hashkv --rev``), or
    ``"error: ..."`` with etcdctl's last line (e.g. a member whose own revision is behind: "required revision is a
    future revision"). ``revision`` must not be compacted away."""
    out = {}
    for endpoint in endpoints:
        res = subprocess.run([etcd_binary("etcdctl"), "--endpoints", endpoint, "endpoint", "hashkv", "--rev",
                              str(revision), "-w", "json"], check=False, capture_output=True, text=True, timeout=60)
        try:
            out[endpoint] = str(json.loads(res.stdout)[0]["HashKV"]["hash"])
        except (ValueError, KeyError, IndexError):
            out[endpoint] = "error: " + ((res.stderr.strip() or res.stdout.strip()).splitlines() or [""])[-1][-160:]
    return out


def agree(hashes: dict[str, str]) -> bool:
    """Every member answered, with the same hash."""
    return len(set(hashes.values())) == 1 and not any(h.startswith("error") for h in hashes.values())
