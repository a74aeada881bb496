"""``ipamctl``: the operator's CLI (docs/ipamctl.md).

Commands:
    ipamctl list [--network NET] [--node N] [--pool P] [--namespace NS] [--pod POD] [-o json]
                                                  allocations, via the node's ipamd gRPC API
    ipamctl pools [--network NET] [--pool P] [-o json]   pools: size, allocated, free, blocks, utilisation
    ipamctl blocks [--pool P] [--node N] [-o json]       blocks: owner, used, free, borrowed
    ipamctl usage [-o json] [--watch SECONDS]            utilisation per pool and per node
    ipamctl pool create NAME --cidr CIDR [options] | list | show NAME | drain NAME [--undo] | delete NAME
                                                  named pools (docs/configuration.md "Named pools")
    ipamctl get NET CONTAINERID IFNAME
    ipamctl release NET CONTAINERID IFNAME        release one attachment (idempotent)
    ipamctl check [-o json] [--report FILE]       the invariants of the data model, read from etcd
    ipamctl repair --from-report FILE             remove exactly the broken records a recent report found
    ipamctl node remove NODE [--force] [--yes]    release a departed node's addresses and blocks
    ipamctl gc [--dry-run]                        run the node's reconciler now (or show what it would release)
    ipamctl status [-o json]                      the daemon's health, its view of etcd, this node's pools
    ipamctl verify (--all | --network NET | --container ID) [-o json]
                                                  look inside this node's attachments' namespaces

``--socket`` (default ``IPAMD_GRPC_SOCKET``, else ``/run/ipamd/ipamd.sock``) picks the daemon. The etcd commands
take the daemon's own etcd settings: ``--config FILE`` (the daemon's TOML), ``IPAMD_ETCD_*`` variables and
``--etcd-*`` flags, with the daemon's precedence. Exit statuses are in docs/ipamctl.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ipamd_client import IpamClient

    from .domain.inventory import NodeUsage, PoolInfo

_ETCD_FLAGS = ("etcd_endpoints", "etcd_prefix", "etcd_ca_cert", "etcd_cert", "etcd_key", "etcd_user",
               "etcd_password", "etcd_password_file")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help="gRPC socket of the node's ipamd (default: $IPAMD_GRPC_SOCKET or /run/ipamd/ipamd.sock)")
    p = argparse.ArgumentParser(prog="ipamctl", parents=[common],
                                description="Operate ipamd: list, get and release allocations; check etcd; verify "
                                "attachments inside their namespaces.")
    from .metrics import package_version

    p.add_argument("--version", action="version", version="ipamctl (ipamd %s)" % package_version("ipamd"))
    sub = p.add_subparsers(dest="cmd", required=True)
    _inventory_parsers(sub, common)
    for name in ("get", "release"):
        sp = sub.add_parser(name, parents=[common], help="%s one attachment" % name)
        sp.add_argument("network")
        sp.add_argument("container_id")
        sp.add_argument("if_name")
    st = sub.add_parser("status", parents=[common], help="the daemon's readiness, etcd (reachable, version, leader, "
                        "revision), sync state and this node's pools and blocks")
    st.add_argument("-o", "--output", choices=("text", "json"), default="text")
    gc = sub.add_parser("gc", parents=[common], help="run the node's reconciler now (docs/ipamctl.md)")
    gc.add_argument("--dry-run", action="store_true", help="only print what would be released, and why")
    etcd_opts = argparse.ArgumentParser(add_help=False)
    etcd_opts.add_argument("--config", help="the daemon's TOML file (its etcd_* keys are used)")
    for flag in _ETCD_FLAGS:
        etcd_opts.add_argument("--" + flag.replace("_", "-"), dest=flag, default=None)
    ck = sub.add_parser("check", parents=[etcd_opts], help="check the data-model invariants against etcd")
    ck.add_argument("-o", "--output", choices=("text", "json"), default="text", help="text (default) or json")
    ck.add_argument("--report", metavar="FILE", help="also write the JSON report to FILE (for ipamctl repair)")
    rp = sub.add_parser("repair", parents=[etcd_opts], help="remove the broken records a recent check found")
    rp.add_argument("--from-report", metavar="FILE", required=True, help="a report of ipamctl check -o json")
    rp.add_argument("--max-age", type=float, default=600.0, metavar="SECONDS",
                    help="refuse a report older than this (default 600)")
    rp.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    nd = sub.add_parser("node", help="operate on a node's records in etcd")
    nsub = nd.add_subparsers(dest="node_cmd", required=True)
    rm = nsub.add_parser("remove", parents=[etcd_opts], help="release a departed node's addresses and blocks")
    rm.add_argument("node")
    rm.add_argument("--force", action="store_true", help="even while the node's lease is alive")
    rm.add_argument("--yes", action="store_true", help="do it without asking")
    rm.add_argument("--dry-run", action="store_true", help="only show what would be released")
    _verify_parser(sub, common)
    _pool_parser(sub, common)
    return p


def _pool_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 common: argparse.ArgumentParser) -> None:
    """``ipamctl pool create|list|show|drain|delete`` (docs/ipamctl.md "Named pools")."""
    pool = sub.add_parser("pool", help="named pools: create, list, show, drain, delete (docs/configuration.md)")
    psub = pool.add_subparsers(dest="pool_cmd", required=True)
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=("text", "json"), default="text", help="text (default) or json")
    cr = psub.add_parser("create", parents=[common, output], help="create a named pool")
    cr.add_argument("name")
    cr.add_argument("--cidr", default="", help="the pool's subnet, IPv4 or IPv6 (required unless --from-file)")
    cr.add_argument("--from-file", metavar="FILE", help="a JSON spec object (keys of docs/configuration.md); flags "
                    "given as well override its keys")
    cr.add_argument("--block-size", type=int, default=None, metavar="PREFIX",
                    help="prefix length of the pool's blocks (default 26 for IPv4, 122 for IPv6)")
    cr.add_argument("--gateway-mode", choices=("subnet", "block", "pointToPoint"), default=None)
    cr.add_argument("--gateway", default=None, help="gateway address (default: the subnet's first host)")
    cr.add_argument("--route", action="append", default=None, metavar="DST[,GW]", help="a route (repeatable)")
    cr.add_argument("--exclude", action="append", default=None, metavar="ADDR|CIDR|A-B",
                    help="never hand out these addresses (repeatable)")
    cr.add_argument("--release-cooldown-seconds", type=int, default=None, metavar="SECONDS")
    cr.add_argument("--strict-affinity", action="store_true", default=None,
                    help="never borrow from another node's block")
    cr.add_argument("--max-blocks-per-node", type=int, default=None, metavar="N", help="0: no limit (default)")
    cr.add_argument("--node-selector", default=None, metavar="K=V[,K=V]", help="matchLabels on the node's labels")
    cr.add_argument("--namespace-selector", default=None, metavar="K=V[,K=V]",
                    help="matchLabels on the pod namespace's labels (kubernetes.io/metadata.name=NS selects one)")
    psub.add_parser("list", parents=[common, output], help="every named pool with its usage")
    sh = psub.add_parser("show", parents=[common, output], help="one named pool with its usage")
    sh.add_argument("name")
    dr = psub.add_parser("drain", parents=[common, output],
                         help="no new allocations from the pool; existing ones stay until DEL (field case B27)")
    dr.add_argument("name")
    dr.add_argument("--undo", action="store_true", help="make the pool active again")
    dl = psub.add_parser("delete", parents=[common], help="delete an empty pool (refused while it holds addresses)")
    dl.add_argument("name")


def _inventory_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                       common: argparse.ArgumentParser) -> None:
    """``list``, ``pools``, ``blocks``, ``usage`` (docs/ipamctl.md "Pools, blocks and usage")."""
    pool_help = "only this pool: its id (net1/0a010200-24) or <network>/<CIDR> (net1/10.1.2.0/24)"
    ls = sub.add_parser("list", parents=[common], help="list allocations (a table, one row per attachment)")
    ls.add_argument("--network", default="", help="only this network")
    ls.add_argument("--node", default="", help="only attachments allocated by this node's daemon")
    ls.add_argument("--pool", default="", help="only attachments holding an address of this pool: " + pool_help[11:])
    ls.add_argument("--namespace", default="", help="only pods of this Kubernetes namespace")
    ls.add_argument("--pod", default="", help="only this Kubernetes pod name")
    pl = sub.add_parser("pools", parents=[common], help="every pool with its size, allocated, free and blocks")
    pl.add_argument("--network", default="", help="only this network")
    pl.add_argument("--pool", default="", help=pool_help)
    bl = sub.add_parser("blocks", parents=[common], help="every claimed block: owner, used, free, borrowed")
    bl.add_argument("--pool", default="", help=pool_help)
    bl.add_argument("--node", default="", help="only blocks this node owns")
    us = sub.add_parser("usage", parents=[common], help="utilisation per pool and per node")
    us.add_argument("--watch", type=float, default=0.0, metavar="SECONDS", help="print again every SECONDS")
    us.add_argument("--count", type=int, default=0, metavar="N", help="with --watch: stop after N prints")
    for sp in (ls, pl, bl, us):
        sp.add_argument("-o", "--output", choices=("text", "json"), default="text", help="text (default) or json")


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns left-aligned to their widest cell, two spaces apart, no trailing spaces."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [header, *rows])


def _allocation_json(a: Any) -> dict[str, Any]:
    return {"network": a.network, "containerID": a.container_id, "ifName": a.if_name,
            "addresses": [x.address for x in a.addresses], "pools": [x.pool for x in a.addresses], "node": a.node,
            "netns": a.netns, "pod": dict(a.pod)}


def _pool_rows(pools: Sequence[PoolInfo]) -> str:
    from .domain.inventory import format_percent

    return render_table(
        ["POOL", "SUBNET", "RANGE", "BLOCK", "GATEWAY", "SIZE", "ALLOCATED", "FREE", "BLOCKS", "USED%"],
        [[p.pool, p.subnet, "%s-%s" % (p.range_start, p.range_end), "/%d" % p.block_prefix,
          p.gateway if p.gateway_mode == "subnet" and p.gateway else p.gateway_mode, str(p.size),
          str(p.allocated), str(p.free), str(p.blocks), format_percent(p.utilisation)] for p in pools])


def _node_rows(nodes: Sequence[NodeUsage]) -> str:
    from .domain.inventory import format_percent

    return render_table(
        ["NODE", "ALIVE", "BLOCKS", "CAPACITY", "USED", "FREE", "USED%", "BORROWED-IN", "ALLOCATED",
         "BORROWED-ELSEWHERE"],
        [[n.node, "yes" if n.alive else "no", str(n.blocks), str(n.capacity), str(n.used), str(n.free),
          format_percent(n.utilisation), str(n.borrowed_in), str(n.allocated), str(n.borrowed_elsewhere)]
         for n in nodes])


def _inventory(args: argparse.Namespace, socket: str) -> int:
    """``list``, ``pools``, ``blocks``, ``usage``: exit 0 with the answer; 2 for a usage error (argparse's, or the
    daemon refusing a filter: code 7, e.g. a malformed or unknown pool); 1 when the daemon or etcd fails (the
    message names the cause)."""
    import time

    from ipamd_client import IpamClient

    from .domain.errors import IpamError

    if args.cmd == "usage" and (args.watch < 0 or args.count < 0 or (args.count and not args.watch)):
        print("ipamctl usage: --watch SECONDS must be > 0, --count N >= 0 and only with --watch", file=sys.stderr)
        return 2
    try:
        with IpamClient(socket) as client:
            if args.cmd == "list":
                rev, allocs = client.list_allocations(args.network, node=args.node, pool=args.pool,
                                                      namespace=args.namespace, pod=args.pod)
                if args.output == "json":
                    print(json.dumps({"revision": rev, "allocations": [_allocation_json(a) for a in allocs]},
                                     indent=2))
                elif allocs:
                    print(render_table(["ATTACHMENT", "ADDRESSES", "NODE", "NAMESPACE", "POD"], [
                        ["%s/%s/%s" % (a.network, a.container_id, a.if_name),
                         ",".join(x.address for x in a.addresses), a.node or "-", a.pod.get("namespace") or "-",
                         a.pod.get("name") or "-"] for a in allocs]))
                print("%d attachment(s) at revision %d" % (len(allocs), rev), file=sys.stderr)
            elif args.cmd == "pools":
                rev, pools = client.pools(args.network, args.pool)
                if args.output == "json":
                    print(json.dumps({"revision": rev, "pools": [p.to_json() for p in pools]}, indent=2))
                elif pools:
                    print(_pool_rows(pools))
                print("%d pool(s) at revision %d" % (len(pools), rev), file=sys.stderr)
            elif args.cmd == "blocks":
                rev, blocks, nodes = client.blocks(args.pool, args.node)
                if args.output == "json":
                    print(json.dumps({"revision": rev, "blocks": [b.to_json() for b in blocks],
                                      "nodes": [n.to_json() for n in nodes]}, indent=2))
                else:
                    if blocks:
                        print(render_table(
                            ["BLOCK", "POOL", "NODE", "SIZE", "USED", "FREE", "BORROWED", "NODE-BORROWED-ELSEWHERE"],
                            [[b.block, b.pool, b.node, str(b.size), str(b.used), str(b.free), str(b.borrowed),
                              str(b.node_borrowed)] for b in blocks]))
                    for n in nodes:
                        if n.borrowed_elsewhere:
                            print("node %s holds %d address(es) borrowed in other nodes' blocks"
                                  % (n.node, n.borrowed_elsewhere))
                print("%d block(s) at revision %d" % (len(blocks), rev), file=sys.stderr)
            else:
                shown = 0
                while True:
                    rev, pools, nodes = client.usage()
                    if args.output == "json":
                        doc = {"revision": rev, "pools": [p.to_json() for p in pools],
                               "nodes": [n.to_json() for n in nodes]}
                        print(json.dumps(doc, indent=None if args.watch else 2), flush=True)
                    else:
                        if args.watch:
                            print("revision %d at %s" % (rev, time.strftime("%H:%M:%S")))
                        print(_pool_rows(pools) if pools else "no pools yet")
                        print()
                        print(_node_rows(nodes) if nodes else "no nodes yet", flush=True)
                    shown += 1
                    if not args.watch or (args.count and shown >= args.count):
                        break
                    time.sleep(args.watch)
                    if args.output != "json":
                        print()
    except IpamError as exc:
        print("ipamctl: error %d: %s" % (exc.cni_code, exc.msg), file=sys.stderr)
        return 2 if exc.cni_code == 7 else 1
    except KeyboardInterrupt:  # the end of usage --watch
        return 0
    return 0


def _pool_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The spec object of ``ipamctl pool create``: ``--from-file`` first, then the flags given. Raises
    ``ValueError`` (a usage error) for an unreadable file or a malformed flag."""
    from .domain.errors import InvalidConfig
    from .domain.poolspec import parse_labels

    spec: dict[str, Any] = {}
    if args.from_file:
        try:
            with open(args.from_file) as fh:
                loaded = json.load(fh)
        except (OSError, ValueError) as exc:
            raise ValueError("--from-file %s: %s" % (args.from_file, exc)) from None
        if not isinstance(loaded, dict):
            raise ValueError("--from-file %s is not a JSON object" % args.from_file)
        spec.update(loaded)
    spec["name"] = args.name
    if args.cidr:
        spec["cidr"] = args.cidr
    if not spec.get("cidr"):
        raise ValueError("--cidr is required")
    for flag, key in (("block_size", "blockSize"), ("gateway_mode", "gatewayMode"), ("gateway", "gateway"),
                      ("exclude", "exclude"), ("release_cooldown_seconds", "releaseCooldownSeconds"),
                      ("strict_affinity", "strictAffinity"), ("max_blocks_per_node", "maxBlocksPerNode")):
        if getattr(args, flag) is not None:
            spec[key] = getattr(args, flag)
    if args.route is not None:
        spec["routes"] = [{"dst": r.split(",", 1)[0], **({"gw": r.split(",", 1)[1]} if "," in r else {})}
                          for r in args.route]
    try:
        for flag, key in (("node_selector", "nodeSelector"), ("namespace_selector", "namespaceSelector")):
            if getattr(args, flag) is not None:
                spec[key] = parse_labels(getattr(args, flag), "--" + flag.replace("_", "-"))
    except InvalidConfig as exc:
        raise ValueError(exc.msg) from None
    return spec


