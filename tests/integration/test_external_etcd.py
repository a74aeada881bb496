"""The integration tier against an external etcd cluster (issue 9 item 7): ``IPAMD_TEST_ETCD_ENDPOINTS`` makes the
session's ``etcd`` fixture use that cluster instead of starting one, each test under its own key prefix. Here
the "external" cluster is one this test starts; a child pytest runs the smoke and client tests against it, and
their keys land in it."""

from __future__ import annotations

import os
import subprocess
import sys

from harness import ROOT, EtcdCluster

TESTS = ["tests/integration/test_smoke.py", "tests/integration/test_client.py"]


def test_integration_tier_runs_against_an_external_cluster():
    cluster = EtcdCluster(1).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
        env["IPAMD_TEST_ETCD_ENDPOINTS"] = cluster.endpoints
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
        assert " passed" in out.stdout
        keys = cluster.etcdctl("get", "--prefix", "/ipamd-test/", "--keys-only").split()
        prefixes = {"/".join(k.split("/")[:3]) for k in keys}
        assert len(prefixes) >= 2, prefixes  # several tests, each under its own prefix
    finally:
        cluster.stop()
