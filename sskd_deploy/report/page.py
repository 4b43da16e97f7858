"""The page around the sections: header, table of contents and the one inline style sheet.

No script and no external resource: the report is read in browsers, mail clients and CI
artifact viewers alike, several of which block both.
"""

from __future__ import annotations

from collections.abc import Sequence

from sskd_deploy.report.html import Markup, Section, esc, key_values, tag

CSS = """
:root { --ink: #1d2330; --muted: #5b6472; --line: #d9dee6; --head: #f2f4f8; --accent: #2b59c3; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.45;
       font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 32px 64px; }
header { border-bottom: 3px solid var(--accent); padding-bottom: 12px; margin-bottom: 20px; }
h1 { font-size: 24px; margin: 0 0 8px; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 22px 0 8px; }
code { font: 12.5px ui-monospace, "SF Mono", Menlo, Consolas, monospace; background: var(--head);
       padding: 1px 4px; border-radius: 3px; overflow-wrap: anywhere; }
nav.toc { background: var(--head); border: 1px solid var(--line); border-radius: 6px; padding: 10px 18px;
          display: inline-block; min-width: 320px; }
nav.toc ol { margin: 4px 0; padding-left: 20px; }
nav.toc a { color: var(--accent); text-decoration: none; }
.scroll { overflow-x: auto; margin: 8px 0 14px; max-width: 100%; }
table { border-collapse: collapse; font-size: 13px; }
p.cap { color: var(--muted); font-size: 12.5px; margin: 12px 0 -4px; }
th, td { border: 1px solid var(--line); padding: 4px 9px; text-align: left; vertical-align: top; }
thead th { background: var(--head); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfd; }
table.kv th { background: var(--head); font-weight: 600; white-space: nowrap; }
p.note { color: var(--muted); border-left: 3px solid var(--line); padding: 2px 0 2px 10px; margin: 8px 0; }
p.warn { background: #fff6e0; border: 1px solid #f0d48a; border-radius: 4px; padding: 8px 12px; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px; font-weight: 600; }
.badge.pass { background: #e1f4e6; color: #17692f; }
.badge.fail { background: #fde2e1; color: #a1201a; }
.badge.neutral { background: var(--head); color: var(--muted); }
img { max-width: 100%; height: auto; display: block; border: 1px solid var(--line); }
figure { margin: 10px 0 18px; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 4px; }
/* one pair a row, at its own size: at half size the class labels on the masks become unreadable */
.gallery figure { margin: 6px 0 16px; }
"""


def _toc(sections: Sequence[Section]) -> Markup:
    items = "".join(f'<li><a href="#{esc(s.anchor)}">{esc(s.title)}</a></li>' for s in sections)
    return Markup(f'<nav class="toc"><strong>Contents</strong><ol>{items}</ol></nav>')


def render_page(*, title: str, facts: Sequence[tuple[str, object]], sections: Sequence[Section]) -> str:
    """The whole document: ``facts`` (run directory, time, ...) under the title, then the contents."""
    header = Markup(f"<header>{tag('h1', title)}{key_values(facts)}</header>")
    body = "\n".join(s.render() for s in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
            f"{header}\n{_toc(sections)}\n{body}\n</main>\n</body>\n</html>\n")