def _pool_table(pools: Sequence[dict[str, Any]]) -> str:
    def labels(d: dict[str, str]) -> str:
        return ",".join("%s=%s" % kv for kv in sorted(d.items())) or "*"

    return render_table(
        ["NAME", "CIDR", "BLOCK", "GATEWAY", "STATE", "SIZE", "ALLOCATED", "BLOCKS", "MAX/NODE", "NODES",
         "NAMESPACES"],
        [[p["name"], p["cidr"], "/%d" % p["blockSize"], p["gatewayMode"] + (" " + p["gateway"] if "gateway" in p
                                                                               else ""),
          p["state"], str(p["size"]), str(p["allocated"]), str(p["blocks"]), str(p["maxBlocksPerNode"] or "-"),
          labels(p["nodeSelector"]), labels(p["namespaceSelector"])] for p in pools])


def _pool(args: argparse.Namespace, socket: str) -> int:
    """``ipamctl pool ...``: exit 0 with the answer; 2 for a usage error or an invalid request (code 7: invalid
    spec, unknown or existing name); 3 when a delete is refused because the pool still holds addresses (code 120,
    the message gives the count); 1 when the daemon or etcd fails (docs/ipamctl.md "Named pools")."""
    from ipamd_client import IpamClient

    from .domain.errors import IpamError

    try:
        spec = _pool_spec(args) if args.pool_cmd == "create" else {}
    except ValueError as exc:
        print("ipamctl pool create: %s" % exc, file=sys.stderr)
        return 2
    try:
        with IpamClient(socket) as client:
            if args.pool_cmd == "delete":
                removed = client.delete_pool(args.name)
                print("pool %s deleted (%d empty block(s) removed)" % (args.name, removed))
                return 0
            if args.pool_cmd == "list":
                rev, pools = client.named_pools()
            else:
                one = {"create": lambda: client.create_pool(spec), "show": lambda: client.named_pool(args.name),
                       "drain": lambda: client.drain_pool(args.name, args.undo)}[args.pool_cmd]()
                rev, pools = one["specRevision"], [one]
            if args.output == "json":
                print(json.dumps({"revision": rev, "pools": pools} if args.pool_cmd == "list" else pools[0],
                                 indent=2))
            elif args.pool_cmd == "show":
                p = pools[0]
                for key in ("name", "poolId", "cidr", "blockSize", "gatewayMode", "gateway", "routes", "exclude",
                            "releaseCooldownSeconds", "strictAffinity", "maxBlocksPerNode", "nodeSelector",
                            "namespaceSelector", "state", "size", "allocated", "blocks", "specRevision"):
                    if key in p:
                        value = p[key]
                        print("%-23s %s" % (key + ":", json.dumps(value) if isinstance(value, (list, dict, bool))
                                            else value))
            elif pools:
                print(_pool_table(pools))
            if args.pool_cmd == "list":
                print("%d named pool(s) at revision %d" % (len(pools), rev), file=sys.stderr)
            elif args.pool_cmd in ("create", "drain"):
                print("pool %s %s" % (args.name, {"create": "created", "drain": "is " + pools[0]["state"]}[
                    args.pool_cmd]), file=sys.stderr)
    except IpamError as exc:
        print("ipamctl: error %d: %s%s" % (exc.cni_code, exc.msg, " (%s)" % exc.details if exc.details else ""),
              file=sys.stderr)
        return {7: 2, 120: 3}.get(exc.cni_code, 1)
    return 0


