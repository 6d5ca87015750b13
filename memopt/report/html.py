"""The report as one self-contained HTML page: every plot embedded as a data URI, the tables sortable by a few
lines of inline script, no external URL (the MLflow UI shows it inside its artifact viewer, offline too)."""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

from memopt.report.tables import Table

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.55rem; text-align: right; }
td:first-child, th:first-child, table.facts td { text-align: left; }
table.sortable th { cursor: pointer; background: #f3f3f3; user-select: none; }
table.sortable th.asc::after { content: " \\25B2"; } table.sortable th.desc::after { content: " \\25BC"; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9rem; color: #555; } code, pre { background: #f6f6f6; }
pre { padding: 0.6rem; white-space: pre-wrap; word-break: break-all; }
"""

# Sorting by hand: a dozen lines, where a library would be an external URL or a vendored file.
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.from(body.rows), asc = !th.classList.contains("asc");
      table.querySelectorAll("th").forEach(function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(asc ? "asc" : "desc");
      function key(row) { var v = row.cells[column].dataset.sort; return v === undefined || v === "" ? null : v; }
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        if (x === null || y === null) { return (x === null) - (y === null); }
        var nx = Number(x), ny = Number(y), c = isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny;
        return asc ? c : -c;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str


def inline_markdown(text: str) -> str:
    """Escaped text with Markdown's `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def table_html(table: Table, sortable: bool = True) -> str:
    """A sortable table (each cell's sort key in data-sort), or with sortable=False a plain one of facts."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    rows = []
    for row in table.rows:
        cells = "".join(
            f'<td data-sort="{html.escape("" if c.sort is None else str(c.sort))}">{html.escape(c.text)}</td>'
            for c in row)
        rows.append(f"<tr>{cells}</tr>")
    css = ' class="sortable"' if sortable else ' class="facts"'
    thead = f"<thead><tr>{head}</tr></thead>" if any(table.header) else ""
    return f"<table{css}>{thead}<tbody>{''.join(rows)}</tbody></table>"


def figure_html(figure: Figure) -> str:
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    caption = inline_markdown(figure.caption)
    return (f'<figure><img alt="{html.escape(figure.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{caption}</figcaption></figure>")


def page(title: str, intro: list[str], sections: list[tuple[str, str]]) -> str:
    """The whole document; `sections` are (heading, HTML body)."""
    body = "".join(f"<p>{inline_markdown(line)}</p>" for line in intro)
    body += "".join(f"<h2>{html.escape(heading)}</h2>{content}" for heading, content in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}<script>{SCRIPT}</script>"
            "</body></html>\n")


def items_html(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{inline_markdown(item)}</li>" for item in items) + "</ul>"


def pre_html(lines: list[str]) -> str:
    return "".join(f"<pre>{html.escape(line)}</pre>" for line in lines)
