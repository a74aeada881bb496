"""The history checker (ipamd.testing.history) finds what it must and nothing else: duplicates over sure intervals, a
retried ADD with another address, an acknowledged allocation missing from a snapshot; failed calls prove nothing."""

from __future__ import annotations

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
