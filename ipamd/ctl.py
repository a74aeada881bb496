"""``ipamctl``: the operator's CLI.

Commands:
    ipamctl [--socket PATH] list [--network NET]          allocations, via the daemon's gRPC API
    ipamctl [--socket PATH] get NET CONTAINERID IFNAME
    ipamctl [--socket PATH] release NET CONTAINERID IFNAME   release one attachment (idempotent)
    ipamctl check --etcd-endpoints URLS [--etcd-prefix P]    the invariants of design.md §2, read from etcd

``check`` exits 0 when every invariant holds, 1 otherwise, printing each violation.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ipamctl", description="Operate ipamd: allocations and consistency check.")
    p.add_argument("--socket", default="/run/ipamd/ipamd.sock", help="gRPC socket of the node's ipamd")
    sub = p.add_subparsers(dest="cmd", required=True)
    ls = sub.add_parser("list", help="list allocations")
    ls.add_argument("--network", default="")
    for name in ("get", "release"):
        sp = sub.add_parser(name, help="%s one attachment" % name)
        sp.add_argument("network")
        sp.add_argument("container_id")
        sp.add_argument("if_name")
    ck = sub.add_parser("check", help="check the invariants against etcd")
    ck.add_argument("--etcd-endpoints", required=True)
    ck.add_argument("--etcd-prefix", default="/ipamd/v1/")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))

    from .domain.errors import IpamError

    try:
        if args.cmd == "check":
            from .check import check_store
            from .store.etcd import EtcdStore

            store = EtcdStore(args.etcd_endpoints, args.etcd_prefix)
            try:
                violations, counts = check_store(store)
            finally:
                store.close()
            print("records: %s" % ", ".join("%s=%d" % kv for kv in counts.items()))
            for v in violations:
                print(v)
            print("OK: all invariants hold" if not violations else "FAILED: %d violation(s)" % len(violations))
            return 0 if not violations else 1

        from ipamd_client import IpamClient

        with IpamClient(args.socket) as client:
            if args.cmd == "list":
                for a in client.list(args.network):
                    print("%s/%s/%s\t%s\tnode=%s" % (a.network, a.container_id, a.if_name,
                                                    ",".join(x.address for x in a.addresses), a.node))
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
        return 0
    except IpamError as exc:
        print("ipamctl: error %d: %s" % (exc.cni_code, exc.msg), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
