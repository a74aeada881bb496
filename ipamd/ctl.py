"""``ipamctl``: the operator's CLI (docs/ipamctl.md).

Commands:
    ipamctl list [--network NET]                  allocations, via the node's ipamd gRPC API
    ipamctl get NET CONTAINERID IFNAME
    ipamctl release NET CONTAINERID IFNAME        release one attachment (idempotent)
    ipamctl check [-o json] [--report FILE]       the invariants of the data model, read from etcd
    ipamctl repair --from-report FILE             remove exactly the broken records a recent report found
    ipamctl node remove NODE [--force] [--yes]    release a departed node's addresses and blocks
    ipamctl gc [--dry-run]                        run the node's reconciler now (or show what it would release)

``--socket`` (default ``IPAMD_GRPC_SOCKET``, else ``/run/ipamd/ipamd.sock``) picks the daemon. The etcd commands
take the daemon's own etcd settings: ``--config FILE`` (the daemon's TOML), ``IPAMD_ETCD_*`` variables and
``--etcd-*`` flags, with the daemon's precedence. Exit statuses are in docs/ipamctl.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

_ETCD_FLAGS = ("etcd_endpoints", "etcd_prefix", "etcd_ca_cert", "etcd_cert", "etcd_key", "etcd_user",
               "etcd_password")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS,
                        help="gRPC socket of the node's ipamd (default: $IPAMD_GRPC_SOCKET or /run/ipamd/ipamd.sock)")
    p = argparse.ArgumentParser(prog="ipamctl", parents=[common],
                                description="Operate ipamd: list, get and release allocations; check etcd.")
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", parents=[common], help="list allocations (prints one line per attachment)")
    ls.add_argument("--network", default="", help="only this network")
    for name in ("get", "release"):
        sp = sub.add_parser(name, parents=[common], help="%s one attachment" % name)
        sp.add_argument("network")
        sp.add_argument("container_id")
        sp.add_argument("if_name")
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
    return p


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
                          password=cfg.etcd_password or None)


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

        from ipamd_client import IpamClient

        with IpamClient(socket) as client:
            if args.cmd == "list":
                allocations = client.list(args.network)
                for a in allocations:
                    print("%s/%s/%s\t%s\tnode=%s" % (a.network, a.container_id, a.if_name,
                                                    ",".join(x.address for x in a.addresses), a.node))
                print("%d attachment(s)" % len(allocations), file=sys.stderr)
            elif args.cmd == "get":
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