def _verify_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                   common: argparse.ArgumentParser) -> None:
    """``ipamctl verify`` (docs/ipamctl.md, docs/namespace-checks.md)."""
    vf = sub.add_parser("verify", parents=[common],
                        help="look inside the network namespaces of this node's attachments (one line each)")
    vf.add_argument("--all", action="store_true", help="every attachment of the daemon's node")
    vf.add_argument("--network", default="", help="only this network")
    vf.add_argument("--container", default="", help="only this container ID")
    vf.add_argument("-o", "--output", choices=("text", "json"), default="text")
    vf.add_argument("--count", type=int, default=1, choices=range(1, 11), metavar="N",
                    help="echo requests per gateway, 1-10 (default 1)")
    vf.add_argument("--probe-timeout", type=float, default=1.0, metavar="SECONDS",
                    help="wait for each echo reply, 0.01-5 s (default 1)")
    vf.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS",
                    help="how long the daemon may take for all attachments (default 120)")


def _verify_line(r: Any) -> str:
    """One attachment of ``ipamctl verify``: status, handle, namespace, then findings and what was seen."""
    a = r.allocation
    seen = ["%s %s" % (a.if_name, r.interface_state or "missing")] if r.netns_exists else []
    if r.interface_state:
        seen.append("addresses %s" % (", ".join(r.addresses) or "none"))
        seen.append("routes %s" % (", ".join(r.routes) or "none"))
    for p in r.probes:
        rtt = " %.2f ms" % (p.rtt_seconds * 1000) if p.received else ""
        seen.append("gateway %s echo %d/%d%s neighbour %s%s" % (p.gateway, p.received, p.sent, rtt, p.neighbour,
                                                               " (%s)" % p.error if p.error else ""))
    details = [str("%s: %s" % (f.reason, f.message)) for f in r.findings] + seen
    return "%s\t%s/%s/%s\tnetns=%s\t%s" % ("OK" if r.ok else "FAIL", a.network, a.container_id, a.if_name,
                                           a.netns or "-", "; ".join(details))


