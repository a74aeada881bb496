"""ipamd.concurrency: the request retry loop (docs/architecture.md "Requests and retries") and background loops that
never end on an error (field case B53)."""

from __future__ import annotations

import threading
import time

import pytest

from ipamd.concurrency import DeadlinePassed, KeyedLocks, remaining, retry_until, supervise
from ipamd.domain.errors import InvalidConfig, TryAgainLater
from ipamd.store.base import StoreRejected, StoreUnavailable


def test_first_attempt_success_needs_no_retry() -> None:
    calls = []
    assert retry_until(time.monotonic() + 1, "ADD", lambda: calls.append(1) or "ok") == "ok"
    assert calls == [1]


def test_conflicts_are_retried_and_counted() -> None:
    outcomes = iter([None, None, "done"])
    conflicts = []
    assert retry_until(time.monotonic() + 5, "ADD", lambda: next(outcomes), lambda: conflicts.append(1)) == "done"
    assert len(conflicts) == 2


@pytest.mark.parametrize("outcomes", [[None, "done"], [None, None, "done"], [None, None, None, None, "done"]])
def test_every_attempt_after_the_first_is_one_retry(outcomes: list[str | None]) -> None:
    """``on_retry`` counts attempts after the first (ipamd_request_retries_total): one conflict then success is one
    retry, as many retries as conflicts."""
    it = iter(outcomes)
    conflicts: list[int] = []
    retries: list[int] = []
    assert retry_until(time.monotonic() + 5, "ADD", lambda: next(it), lambda: conflicts.append(1),
                       lambda: retries.append(1)) == "done"
    assert len(retries) == len(conflicts) == len(outcomes) - 1


def test_unavailable_until_the_deadline_is_11_naming_the_cause() -> None:
    attempts = []

    def body() -> str:
        attempts.append(time.monotonic())
        raise StoreUnavailable("no etcd endpoint available")

    t0 = time.monotonic()
    with pytest.raises(TryAgainLater) as info:
        retry_until(t0 + 0.3, "DEL", body)
    assert "etcd unavailable" in info.value.msg and "no etcd endpoint available" in info.value.msg
    assert isinstance(info.value.__cause__, StoreUnavailable)
    assert len(attempts) >= 2 and attempts[-1] <= t0 + 0.3


def test_conflicts_until_the_deadline_is_11() -> None:
    with pytest.raises(TryAgainLater) as info:
        retry_until(time.monotonic() + 0.2, "ADD", lambda: None)
    assert "did not complete" in info.value.msg


@pytest.mark.parametrize("exc", [StoreRejected("too many ops"), InvalidConfig("bad"), RuntimeError("bug")])
def test_other_errors_are_not_retried(exc: Exception) -> None:
    calls = []

    def body() -> str:
        calls.append(1)
        raise exc

    with pytest.raises(type(exc)):
        retry_until(time.monotonic() + 5, "ADD", body)
    assert calls == [1]


def test_deadline_passed_is_retried_then_11() -> None:
    def body() -> str:
        remaining(time.monotonic() - 1)
        return "never"

    with pytest.raises(TryAgainLater):
        retry_until(time.monotonic() + 0.1, "ADD", body)
    with pytest.raises(DeadlinePassed):
        remaining(time.monotonic() - 0.001)


def test_supervised_loop_outlives_every_error_and_stops_on_request() -> None:
    stop = threading.Event()
    rounds: list[str] = []
    errors: list[int] = []
    script = [StoreUnavailable("down"), RuntimeError("bug"), KeyError("x"), None, StoreRejected("no")]

    def body() -> float:
        step = script[len(rounds) % len(script)]
        rounds.append(type(step).__name__)
        if step is not None:
            raise step
        return 0.0

    t = threading.Thread(target=supervise, args=("test", body, stop, lambda: errors.append(1), 0.001, 0.005))
    t.start()
    deadline = time.monotonic() + 5
    while len(rounds) < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert t.is_alive()
    stop.set()
    t.join(2)
    assert not t.is_alive()
    assert len(rounds) >= 12 and len(errors) >= 8


def test_supervised_loop_survives_a_failing_error_hook() -> None:
    stop = threading.Event()
    rounds = []

    def body() -> float:
        rounds.append(1)
        if len(rounds) > 3:
            stop.set()
        raise RuntimeError("bug")

    def bad_hook() -> None:
        raise ValueError("hook bug")

    supervise("test", body, stop, bad_hook, 0.001, 0.002)
    assert len(rounds) == 4


def test_keyed_locks_serialise_one_key_and_forget_it() -> None:
    locks = KeyedLocks()
    inside = []
    barrier = threading.Barrier(4)

    def one() -> None:
        barrier.wait()
        with locks.hold("k"):
            inside.append(1)
            assert len(inside) == 1
            time.sleep(0.01)
            inside.pop()

    ts = [threading.Thread(target=one) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(locks) == 0
