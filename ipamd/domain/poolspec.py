"""Named pools (pure): a pool defined once for the whole cluster, its spec, label selectors, and the resolution of a
network configuration's ``ipam.pools`` into range sets (docs/configuration.md "Named pools").

A spec lives at ``poolspecs/<name>`` (docs/etcd-layout.md). Its allocations reuse the machinery of a network's
ranges under the pool *network* ``@<name>``: pool id ``@<name>/<subnet key>``, address records
``ips/@<name>/v4|v6/<hex>``; ``@`` never occurs in a CNI network name, so no key of a named pool can be a
network's, and an address of a named pool is unique across every network that names it.

Validation is the network configuration's (:meth:`ipamd.domain.addr.Range.from_config` and the helpers of
:mod:`ipamd.domain.netconf`): the same subnet, gateway, address-class (field case B41), ``blockSize``, ``exclude``,
``routes`` and ``releaseCooldownSeconds`` rules, with the same messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .addr import LINK_LOCAL_GATEWAY, Range, to_ip
from .errors import InvalidConfig, PoolExhausted, TryAgainLater
from .netconf import (
    MAX_BLOCKS_PER_NODE,
    MAX_COOLDOWN,
    POOL_NAME_RE,
    NetConf,
    Pool,
    Route,
    _apply_mode,
    _block_prefix,
    _excludes,
    _gateway_mode,
    _routes,
    check_route_gateways,
)

STATES = ("active", "draining")
#: The label every namespace carries (Kubernetes sets it on every Namespace since 1.21).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
SPEC_KEYS = frozenset({"name", "cidr", "blockSize", "gatewayMode", "gateway", "routes", "exclude",
                       "releaseCooldownSeconds", "strictAffinity", "maxBlocksPerNode", "nodeSelector",
                       "namespaceSelector", "state"})
#: Kubernetes label keys (an optional DNS-subdomain prefix and ``/``, then a name) and values.
_LABEL_KEY_RE = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE_RE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def pool_network_of(name: str) -> str:
    """The pool network of named pool ``name``: ``@<name>`` (docs/etcd-layout.md)."""
    return "@" + name


def name_of_network(network: str) -> str | None:
    """The pool name of a pool network ``@<name>``; ``None`` for a CNI network's name."""
    return network[1:] if network.startswith("@") else None


def validate_pool_name(value: object) -> str:
    """A pool name (:data:`ipamd.domain.netconf.POOL_NAME_RE`). Returns it; raises :class:`InvalidConfig` (7)."""
    if not isinstance(value, str) or not POOL_NAME_RE.fullmatch(value):
        raise InvalidConfig("invalid pool name %r" % (value,), "a pool name matches %s" % POOL_NAME_RE.pattern)
    return value