def _verify_json(r: Any) -> dict[str, Any]:
    a = r.allocation
    return {"network": a.network, "containerID": a.container_id, "ifName": a.if_name, "netns": a.netns,
            "ok": r.ok, "findings": [{"reason": f.reason, "message": f.message, "code": f.code} for f in r.findings],
            "netnsExists": r.netns_exists, "interface": r.interface_state, "addresses": list(r.addresses),
            "routes": list(r.routes), "expectedRoutes": list(r.expected_routes),
            "gateways": [{"gateway": p.gateway, "sent": p.sent, "received": p.received, "rttSeconds": p.rtt_seconds,
                          "neighbour": p.neighbour, "error": p.error} for p in r.probes]}


def _verify(args: argparse.Namespace, socket: str) -> int:
    """Exit 0 when every attachment is healthy, 1 when one is not (or ``--container`` matches none), 2 on
    errors (raised to :func:`main`)."""
    from ipamd_client import IpamClient

    if not (args.all or args.network or args.container):
        print("ipamctl verify: say which attachments: --all, --network NET or --container ID", file=sys.stderr)
        return 2
    if args.all and (args.network or args.container):
        print("ipamctl verify: --all selects every attachment of the node; give it alone, or --network and/or "
              "--container", file=sys.stderr)
        return 2
    if not 0.01 <= args.probe_timeout <= 5:
        print("ipamctl verify: --probe-timeout must be 0.01 to 5 seconds", file=sys.stderr)
        return 2
    with IpamClient(socket, timeout=args.timeout) as client:
        node, reports = client.verify(args.network, args.container, probe_count=args.count,
                                      probe_timeout=args.probe_timeout)
    failing = sum(1 for r in reports if not r.ok)
    if args.output == "json":
        print(json.dumps({"node": node, "attachments": [_verify_json(r) for r in reports], "failing": failing},
                         indent=2))
    else:
        for r in reports:
            print(_verify_line(r))
    print("node %s: %d attachment(s) verified, %d failing" % (node, len(reports), failing), file=sys.stderr)
    if args.container and not reports:
        print("ipamctl verify: container %s has no attachment on node %s%s" % (
            args.container, node, " in network %s" % args.network if args.network else ""), file=sys.stderr)
        return 1
    return 1 if failing else 0


