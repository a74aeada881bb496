"""Deep CHECK and ``ipamctl verify``: what the daemon handed out compared with what is inside the pod's network
namespace (docs/namespace-checks.md).

:class:`NamespaceInspector` joins the three parts: the expected state from the handle record
(:func:`ipamd.domain.netcheck.expected_state`), the observation from the kernel (:func:`ipamd.netns.observe`, a
seam: tests and the in-memory tier pass their own) and the pure comparison (:func:`ipamd.domain.netcheck.compare`).
The CNI verb, the gRPC ``Verify`` method and the health loop (:mod:`ipamd.attachment_health`) all use it, so they
agree on what "healthy" means. Nothing here writes to etcd or changes a namespace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import netns
from .domain.model import HandleRecord
from .domain.netcheck import Expected, Finding, Observation, check_error, compare, expected_state

log = logging.getLogger(__name__)

#: ``observe(netns_path, if_name, *, gateways, probe_count, probe_timeout, timeout) -> Observation``.
Observe = Callable[..., Observation]


@dataclass(frozen=True, slots=True)
class Report:
    """One attachment verified: its record, what was expected and observed, and the findings (empty: healthy)."""

    record: HandleRecord
    expected: Expected
    observation: Observation
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def reason(self) -> str:
        """The first finding's reason ("" when healthy): the one the health gauge counts the attachment under."""
        return self.findings[0].reason if self.findings else ""


class NamespaceInspector:
    """Looks into attachments' namespaces (thread-safe; no state besides its settings).

    ``observe`` is :func:`ipamd.netns.observe` or a double with its signature; ``timeout`` bounds entering and
    reading one namespace (seconds); ``probe_count`` and ``probe_timeout`` are the default echo probes of
    :meth:`verify` (count, seconds per reply); ``workers`` bounds how many namespaces :meth:`verify_all` looks
    into at once.
    """

    def __init__(self, observe: Observe = netns.observe, *, timeout: float = 5.0, probe_count: int = 1,
                 probe_timeout: float = 1.0, workers: int = 8) -> None:
        self.observe = observe
        self.timeout = timeout
        self.probe_count = probe_count
        self.probe_timeout = probe_timeout
        self.workers = max(1, workers)

    def check(self, record: HandleRecord, routes: Sequence[tuple[str, str | None]], netns_path: str,
              if_name: str) -> str | None:
        """The namespace part of CNI CHECK (docs/cni-contract.md §2.3): interface ``if_name`` in ``netns_path``
        (``CNI_NETNS``) exists and is up, holds every allocation of ``record`` with its prefix, and has ``routes``
        (the result's ``(dst, gw)`` pairs) through it. No probes.

        Returns ``None`` when it looked and everything matched, or a note for stderr when it could not look and
        CHECK stays store-only (the path does not exist or is not a network namespace; the daemon cannot enter
        it). Raises :class:`~ipamd.domain.errors.CheckInterfaceMissing` (110), ``CheckInterfaceDown`` (111),
        ``CheckAddressMismatch`` (112) or ``CheckRouteMissing`` (113), the first mismatch in that order, with every
        mismatch in the details. Read-only; idempotent.
        """
        expected = expected_state(if_name, record.allocations, routes)
        observed = self.observe(netns_path, if_name, timeout=self.timeout)
        if not observed.netns_exists:
            return "CNI_NETNS %s %s: CHECK compared the store only" % (netns_path, observed.error or "is not there")
        if observed.error:
            log.warning("CHECK: cannot look into network namespace %s: %s", netns_path, observed.error,
                        extra={"handle": record.handle})
            return "cannot look into CNI_NETNS %s (%s): CHECK compared the store only" % (netns_path, observed.error)
        error = check_error(compare(expected, observed))
        if error is not None:
            raise error
        return None

    def verify(self, record: HandleRecord, *, probe_count: int | None = None,
               probe_timeout: float | None = None) -> Report:
        """Everything ``ipamctl verify`` reports for one attachment: the CHECK comparison inside the namespace
        recorded at ADD (``record.netns``), against the routes recorded with it, plus the post-creation tests:
        ``probe_count`` echo requests to each of the attachment's own gateways (each waiting ``probe_timeout``
        seconds) and the gateway's neighbour state. Never raises for what it finds (a missing namespace is a
        finding). Read-only; at most ``timeout + gateways * probe_count * probe_timeout`` seconds plus pyroute2's
        2 s per child process."""
        expected = expected_state(record.if_name, record.allocations, record.routes)
        observed = self.observe(record.netns, record.if_name, gateways=expected.gateways,
                                probe_count=self.probe_count if probe_count is None else probe_count,
                                probe_timeout=self.probe_timeout if probe_timeout is None else probe_timeout,
                                timeout=self.timeout)
        return Report(record, expected, observed, compare(expected, observed))

    def presence(self, record: HandleRecord) -> Observation:
        """The reconciler's look (docs/namespace-checks.md "Reconciler"): interface ``record.if_name`` in the
        namespace recorded at ADD (``record.netns``), its addresses and the addresses of the namespace's other
        interfaces (``Observation.elsewhere``); no routes, no probes. One observation, bounded by ``timeout``
        seconds for entering the namespace.

        Never raises: an exception of the observer (a bug, or a double that raises) becomes an observation with
        ``netns_exists=True`` and ``error`` naming it, which the reconciler reads as "cannot tell". Read-only.
        """
        try:
            return self.observe(record.netns, record.if_name, timeout=self.timeout, routes=False, all_addresses=True)
        except Exception as exc:  # noqa: BLE001 - a failure to look is "cannot tell", never a verdict
            log.warning("reconciler: looking into %s failed: %s: %s", record.netns, exc.__class__.__name__, exc,
                        extra={"handle": record.handle})
            return Observation(record.netns, record.if_name, True, error="%s: %s" % (exc.__class__.__name__, exc))

    def verify_all(self, records: Iterable[HandleRecord], *, probe_count: int | None = None,
                   probe_timeout: float | None = None) -> list[Report]:
        """:meth:`verify` for each record, at most ``workers`` at once; reports in the records' order."""
        items = list(records)
        if len(items) <= 1:
            return [self.verify(r, probe_count=probe_count, probe_timeout=probe_timeout) for r in items]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(items)), thread_name_prefix="verify") as pool:
            return list(pool.map(lambda r: self.verify(r, probe_count=probe_count, probe_timeout=probe_timeout),
                                 items))
