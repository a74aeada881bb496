"""bench/b04.py (field case B04 at full size) in its ``--quick`` size: it runs clean, and its checks (addresses
distinct, the ADD answers agreeing with etcd, ``ipamctl check`` clean at the end) fail the run when they should.
About 20 s: two runs of the B04 section with three daemons. The figures themselves are in docs/benchmarks.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from b04 import address_problems  # noqa: E402


def run_bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH / "b04.py"), "--quick", "--only", "b04", *args],
                          capture_output=True, text=True, timeout=300)


def test_address_problems() -> None:
    assert address_problems(["10.0.0.2/24", "10.0.0.3/24"], ["10.0.0.3/24", "10.0.0.2/24"], 2) == []
    assert any("twice" in p for p in address_problems(["10.0.0.2/24", "10.0.0.2/24"], ["10.0.0.2/24"] * 2, 2))
    assert any("differ" in p for p in address_problems(["10.0.0.2/24"], ["10.0.0.4/24"], 1))
    assert any("expected 2" in p for p in address_problems(["10.0.0.2/24"], ["10.0.0.2/24"], 2))


def test_b04_bench_quick_runs_clean() -> None:
    p = run_bench()
    assert p.returncode == 0, p.stdout + p.stderr
    assert "ADD: 96 in" in p.stdout and "DEL: 96 in" in p.stdout, p.stdout
    assert "PROBLEM" not in p.stdout and "ipamctl check: exit 0" in p.stdout


def test_b04_bench_fails_on_a_duplicate_and_an_unclean_check() -> None:
    p = run_bench("--inject", "duplicate", "--inject", "check")
    assert p.returncode == 1, p.stdout + p.stderr
    problems = [line for line in p.stdout.splitlines() if line.startswith("PROBLEM")]
    assert any("handed out twice" in line for line in problems), p.stdout
    assert any("ipamctl check at the end: exit 1" in line for line in problems), p.stdout