def _store(args: argparse.Namespace) -> tuple[Any, Any]:
    """The daemon's etcd settings (file, environment, flags) and a store on them. Raises ``ConfigError``."""
    from . import config
    from .store.etcd import EtcdStore

    argv = ["--config", args.config] if args.config else []
    for flag in _ETCD_FLAGS:
        if getattr(args, flag) is not None:
            argv += ["--" + flag.replace("_", "-"), getattr(args, flag)]
    cfg = config.load(argv)
    return cfg, EtcdStore(cfg.etcd_endpoints, cfg.etcd_prefix, ca_cert=cfg.etcd_ca_cert or None,
                          cert=cfg.etcd_cert or None, key=cfg.etcd_key or None, user=cfg.etcd_user or None,
                          password=cfg.etcd_password or None, password_file=cfg.etcd_password_file or None)


def _check(args: argparse.Namespace) -> int:
    """Exit 0: no violation and no leak (warnings are listed); 1: something to repair or a violation."""
    from .check import read_snapshot, report

    cfg, store = _store(args)
    try:
        kvs, revision = read_snapshot(store)
    finally:
        store.close()
    doc = report(kvs, revision, cfg.etcd_prefix)
    if args.report:
        with open(args.report, "w") as fh:
            json.dump(doc, fh, indent=1)
    findings = doc["findings"]
    bad = [f for f in findings if f["severity"] in ("violation", "leak")]
    if args.output == "json":
        print(json.dumps(doc, indent=1))
        return 1 if bad else 0
    print("etcd %s prefix %s at revision %d: %s" % (cfg.etcd_endpoints, cfg.etcd_prefix, revision,
                                                    ", ".join("%s=%d" % kv for kv in doc["counts"].items())))
    for f in findings:
        tag = {"violation": "INV%d" % f["invariant"], "leak": "LEAK", "warning": "WARN"}[f["severity"]]
        print("%s %s: %s%s" % (tag, f["key"], f["message"], " (repairable)" if f["repair"] else ""))
    warnings = len(findings) - len(bad)
    if bad:
        print("FAILED: %d violation(s) or leak(s), %d repairable, %d warning(s)"
              % (len(bad), sum(1 for f in bad if f["repair"]), warnings))
    else:
        print("OK: all invariants hold%s" % (" (%d warning(s))" % warnings if warnings else ""))
    return 1 if bad else 0


