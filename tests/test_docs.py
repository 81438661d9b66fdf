"""The README is a user's guide of at most 400 lines; measurements live in docs/BENCHMARKS.md, which it links."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BENCHMARKS = ROOT / "docs" / "BENCHMARKS.md"
MAX_README_LINES = 400


def test_the_readme_has_at_most_400_lines():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines (at most {MAX_README_LINES}): tables and " \
                                      "measurement logs go to docs/BENCHMARKS.md"


def test_the_benchmarks_file_exists_and_the_readme_links_it():
    links = re.findall(r"\]\(([^)#\s]+)", README.read_text(encoding="utf-8"))
    assert (BENCHMARKS.is_file(), "docs/BENCHMARKS.md" in links) == (True, True)


def test_every_file_the_readme_links_exists():
    links = {link for link in re.findall(r"\]\(([^)#\s]+)", README.read_text(encoding="utf-8"))
             if not link.startswith(("http://", "https://"))}
    assert sorted(link for link in links if not (ROOT / link).exists()) == []
