"""The README, docs/ and the results index link to each other and to run folders by relative
paths and heading anchors: every such link must lead to a file or folder that exists and, for a
Markdown file, to a heading it has (anchors as GitHub makes them: a heading's text with its
links reduced to their words, lower case, punctuation but '-' and '_' dropped, spaces to '-', a
repeated heading suffixed -1, -2, ...). Links inside code (fenced blocks, `spans`) are text."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")   # [text](target) or [text](target "title")
PAGES = [ROOT / "README.md", ROOT / "results" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def prose(text: str) -> str:
    """The text outside fenced blocks and code spans, where a link is a link."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"(`+)[^`]*?\1", "", text)


def anchors(text: str) -> set:
    seen: dict = {}
    out = set()
    fenced = False
    for line in text.splitlines():
        if line.startswith(("```", "~~~")):
            fenced = not fenced
            continue
        m = None if fenced else re.match(r" {0,3}#{1,6} (.*?)(?: #+)?$", line)
        if m:
            words = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1))
            slug = re.sub(r"[^\w\- ]", "", words.strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path) -> list:
    bad = []
    for target in LINK.findall(prose(page.read_text())):
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
    text = ("# Issue 19's targets on the H200\n```\n# not a heading\n```\n## `llama-1b`'s step\n"
            "## A\n## A\n### See [notes](notes.md#x) here ##\n~~~\n## fenced\n~~~\n")
    assert anchors(text) == {"issue-19s-targets-on-the-h200", "llama-1bs-step", "a", "a-1",
                             "see-notes-here"}


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "a.md").write_text("# Here\n[ok](#here) [gone](#there) [b](b.md#top) [c](c.md)\n"
                                   "[t](b.md#bottom \"title\") [u](#up \"title\") `[x](nowhere.md)`\n"
                                   "```\n[y](nowhere.md)\n```\n")
    (tmp_path / "b.md").write_text("# Bottom\n")
    assert broken_links(tmp_path / "a.md") == ["#there: no such heading", "b.md#top: no such heading",
                                              "c.md: no such file", "#up: no such heading"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(page):
    assert broken_links(page) == []