def _repair(args: argparse.Namespace) -> int:
    """Exit 0: every repair applied or skipped because its records changed; 2: the report is refused."""
    from .check import apply_repair, repairs_of

    try:
        with open(args.from_report) as fh:
            doc = json.load(fh)
        repairs = repairs_of(doc, args.max_age)
    except (OSError, ValueError) as exc:
        print("ipamctl: repair refused: %s" % exc, file=sys.stderr)
        return 2
    cfg, store = _store(args)
    if doc.get("prefix") != cfg.etcd_prefix:
        store.close()
        print("ipamctl: repair refused: the report is of prefix %r, not %r" % (doc.get("prefix"), cfg.etcd_prefix),
              file=sys.stderr)
        return 2
    done = skipped = 0
    try:
        for key, repair in repairs:
            if args.dry_run:
                print("would delete %s" % ", ".join(repair.deletes))
                continue
            if apply_repair(store, repair, 10.0):
                done += 1
                print("deleted %s" % ", ".join(repair.deletes))
            else:
                skipped += 1
                print("skipped %s: changed since the report" % key)
    finally:
        store.close()
    print("%d repaired, %d skipped, %d in the report" % (done, skipped, len(repairs)), file=sys.stderr)
    return 0


def _node_remove(args: argparse.Namespace) -> int:
    """Exit 0: done (or nothing to do, or a dry run); 1: refused (live lease) or not confirmed."""
    from .check import read_snapshot
    from .nodes import plan_removal, remove_node

    _cfg, store = _store(args)
    try:
        kvs, _ = read_snapshot(store)
        plan = plan_removal(kvs, args.node)
        for line in plan.describe():
            print(line)
        if args.dry_run:
            if plan.alive and not args.force:
                print("dry run: the real run would be refused: node %s still holds a live lease (--force overrides)"
                      % args.node)
            return 0
        if plan.alive and not args.force:
            print("ipamctl: refused: node %s still holds a live lease; --force to remove it anyway" % args.node,
                  file=sys.stderr)
            return 1
        if not args.yes:
            if not sys.stdin.isatty():
                print("ipamctl: not confirmed: add --yes", file=sys.stderr)
                return 1
            if input("release all of this? [y/N] ").strip().lower() != "y":
                return 1
        result = remove_node(store, plan, force=args.force)
    finally:
        store.close()
    print("released %d attachment(s), deleted %d block(s); kept %d block(s) that hold other nodes' addresses; "
          "skipped %d changed since read" % (result.released, result.blocks_deleted, len(result.blocks_kept),
                                             len(result.skipped)))
    for key in result.blocks_kept:
        print("  kept %s" % key)
    return 0


