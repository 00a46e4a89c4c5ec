"""One table, four formats: what `--format table|markdown|csv|json` prints.

A command's output is a document: a list of blocks, each a line of text or a Table. `render`
writes it as a terminal table (rich; colour only on a terminal), as Markdown that pastes into an
issue, as CSV that pastes into a spreadsheet (the tables only), or as JSON (the tables' records:
a sweep's rows as the run holds them). rich is imported when a table is drawn, not before:
`microbench --help` does not pay for it.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field

FORMATS = ("table", "markdown", "csv", "json")


@dataclass
class Table:
    """Formatted cells under `columns`; `records`, the rows as data, are what JSON prints
    (default: each row as {column: cell}); `title`, a line printed above the table."""
    columns: list
    rows: list
    title: str = ""
    records: list | None = None
    name: str = "rows"          # its key when a document's JSON holds several tables
    left: int = 0               # how many leading columns hold text (left-aligned)

    def data(self) -> list:
        if self.records is not None:
            return self.records
        return [dict(zip(self.columns, r)) for r in self.rows]


@dataclass
class Doc:
    """Blocks in order: str (lines of text) or Table."""
    blocks: list = field(default_factory=list)

    def tables(self) -> list:
        return [b for b in self.blocks if isinstance(b, Table)]


def render(doc: Doc, fmt: str = "table", color: bool = False) -> str:
    """The document in format `fmt` (one of FORMATS); `color`: ANSI styles in terminal tables."""
    if fmt == "json":
        tables = doc.tables()
        data = (tables[0].data() if len(tables) == 1
                else {t.name: t.data() for t in tables})
        return json.dumps(data, indent=2, default=str)
    if fmt == "csv":
        return "\n".join(csv_table(t) for t in doc.tables()).rstrip("\n")
    out = []
    for b in doc.blocks:
        if isinstance(b, Table):
            if b.title:
                out.append(f"**{b.title}**\n" if fmt == "markdown" else b.title)
            out.append(markdown_table(b) if fmt == "markdown" else
                       rich_table(b.columns, b.rows, color, b.left))
        elif b:
            out.append("\n".join(f"- {l}" for l in b.splitlines()) if fmt == "markdown" else b)
    return ("\n\n" if fmt == "markdown" else "\n").join(out)


def rich_table(columns, rows, color: bool = False, left: int = 0) -> str:
    """A terminal table drawn by rich at its natural width (never wrapped or squeezed to the
    terminal: a log file keeps every column); numbers right-aligned."""
    from rich import box
    from rich.console import Console
    from rich.table import Table as RichTable
    t = RichTable(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                  header_style="bold" if color else "")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i < left else "right", no_wrap=True)
    for r in rows:
        t.add_row(*(str(c) for c in r))
    buf = io.StringIO()
    Console(file=buf, width=100_000, force_terminal=color, color_system="standard" if color else None,
            highlight=False, emoji=False, markup=False).print(t)
    lines = [l.rstrip() for l in buf.getvalue().splitlines()]
    return "\n".join(l for l in lines if l.strip())


def markdown_table(t: Table) -> str:
    """A GitHub pipe table: text columns left-aligned, numbers right-aligned."""
    cell = lambda c: str(c).replace("|", "\\|")
    head = "| " + " | ".join(cell(c) for c in t.columns) + " |"
    rule = "|" + "|".join(":---" if i < t.left else "---:" for i in range(len(t.columns))) + "|"
    body = ["| " + " | ".join(cell(c) for c in r) + " |" for r in t.rows]
    return "\n".join([head, rule, *body])


def csv_table(t: Table) -> str:
    """The table as CSV: a header row, then the cells as shown, an absent value empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.columns)
    w.writerows([["" if c == "-" else c for c in r] for r in t.rows])
    return buf.getvalue()
