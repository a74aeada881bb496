"""What Kubernetes mode's client costs the daemon (not a test): docs/decisions.md "Dependencies" quotes its figures.

    .venv/bin/python bench/kube_client.py [--runs N] [--python PY]...

For each client (``kubernetes``, the one ipamd uses, and ``lightkube`` when it can be imported), in fresh
processes: the import time and the resident memory it adds, alone and on top of the daemon's own modules (grpc,
the etcd client, prometheus, pyroute2, the service); medians of ``--runs`` processes. ``--python`` adds another
interpreter (e.g. a scratch venv with lightkube) to measure in. Never fails on a figure; exit status 1 only when no
client could be measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROBE = r"""
import json, sys, time
def rss():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
if sys.argv[2] == "daemon":
    import ipamd.cniserver, ipamd.grpcapi, ipamd.metrics, ipamd.service, ipamd.store.etcd, pyroute2  # noqa: F401
base, t0 = rss(), time.perf_counter()
if sys.argv[1] == "kubernetes":
    import kubernetes.client, kubernetes.config, kubernetes.watch  # noqa: F401
else:
    import lightkube, lightkube.resources.core_v1  # noqa: F401
print(json.dumps({"ms": (time.perf_counter() - t0) * 1000, "mib": rss() - base, "base": base}))
"""


def measure(python: str, client: str, context: str, runs: int) -> dict[str, float] | None:
    out = []
    for _ in range(runs):
        p = subprocess.run([python, "-c", PROBE, client, context], capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            return None
        out.append(json.loads(p.stdout))
    return {k: statistics.median(o[k] for o in out) for k in ("ms", "mib", "base")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--python", action="append", default=[])
    args = ap.parse_args()
    measured = 0
    print("%-10s %-8s %-40s %10s %10s %12s" % ("client", "context", "interpreter", "import ms", "+RSS MiB",
                                                  "base MiB"))
    for python in [sys.executable, *args.python]:
        for client in ("kubernetes", "lightkube"):
            for context in ("alone", "daemon"):
                fig = measure(python, client, context, args.runs)
                if fig is None:
                    continue
                measured += 1
                print("%-10s %-8s %-40s %10.0f %10.1f %12.1f" % (client, context, python[-40:], fig["ms"],
                                                                  fig["mib"], fig["base"]))
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