def _selector(raw: object, field: str) -> tuple[tuple[str, str], ...]:
    """A Kubernetes-style ``matchLabels`` map (``{"zone": "a"}``; empty or absent: matches everything)."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise InvalidConfig("%s %r is not a map of labels" % (field, raw))
    for key, value in raw.items():
        if not isinstance(key, str) or not _LABEL_KEY_RE.fullmatch(key) or len(key) > 316:
            raise InvalidConfig("%s key %r is not a label key" % (field, key))
        if not isinstance(value, str) or not _LABEL_VALUE_RE.fullmatch(value):
            raise InvalidConfig("%s value %r of %s is not a label value" % (field, value, key))
    return tuple(sorted(raw.items()))


def parse_labels(text: str, where: str = "node labels") -> dict[str, str]:
    """``k=v,k2=v2`` (blank: none) into a label map. Raises :class:`InvalidConfig` naming the bad item."""
    out: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidConfig("%s: %r is not key=value" % (where, item))
        _selector({key.strip(): value.strip()}, where)
        out[key.strip()] = value.strip()
    return out


def selects(selector: tuple[tuple[str, str], ...], labels: Mapping[str, str]) -> bool:
    """``matchLabels`` semantics: every pair of ``selector`` is in ``labels``; an empty selector matches all."""
    return all(labels.get(k) == v for k, v in selector)


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A named pool as stored at ``poolspecs/<name>``: constant size, JSON.

    ``range`` is the validated subnet with its gateway and excludes; ``block_prefix`` the block size (prefix length,
    default /26 and /122); ``gateway_mode`` one of :data:`ipamd.domain.addr.GATEWAY_MODES` (the range carries it
    too); ``routes`` the routes every address of the pool gets in its result (``pointToPoint`` without ``routes``:
    the default route via the link-local gateway); ``cooldown`` ``releaseCooldownSeconds`` (B09); ``max_blocks``
    the most blocks a node may claim (0: no limit); ``node_selector``/``namespace_selector`` sorted ``matchLabels``
    pairs; ``state`` ``active`` or ``draining`` (field case B27: no new allocations, existing ones kept).
    """

    name: str
    range: Range
    block_prefix: int
    gateway_mode: str = "subnet"
    gateway_set: bool = False
    routes: tuple[Route, ...] = ()
    cooldown: int = 0
    strict_affinity: bool = False
    max_blocks: int = 0
    node_selector: tuple[tuple[str, str], ...] = ()
    namespace_selector: tuple[tuple[str, str], ...] = ()
    state: str = "active"

    @property
    def network(self) -> str:
        return pool_network_of(self.name)

    @property
    def pool_id(self) -> str:
        return "%s/%s" % (self.network, self.range.subnet_key)

    def pool(self) -> Pool:
        """The :class:`~ipamd.domain.netconf.Pool` the allocator works on."""
        return Pool(self.pool_id, self.network, self.range, self.block_prefix, self.strict_affinity, self.cooldown,
                    self.gateway_mode, self.max_blocks)

    def to_json(self) -> dict[str, Any]:
        """The spec as the JSON object it was created from (canonical: defaults filled in)."""
        rng = self.range
        obj: dict[str, Any] = {
            "name": self.name, "cidr": str(rng.subnet), "blockSize": self.block_prefix,
            "gatewayMode": self.gateway_mode,
            "routes": [dict([("dst", r.dst), *([("gw", r.gw)] if r.gw else []), *r.extra]) for r in self.routes],
            "exclude": ["%s-%s" % (to_ip(rng.family, lo), to_ip(rng.family, hi)) if lo != hi
                        else str(to_ip(rng.family, lo)) for lo, hi in rng.excludes],
            "releaseCooldownSeconds": self.cooldown, "strictAffinity": self.strict_affinity,
            "maxBlocksPerNode": self.max_blocks, "nodeSelector": dict(self.node_selector),
            "namespaceSelector": dict(self.namespace_selector), "state": self.state}
        if self.gateway_set and rng.gateway is not None:
            obj["gateway"] = str(to_ip(rng.family, rng.gateway))
        return obj

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes, name: str | None = None) -> PoolSpec:
        """A stored spec, validated again; ``name``: the name its key ``poolspecs/<name>`` gives, which the spec's
        own ``name`` must equal (a spec written by hand under another key would otherwise be compared, drained and
        deleted under one name and allocated from under the other). Raises ``ValueError`` for anything malformed
        (something else wrote it)."""
        try:
            obj = json.loads(raw)
        except RecursionError:  # JSON nested deeper than the interpreter's stack (a hostile or broken writer)
            raise ValueError("malformed pool spec: JSON nested too deeply") from None
        try:
            spec = parse_pool_spec(obj)
        except InvalidConfig as exc:
            raise ValueError("malformed pool spec: %s" % exc.msg) from None
        if name is not None and spec.name != name:
            raise ValueError("malformed pool spec: stored as pool %s but names pool %s" % (name, spec.name))
        return spec

    def with_state(self, state: str) -> PoolSpec:
        return replace(self, state=state)