def _status(client: IpamClient, output: str) -> int:
    """``ipamctl status``: print the daemon's Status (docs/operations.md "Health"); exit 0 when it is ready, 1 when
    it is not (so scripts can wait on it)."""
    st = client.status()
    if output == "json":
        print(json.dumps(dataclasses.asdict(st), indent=2))
        return 0 if st.ready else 1
    print("node %s, ipamd %s: %s" % (st.node, st.version, "ready" if st.ready else "NOT READY (%s: %s)"
                                     % (st.not_ready_reason, st.not_ready_detail)))
    if st.etcd_reachable:
        print("etcd %s: version %s, member %x, leader %s, revision %d%s"
              % (st.etcd_endpoint, st.etcd_version, st.etcd_member_id,
                 "%x" % st.etcd_leader if st.etcd_leader else "none", st.etcd_revision,
                 ", ALARMS " + ",".join(st.etcd_alarms) if st.etcd_alarms else ""))
    else:
        print("etcd %s: unreachable: %s" % (st.etcd_endpoint, st.etcd_error))
    print("sync: view read at revision %d, up to date to revision %d" % (st.sync_revision, st.watch_revision))
    for p in st.pools:
        print("pool %s: %d of %d allocated, %d block(s) claimed, %d of them here: %s"
              % (p.pool, p.allocated, p.size, p.blocks, len(p.own_blocks), " ".join(p.own_blocks) or "-"))
    if not st.pools:  # empty because etcd could not be read is not "no pools"
        print("pools: unknown (etcd could not be read)" if st.etcd_error else "no pools yet")
    return 0 if st.ready else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    socket = getattr(args, "socket", None) or os.environ.get("IPAMD_GRPC_SOCKET") or "/run/ipamd/ipamd.sock"

    from .config import ConfigError
    from .domain.errors import IpamError

    try:
        if args.cmd in ("check", "repair", "node"):
            try:
                return {"check": _check, "repair": _repair, "node": _node_remove}[args.cmd](args)
            except ConfigError as exc:
                print("ipamctl: %s" % exc, file=sys.stderr)
                return 2
        if args.cmd == "verify":
            return _verify(args, socket)
        if args.cmd in ("list", "pools", "blocks", "usage"):
            return _inventory(args, socket)
        if args.cmd == "pool":
            return _pool(args, socket)

        from ipamd_client import IpamClient

        with IpamClient(socket) as client:
            if args.cmd == "status":
                return _status(client, args.output)
            if args.cmd == "get":
                found = client.get(args.network, args.container_id, args.if_name)
                if found is None:
                    print("not found", file=sys.stderr)
                    return 1
                print(json.dumps({"network": found.network, "containerID": found.container_id,
                                  "ifName": found.if_name, "addresses": [x.address for x in found.addresses],
                                  "node": found.node, "pod": found.pod}, indent=2))
            elif args.cmd == "release":
                print("released %d address(es)" % client.release(args.network, args.container_id, args.if_name))
            elif args.cmd == "gc":
                released, waiting = client.reconcile(dry_run=args.dry_run)
                verb = "would release" if args.dry_run else "released"
                for item in released:
                    print("%s %s: %s" % (verb, item.key, item.reason))
                for item in waiting:
                    print("waiting %.0f s more: %s: %s" % (item.wait, item.key, item.reason))
                print("%d %s, %d waiting for their grace period" % (len(released), verb, len(waiting)),
                      file=sys.stderr)
        return 0
    except IpamError as exc:
        print("ipamctl: error %d: %s" % (exc.cni_code, exc.msg), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
