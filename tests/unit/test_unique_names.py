"""Test module basenames are unique across the tiers (there is no __init__.py in tests/: pytest imports each module
by its basename, and a second module with the same name stops collection)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique() -> None:
    names = Counter(p.name for p in ROOT.rglob("test_*.py"))
    assert not [n for n, c in names.items() if c > 1]
