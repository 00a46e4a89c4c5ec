"""The README and docs/ link to each other by relative paths and heading anchors: every such
link must lead to a file that exists and, for a Markdown file, to a heading it has (anchors as
GitHub makes them: lower case, punctuation but '-' and '_' dropped, spaces to '-', a repeated
heading suffixed -1, -2, ...)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(text: str) -> set:
    seen: dict = {}
    out = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r"#+ (.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path) -> list:
    bad = []
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path) if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            bad.append(f"{target}: no such heading")
    return bad


def test_anchors_follow_githubs_rule():
    text = "# Issue 19's targets on the H200\n```\n# not a heading\n```\n## `llama-1b`'s step\n## A\n## A\n"
    assert anchors(text) == {"issue-19s-targets-on-the-h200", "llama-1bs-step", "a", "a-1"}


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "a.md").write_text("# Here\n[ok](#here) [gone](#there) [b](b.md#top) [c](c.md)\n")
    (tmp_path / "b.md").write_text("# Bottom\n")
    assert broken_links(tmp_path / "a.md") == ["#there: no such heading", "b.md#top: no such heading",
                                              "c.md: no such file"]


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_every_relative_link_leads_somewhere(page):
    assert broken_links(page) == []
