"""Concurrency and retries, one shape for all (docs/architecture.md "Requests and retries"):

- :class:`KeyedLocks`: per-attachment serialisation inside the daemon (field case B13);
- :func:`retry_until`: a request's compare-and-swap loop, retried with jittered exponential backoff until its
  deadline, then a typed error (code 11) that chains the last cause (``tenacity`` does the looping);
- :func:`supervise`: a background loop that logs, counts and backs off on any error and never ends while the
  daemon runs (field case B53).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception_type, retry_if_result, wait_random_exponential

from .domain.errors import TryAgainLater
from .store.base import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

#: First backoff after a conflict and the cap (seconds); the wait is uniform in [0, min(cap, first * 2**n)].
BACKOFF_FIRST = 0.005
BACKOFF_CAP = 0.5


class DeadlinePassed(Exception):
    """The request's deadline passed before its next etcd call; :func:`retry_until` turns it into code 11 naming the
    last cause. Never leaves this package."""


def remaining(deadline: float) -> float:
    """Seconds left before ``deadline`` (a ``time.monotonic()`` value); raises :class:`DeadlinePassed` at 0."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlinePassed()
    return left


class _Held:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class KeyedLocks:
    """One lock per key (an attachment's handle, ``gc:<network>``), created on demand and dropped when unused."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[str, _Held] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._guard:
            entry = self._held.get(key)
            if entry is None:
                entry = self._held[key] = _Held()
            entry.users += 1
        try:
            with entry.lock:
                yield
        finally:
            with self._guard:
                entry.users -= 1
                if entry.users == 0:
                    del self._held[key]

    def __len__(self) -> int:
        with self._guard:
            return len(self._held)


def retry_until(deadline: float, what: str, body: Callable[[], T | None],
                on_conflict: Callable[[], None] | None = None, on_retry: Callable[[], None] | None = None) -> T:
    """Run ``body`` until it returns something other than ``None``.

    ``None`` means "a compare failed, the view is refreshed: try again"; :class:`StoreUnavailable` and
    :class:`DeadlinePassed` are retried too. Waits between attempts are jittered exponential (full jitter from
    :data:`BACKOFF_FIRST` up to :data:`BACKOFF_CAP`) and never run past ``deadline``. When the deadline comes, raises
    :class:`TryAgainLater` (code 11) naming ``what`` and the last cause, chained. Any other exception propagates at
    once. ``on_conflict`` is called for each ``None``, ``on_retry`` for each attempt after the first (metrics).
    """
    started = time.monotonic()
    # the steady state commits at the first attempt: run it without the retry machinery
    try:
        out = body()
        if out is not None:
            return out
        if on_conflict is not None:
            on_conflict()
    except (StoreUnavailable, DeadlinePassed) as exc:
        log.debug("%s: first attempt did not commit (%s); retrying", what, exc)
        if time.monotonic() >= deadline:
            raise _give_up(what, started, exc, 1) from exc

    def stop(state: RetryCallState) -> bool:
        return time.monotonic() + (state.upcoming_sleep or 0.0) >= deadline

    def give_up(state: RetryCallState) -> T:
        outcome = state.outcome
        exc = outcome.exception() if outcome is not None and outcome.failed else None
        raise _give_up(what, started, exc, state.attempt_number + 1) from exc

    def conflict(state: RetryCallState) -> None:
        if on_retry is not None:
            on_retry()
        outcome = state.outcome
        if outcome is not None and not outcome.failed and on_conflict is not None:
            on_conflict()
        log.debug("%s: attempt %d did not commit (%s); retrying", what, state.attempt_number,
                  outcome.exception() if outcome is not None and outcome.failed else "compare failed")

    retrying = Retrying(
        retry=retry_if_result(lambda out: out is None) | retry_if_exception_type((StoreUnavailable, DeadlinePassed)),
        wait=wait_random_exponential(multiplier=BACKOFF_FIRST, max=BACKOFF_CAP),
        stop=stop, before_sleep=conflict, retry_error_callback=give_up)
    if on_retry is not None:  # the first attempt ran outside Retrying: the next one is already a retry
        on_retry()
    out = retrying(body)
    if out is None:  # retry_if_result never lets None through; guards the type for the caller
        raise TryAgainLater("%s did not complete" % what)
    return out


def _give_up(what: str, started: float, exc: BaseException | None, attempts: int) -> TryAgainLater:
    took = time.monotonic() - started
    if isinstance(exc, StoreUnavailable):
        return TryAgainLater("%s: etcd unavailable until the deadline (%.1f s): %s" % (what, took, exc.msg))
    return TryAgainLater("%s did not complete within %.1f s (%d attempts; conflicts or etcd too slow)"
                         % (what, took, attempts))


def supervise(name: str, body: Callable[[], float | None], stop: threading.Event,
              on_error: Callable[[], None] | None = None, first_backoff: float = 0.2,
              max_backoff: float = 10.0) -> None:
    """Run a background loop until ``stop`` is set; never ends on an error (field case B53).

    ``body`` does one round and returns the seconds to wait before the next (``None``: run again at once). Any
    exception is logged (with its traceback when it is not an ipamd error), counted by ``on_error()`` (metrics) and
    followed by a jittered exponential backoff from ``first_backoff`` up to ``max_backoff`` seconds; a round that
    succeeds resets the backoff. Meant as a thread's target.
    """
    from .domain.errors import IpamError

    failures = 0
    while not stop.is_set():
        try:
            pause = body()
            failures = 0
        except Exception as exc:
            failures += 1
            if isinstance(exc, IpamError):
                log.warning("%s: %s (failure %d in a row); retrying", name, exc, failures)
            else:
                log.exception("%s: unexpected error (failure %d in a row); retrying", name, failures)
            if on_error is not None:
                try:
                    on_error()
                except Exception:
                    log.exception("%s: error hook failed", name)
            pause = random.uniform(0, min(max_backoff, first_backoff * 2 ** min(failures, 16)))
        if pause:
            stop.wait(pause)
