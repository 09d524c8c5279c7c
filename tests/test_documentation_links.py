"""Every relative link in README.md and documentation/ points at a file that exists and, with
``#anchor``, at a heading of that file (GitHub's anchor rule), so a renamed section or file
cannot leave a dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "documentation").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.MULTILINE)
FENCE = re.compile(r"```.*?```", re.DOTALL)


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # keeps letters, digits, underscores, hyphens and spaces
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {github_anchor(h) for h in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8")))}


def test_github_anchor_rule_on_known_headings():
    assert github_anchor("CPU forward passes: never a batch of one for narrow networks") == "cpu-forward-passes-never-a-batch-of-one-for-narrow-networks"
    assert github_anchor("Sliding-window inference: volfnet vs MONAI `sliding_window_inference`") == (
        "sliding-window-inference-volfnet-vs-monai-sliding_window_inference"
    )


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` whose file or heading does not exist."""
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            broken.append(f"{target}: no file {destination}")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading with anchor #{anchor} in {destination.name}")
    return broken


def test_dead_files_and_dead_anchors_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## A section: with punctuation\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-section-with-punctuation) [self](#local) [web](https://example.org/x.md#y)\n"
        "[gone](missing.md) [moved](other.md#old-section)\n\n## Local\n```\n[not a link](in-code.md)\n```\n"
    )
    assert broken_links(page) == [
        f"missing.md: no file {tmp_path / 'missing.md'}",
        "other.md#old-section: no heading with anchor #old-section in other.md",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_reach_an_existing_file_and_heading(page):
    broken = broken_links(page)
    assert not broken, f"{page.name}: " + "; ".join(broken)
