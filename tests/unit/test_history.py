"""The history checker (ipamd.testing.history) finds what it must and nothing else: duplicates over sure intervals, a
retried ADD with another address, an acknowledged allocation missing from a snapshot; failed calls prove nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ipamd.testing.history import History, Op, Snapshot


def add(att: str, start: float, end: float, address: str = "10.0.0.2/24", code: int = 0) -> Op:
    return Op("ADD", "A", att, start, end, code, (address,) if code == 0 else ())


def rm(att: str, start: float, end: float, code: int = 0) -> Op:
    return Op("DEL", "A", att, start, end, code)


def check(*ops: Op, snapshots: tuple[Snapshot, ...] = ()) -> list[str]:
    h = History()
    for op in ops:
        h.add(op)
    for s in snapshots:
        h.snapshot(s)
    return h.check()


def test_sequential_reuse_is_fine() -> None:
    assert check(add("a", 0, 1), rm("a", 2, 3), add("b", 4, 5), rm("b", 6, 7)) == []


def test_reuse_while_the_del_was_in_flight_is_fine() -> None:
    # b's ADD answered after a's DEL was sent: a no longer surely holds the address
    assert check(add("a", 0, 1), rm("a", 2, 5), add("b", 3, 4)) == []


def test_duplicate_is_found() -> None:
    problems = check(add("a", 0, 1), add("b", 2, 3), rm("a", 4, 5), rm("b", 6, 7))
    assert len(problems) == 1 and "held by a and b" in problems[0]


def test_duplicate_behind_a_long_interval_is_found() -> None:
    problems = check(add("a", 0, 1), add("b", 2, 3, "10.0.0.2/24"), rm("b", 4, 5), add("c", 6, 7), rm("a", 8, 9))
    assert any("held by a and c" in p for p in problems) and any("held by a and b" in p for p in problems)


def test_failed_calls_prove_nothing() -> None:
    assert check(add("a", 0, 1, code=11), add("b", 2, 3), rm("a", 4, 5, code=11), rm("b", 6, 7)) == []


def test_retried_add_with_another_address() -> None:
    problems = check(add("a", 0, 1, "10.0.0.2/24"), add("a", 2, 3, "10.0.0.3/24"))
    assert any("returned" in p for p in problems)


def test_lost_allocation_in_a_snapshot() -> None:
    snaps = (Snapshot(2, 2.5, {}), Snapshot(6, 6.5, {"b": ("10.0.0.3/24",)}))
    problems = check(add("a", 0, 1), rm("a", 5, 6), snapshots=snaps)
    assert len(problems) == 1 and "missing from the snapshot at 2.000" in problems[0]


def test_snapshot_with_the_allocation_is_fine() -> None:
    assert check(add("a", 0, 1), snapshots=(Snapshot(2, 3, {"a": ("10.0.0.2/24",)}),)) == []


def test_summary() -> None:
    h = History()
    for op in (add("a", 0, 1), add("b", 0, 1, code=11), rm("a", 2, 3)):
        h.add(op)
    assert h.summary() == {"adds": 2, "adds_ok": 1, "dels": 1, "dels_ok": 1, "snapshots": 0, "attachments": 2,
                           "abandoned": 0}


def test_members_agree_only_when_every_member_answered_the_same_hash() -> None:
    from ipamd.testing.members import agree

    assert agree({"a": "7", "b": "7", "c": "7"})
    assert not agree({"a": "7", "b": "8", "c": "7"})
    assert not agree({"a": "7", "b": "error: required revision is a future revision", "c": "7"})
    assert not agree({"a": "error: x", "b": "error: x"})


FAKE_ETCDCTL = """#!/bin/sh
# answers like `etcdctl endpoint hashkv --rev R -w json`: the member "lagging" is behind for its first 3 calls,
# the member "diverged" always
for a in "$@"; do case "$a" in http://*) ep="$a";; esac; done
n=$(cat "$0.$(basename "$ep")" 2>/dev/null || echo 0); echo $((n + 1)) > "$0.$(basename "$ep")"
future() { echo "Error: etcdserver: mvcc: required revision is a future revision" >&2; exit 1; }
case "$ep" in
  */lagging) if [ "$n" -lt 3 ]; then future; fi;;
  */diverged) future;;
esac
echo '[{"Endpoint":"'"$ep"'","HashKV":{"hash":42}}]'
"""


def test_member_hashes_wait_for_a_member_that_is_catching_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member still behind the asked revision (restarted a moment ago) is asked again until it answers; one that
    never catches up (diverged) still disagrees after the wait. etcdctl here is a script ($IPAMD_ETCD_BIN)."""
    from ipamd.testing.members import agree, member_hashes

    fake = tmp_path / "etcdctl"
    fake.write_text(FAKE_ETCDCTL)
    fake.chmod(0o755)
    monkeypatch.setenv("IPAMD_ETCD_BIN", str(tmp_path))
    caught_up = member_hashes(["http://m/a", "http://m/lagging"], 7, wait=10)
    assert caught_up == {"http://m/a": "42", "http://m/lagging": "42"} and agree(caught_up)
    diverged = member_hashes(["http://m/a", "http://m/diverged"], 7, wait=1)
    assert not agree(diverged) and "future revision" in diverged["http://m/diverged"]
