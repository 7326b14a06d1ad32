"""docs/robustness.md names a test for each outcome: every test it names must exist."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_test_the_robustness_doc_names_exists():
    doc = (ROOT / "docs" / "robustness.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\b(test_[a-z0-9_]+)\b(?!\.py)", doc))
    defined = {
        match for path in (ROOT / "tests").rglob("test_*.py")
        for match in re.findall(r"^\s*(?:async )?def (test_[a-z0-9_]+)", path.read_text(encoding="utf-8"), re.M)
    }
    modules = {path.stem for path in (ROOT / "tests").rglob("test_*.py")}
    known = defined | modules | _written_by_tests()
    # A name ending in `_` is a prefix for a family of tests (the doc writes `test_a_flood_of_media_...`).
    missing = sorted(n for n in named - known if not (n.endswith("_") and any(d.startswith(n) for d in known)))
    assert not missing, f"docs/robustness.md names tests that do not exist: {missing}"


def _written_by_tests() -> set[str]:
    """Tests that a test writes into a pytester project (the plugin's own tests), found in string literals."""
    names: set[str] = set()
    for path in (ROOT / "tests").rglob("test_*.py"):
        names |= set(re.findall(r"def (test_[a-z0-9_]+)\(", path.read_text(encoding="utf-8")))
    return names