def parse_pool_spec(obj: object) -> PoolSpec:
    """Validate a pool spec object (the admin API's, or a stored one).

    Keys: ``name`` (required, :data:`ipamd.domain.netconf.POOL_NAME_RE`), ``cidr`` (required, IPv4 or IPv6),
    ``blockSize`` (prefix length; default /26 IPv4, /122 IPv6, never shorter than the CIDR), ``gatewayMode``
    (``subnet`` default, ``block``, ``pointToPoint``), ``gateway`` (optional; default the subnet's first host),
    ``routes``, ``exclude`` (addresses, CIDRs, or ``a-b`` spans), ``releaseCooldownSeconds`` (0 to
    :data:`~ipamd.domain.netconf.MAX_COOLDOWN`), ``strictAffinity``, ``maxBlocksPerNode`` (0 to
    :data:`~ipamd.domain.netconf.MAX_BLOCKS_PER_NODE`, as the ``ipam`` key),
    ``nodeSelector``/``namespaceSelector`` (``matchLabels`` maps), ``state`` (``active`` default, ``draining``).
    Raises :class:`InvalidConfig` (7) naming the field and value, with the network configuration's messages for
    the range (field cases B29, B30, B41). Unknown keys are refused (an operator's typo must not pass). Pure.
    """
    if not isinstance(obj, dict):
        raise InvalidConfig("pool spec %r is not an object" % (obj,))
    unknown = sorted(k for k in obj if k not in SPEC_KEYS)
    if unknown:
        raise InvalidConfig("pool spec has unknown key(s) %s" % ", ".join(unknown),
                            "known keys: %s" % ", ".join(sorted(SPEC_KEYS)))
    name = validate_pool_name(obj.get("name"))
    where = "pool %s" % name
    gateway = obj.get("gateway") or None
    rng = Range.from_config({"subnet": obj.get("cidr"), "gateway": gateway}, where + " cidr")
    excludes_raw = obj.get("exclude")
    if excludes_raw is not None and not isinstance(excludes_raw, list):
        _excludes({"exclude": excludes_raw})  # raises the netconf's message
    excludes: list[tuple[int, int]] = []
    for item in excludes_raw or []:  # in the given order, so a stored spec reads back equal
        if isinstance(item, str) and "-" in item and "/" not in item:  # "a-b", the stored form of a span
            lo_text, _, hi_text = item.partition("-")
            lo = _excludes({"exclude": [lo_text]})[0][0]
            hi = _excludes({"exclude": [hi_text]})[0][1]
            if lo > hi:
                raise InvalidConfig("%s exclude %s is backwards" % (where, item))
            excludes.append((lo, hi))
        else:
            excludes.extend(_excludes({"exclude": [item]}))
    rng = rng.with_excludes(tuple(excludes))
    block_raw = obj.get("blockSize")
    block_prefix = _block_prefix({"blockSize" if rng.family == 4 else "blockSize6": block_raw}, rng.family, rng)
    # the network configuration's gateway-mode rules (docs/configuration.md "Gateway modes"): no pool gateway in
    # block or pointToPoint mode, blocks of at least 4 addresses in block mode
    mode = _gateway_mode(obj.get("gatewayMode", "subnet") or "subnet", where)
    rng = _apply_mode(rng, mode, {"gateway": gateway}, block_prefix, where)
    routes = _routes({"routes": obj.get("routes")}) if obj.get("routes") is not None else ()
    if mode == "pointToPoint" and obj.get("routes") is None:  # as a network's pointToPoint range: a default route
        routes = (Route("0.0.0.0/0" if rng.family == 4 else "::/0", str(to_ip(rng.family,
                                                                             LINK_LOCAL_GATEWAY[rng.family]))),)
    pool_for_routes = Pool("", "", rng, block_prefix)
    check_route_gateways(routes, ((pool_for_routes,),))
    cooldown = obj.get("releaseCooldownSeconds", 0)
    if cooldown is None:
        cooldown = 0
    if isinstance(cooldown, bool) or not isinstance(cooldown, int) or not 0 <= cooldown <= MAX_COOLDOWN:
        raise InvalidConfig("%s releaseCooldownSeconds %r is not an integer from 0 to %d"
                            % (where, cooldown, MAX_COOLDOWN))
    strict = obj.get("strictAffinity", False)
    if not isinstance(strict, bool):
        raise InvalidConfig("%s strictAffinity %r is not true or false" % (where, strict))
    if mode == "block" and obj.get("strictAffinity") is False:
        raise InvalidConfig("%s gatewayMode block cannot be used with strictAffinity false" % where,
                            "an address borrowed from another node's block would need that node's gateway; "
                            "block mode never borrows (docs/decisions.md \"Gateway modes\")")
    strict = strict or mode == "block"
    max_blocks = obj.get("maxBlocksPerNode", 0)
    if max_blocks is None:
        max_blocks = 0
    if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or not 0 <= max_blocks <= MAX_BLOCKS_PER_NODE:
        raise InvalidConfig("%s maxBlocksPerNode %r is not an integer from 0 (no limit) to %d"
                            % (where, max_blocks, MAX_BLOCKS_PER_NODE))
    state = obj.get("state", "active") or "active"
    if state not in STATES:
        raise InvalidConfig("%s state %r is not one of %s" % (where, state, ", ".join(STATES)))
    return PoolSpec(name, rng, block_prefix, mode, gateway is not None, routes, cooldown, strict, max_blocks,
                    _selector(obj.get("nodeSelector"), where + " nodeSelector"),
                    _selector(obj.get("namespaceSelector"), where + " namespaceSelector"), state)


