"""HTML building blocks for the run report: escaping, number cells, tables, notes, embedded PNGs.

The page must open from a mail attachment or an artifact store without a network or a second
file, so pictures travel as ``data:image/png;base64`` URIs and the style sheet is inline. Every
piece of text that came from a run file passes through :func:`esc`; only :class:`Markup`, which
this module and the section builders produce, is trusted as HTML.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DASH = "\u2014"  # what an absent or null number reads as


class Markup(str):
    """A string that already is HTML; :func:`esc` passes it through unchanged.

    Concatenation keeps it Markup and escapes the plain side, so ``tag(...) + user_text`` is safe.
    """

    def __add__(self, other: str) -> Markup:
        return Markup(str.__add__(self, esc(other)))

    def __radd__(self, other: str) -> Markup:
        return Markup(str.__add__(esc(other), self))


def esc(value: object) -> Markup:
    """``value`` as HTML text: Markup as is, anything else ``str()``-ed and escaped (quotes too)."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(str(value), quote=True))


def join(parts: Iterable[object]) -> Markup:
    return Markup("\n".join(esc(p) for p in parts))


def number(value: object) -> float | None:
    """A finite float, or None for null, text, booleans and NaN/inf (run files may hold any of them)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def fmt(value: object, digits: int = 1, *, scale: float = 1.0, suffix: str = "") -> str:
    """``value * scale`` with ``digits`` decimals and ``suffix``; a dash where there is no number."""
    x = number(value)
    if x is None:
        return DASH
    return f"{x * scale:,.{digits}f}{suffix}"


def tag(name: str, body: object = "", **attrs: object) -> Markup:
    """``<name attr="...">body</name>``; attribute values are escaped, ``class_`` spells ``class``."""
    rendered = "".join(f' {k.rstrip("_")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    return Markup(f"<{name}{rendered}>{esc(body)}</{name}>")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, align: str = "",
          caption: str | None = None) -> Markup:
    """A table in a horizontally scrolling box; ``align`` has one letter per column (``l`` or ``r``,
    default ``l``), so numbers line up on their right edge whatever their width."""
    classes = [("num" if align[i:i + 1] == "r" else None) for i in range(len(headers))]
    head = "".join(tag("th", h, class_=c) for h, c in zip(headers, classes))
    body = "".join(
        "<tr>" + "".join(tag("td", cell, class_=c) for cell, c in zip(row, classes)) + "</tr>" for row in rows
    )
    # the caption sits above the table, not in it: in a <caption> it would wrap to a narrow table's width
    cap = tag("p", caption, class_="cap") if caption else ""
    return Markup(f'{cap}<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                  f"<tbody>{body}</tbody></table></div>")


def key_values(pairs: Iterable[tuple[str, object]]) -> Markup:
    """A two-column table of labels and values (no header row)."""
    rows = "".join(f"<tr>{tag('th', k)}{tag('td', v)}</tr>" for k, v in pairs)
    return Markup(f'<div class="scroll"><table class="kv"><tbody>{rows}</tbody></table></div>')


def para(text: object, *, class_: str | None = None) -> Markup:
    return tag("p", text, class_=class_)


def note(text: object) -> Markup:
    """A muted remark: what is missing, how to read a table."""
    return para(text, class_="note")


def missing(file: str, command: str) -> Markup:
    """The one wording for an absent piece, saying which command would have written it."""
    return note(Markup(f"not available: {tag('code', file)} missing (run {tag('code', 'sskd-deploy ' + command)})"))


def badge(ok: bool | None, *, text: str | None = None) -> Markup:
    """pass / FAIL / a neutral word (``text``) for a row that is not judged, e.g. the reference."""
    if ok is None:
        return tag("span", text or DASH, class_="badge neutral")
    return tag("span", text or ("pass" if ok else "FAIL"), class_="badge " + ("pass" if ok else "fail"))


def is_png(data: bytes) -> bool:
    return data[:8] == PNG_MAGIC


def png_img(data: bytes, *, alt: str) -> Markup:
    """An ``<img>`` carrying the PNG itself, so the page needs no other file."""
    if not is_png(data):
        raise ValueError(f"{alt}: not PNG data")
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return Markup(f'<img src="{uri}" alt="{esc(alt)}" loading="lazy">')


def figure(data: bytes, *, caption: object, alt: str | None = None) -> Markup:
    return Markup(f"<figure>{png_img(data, alt=alt or str(caption))}{tag('figcaption', caption)}</figure>")


@dataclass(frozen=True)
class Section:
    """One part of the page: ``anchor`` links it from the table of contents."""

    anchor: str
    title: str
    body: Markup

    def render(self) -> Markup:
        return Markup(f'<section id="{esc(self.anchor)}">{tag("h2", self.title)}\n{self.body}\n</section>')


def section(anchor: str, title: str, parts: Iterable[object]) -> Section:
    return Section(anchor, title, join(parts))
