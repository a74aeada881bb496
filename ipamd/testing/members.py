"""Do etcd's members hold the same data? A history check judges ipamd only while they do: a member that diverged
answers from a state the others never had (etcd 3.5.0-3.5.2 after a crash: etcd-io/etcd#13766; the measurement is
bench/etcd_divergence.py, the consequences docs/reliability.md)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterable

from ..embedded import etcd_binary

FUTURE = "required revision is a future revision"


def member_hashes(endpoints: Iterable[str], revision: int, wait: float = 20.0) -> dict[str, str]:
    """endpoint -> the member's hash of the key space at ``revision`` (``etcdctl endpoint hashkv --rev``), or
    ``"error: ..."`` with etcdctl's last line. A member whose own revision is still behind ``revision`` ("required
    revision is a future revision": a member restarted a moment ago is still catching up) is asked again for up to
    ``wait`` seconds; a member that diverged never catches up, so it still answers that error. ``revision`` must not
    be compacted away."""
    endpoints = list(endpoints)
    deadline = time.monotonic() + wait
    out = _hashes(endpoints, revision)
    while any(FUTURE in h for h in out.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
        out.update(_hashes([e for e, h in out.items() if FUTURE in h], revision))
    return out


def _hashes(endpoints: Iterable[str], revision: int) -> dict[str, str]:
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