def needs_namespace_labels(selector: tuple[tuple[str, str], ...], namespace: str) -> bool:
    """Whether ``selector`` (``matchLabels`` pairs) could match namespace ``namespace`` and its verdict depends on a
    label other than ``kubernetes.io/metadata.name``: False for an empty selector, for one of the name label only,
    and for one whose name label names another namespace (it matches nothing here, whatever the other labels).
    Pure."""
    if not any(k != NAMESPACE_NAME_LABEL for k, _ in selector):
        return False
    return all(v == namespace for k, v in selector if k == NAMESPACE_NAME_LABEL)


def resolve(netconf: NetConf, specs: Mapping[str, tuple[PoolSpec, int]], node: str, node_labels: Mapping[str, str],
            namespace: str, namespace_labels: Mapping[str, str] | None = None, *,
            include_draining: bool = False, any_namespace: bool = False,
            namespace_unknown: bool = False) -> NetConf:
    """Resolve ``netconf.pool_names`` against ``specs`` (name -> (spec, mod_revision)) into range sets.

    Within one range set, the candidates are the named pools, in list order, whose ``nodeSelector`` matches
    ``node_labels`` and whose ``namespaceSelector`` matches the pod's namespace labels (``namespace_labels``, plus
    ``kubernetes.io/metadata.name: <namespace>`` always; no namespace: only pools with an empty
    ``namespaceSelector`` match; ``any_namespace``: every namespace, for STATUS, which names none), leaving out
    draining pools unless ``include_draining`` (CHECK). The
    allocator takes the first candidate with a free address (the routes of the pools it took are added to the
    result by :func:`with_pool_routes`). A configuration without ``pool_names`` is returned unchanged.

    ``namespace_unknown``: the namespace's labels could not be read (Kubernetes mode, the namespace view not current
    or not yet showing ``namespace``): only the name label is known, and a range set with a pool whose
    ``nodeSelector`` matches and whose ``namespaceSelector`` depends on another label (:func:`needs_namespace_labels`)
    is :class:`TryAgainLater` (11) rather than resolved with the name label alone, which could skip the pool the
    namespace is selected for and give an address from a later one (docs/decisions.md "Named pools").

    Raises :class:`InvalidConfig` (7) for a name with no spec, or a range set with no pool matching (naming the
    namespace, the node and the pools considered); :class:`PoolExhausted` (100) when every matching pool of a range
    set is draining (field case B27); :class:`TryAgainLater` (11) as above. Pure.
    """
    if not netconf.pool_names:
        return netconf
    ns_labels = dict(namespace_labels or {})
    if namespace:
        ns_labels[NAMESPACE_NAME_LABEL] = namespace
    sets: list[tuple[Pool, ...]] = []
    revisions: list[tuple[str, int]] = []
    for i, names in enumerate(netconf.pool_names):
        missing = [n for n in names if n not in specs]
        if missing:
            raise InvalidConfig("ipam.pools[%d]: unknown pool %s" % (i, ", ".join(missing)),
                                "create it first: ipamctl pool create %s --cidr CIDR" % missing[0])
        if namespace_unknown and not any_namespace:
            blind = [n for n in names if selects(specs[n][0].node_selector, node_labels)
                     and needs_namespace_labels(specs[n][0].namespace_selector, namespace)]
            if blind:
                raise TryAgainLater("ipam.pools[%d]: the labels of namespace %s are not known yet (Kubernetes API "
                                    "unreachable or namespace view not current): pool %s selects by them"
                                    % (i, namespace or "(none)", ", ".join(blind)),
                                    "namespaceSelector %s; ipamd_background_errors_total{loop=\"kube-namespaces\"}"
                                    " and the daemon's log say why" % "; ".join(
                                        "%s %s" % (n, _labels_text(dict(specs[n][0].namespace_selector)))
                                        for n in blind))
        matching = [specs[n] for n in names
                    if selects(specs[n][0].node_selector, node_labels)
                    and (any_namespace or selects(specs[n][0].namespace_selector, ns_labels))]
        if not matching:
            raise InvalidConfig("ipam.pools[%d]: no pool of %s selects namespace %s on node %s"
                                % (i, ", ".join(names), namespace or "(none)", node),
                                "node labels %s; namespace labels %s; selectors: %s" % (
                                    _labels_text(node_labels), _labels_text(ns_labels),
                                    "; ".join("%s node %s namespace %s" % (
                                        n, _labels_text(dict(specs[n][0].node_selector)),
                                        _labels_text(dict(specs[n][0].namespace_selector))) for n in names)))
        active = [(s, r) for s, r in matching if include_draining or s.state == "active"]
        if not active:
            raise PoolExhausted("pool %s is draining" % ", ".join(s.name for s, _ in matching),
                                "ipam.pools[%d]: every pool selected for namespace %s on node %s is draining: no "
                                "new addresses are given from it (ipamctl pool show)"
                                % (i, namespace or "(none)", node))
        if len({s.range.family for s, _ in active}) > 1:
            raise InvalidConfig("ipam.pools[%d] mixes address families in one range set (%s)"
                                % (i, ", ".join("%s %s" % (s.name, s.range.subnet) for s, _ in active)))
        sets.append(tuple(s.pool() for s, _ in active))
        revisions.extend((spec.name, rev) for spec, rev in active)
    seen: list[Pool] = []
    for rset in sets:
        for pool in rset:
            for other in seen:
                if pool.range.overlaps(other.range):
                    raise InvalidConfig("named pools %s and %s overlap (%s, %s)"
                                        % (pool.network[1:], other.network[1:], pool.range.subnet,
                                           other.range.subnet))
            seen.append(pool)
    check_route_gateways(netconf.routes, tuple(sets))
    return replace(netconf, range_sets=tuple(sets), spec_revisions=tuple(revisions))


def with_pool_routes(netconf: NetConf, specs: Iterable[PoolSpec]) -> NetConf:
    """``netconf`` whose routes are its own followed by those of ``specs`` (the named pools an ADD took addresses
    from), each route once, in that order. Pure."""
    routes = list(netconf.routes)
    for spec in specs:
        routes.extend(r for r in spec.routes if r not in routes)
    return netconf if len(routes) == len(netconf.routes) else replace(netconf, routes=tuple(routes))


def _labels_text(labels: Mapping[str, str]) -> str:
    return "{%s}" % ",".join("%s=%s" % kv for kv in sorted(labels.items())) if labels else "{}"
