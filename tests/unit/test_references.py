"""Every reference in the code, tests and docs resolves inside the repository (docs/DEVELOPING.md "House style"):
no document outside it (the team's design notes live beside the checkout, not in it), every cited ``docs/`` file
exists, and every field case id cited is in the catalogue (docs/field-cases.md), every conformance case number in
docs/conformance.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = re.compile(r"(?<![/\w-])(design|style|cni-conformance|field-cases)\.md|\.\./shared|/work/")
DOCS = re.compile(r"(?<![\w/.-])docs/([\w.-]+\.md)")
FIELD_CASE = re.compile(r"\b[Ff]ield cases? (B\d\d)\b|\b(B\d\d)\b(?= |:|,|\)|/|$)")


def tracked(*suffixes: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / f for f in out if f.endswith(suffixes) and not f.startswith("tests/fixtures/")]


FILES = [*tracked(".py", ".md", ".c", ".toml", ".yml", ".yaml", ".sh"), ROOT / "Makefile", ROOT / ".ci" / "run"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_reference_outside_the_repository(path: Path) -> None:
    if path.name == "test_references.py":
        return
    bad = [(n, m.group(0)) for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
           for m in [OUTSIDE.search(line)] if m and "docs/" + m.group(0) not in line]
    assert not bad, bad


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_docs_exist(path: Path) -> None:
    missing = sorted({m.group(1) for m in DOCS.finditer(path.read_text(errors="replace"))
                      if not (ROOT / "docs" / m.group(1)).is_file()})
    assert not missing, missing


def test_cited_field_cases_are_in_the_catalogue() -> None:
    catalogue = set(re.findall(r"^### (B\d\d)\b", (ROOT / "docs" / "field-cases.md").read_text(), re.M))
    assert len(catalogue) >= 40
    cited: dict[str, set[str]] = {}
    for path in FILES:
        for m in re.finditer(r"\b(B\d\d)\b", path.read_text(errors="replace")):
            cited.setdefault(m.group(1), set()).add(str(path.relative_to(ROOT)))
    unknown = {case: sorted(where) for case, where in cited.items() if case not in catalogue}
    assert not unknown, unknown


def test_cited_conformance_cases_are_listed() -> None:
    listed = set(re.findall(r"^\| (\d+) \|", (ROOT / "docs" / "conformance.md").read_text(), re.M))
    assert {str(n) for n in range(1, 74)} <= listed
