"""A report as a list of blocks, rendered to Markdown (images linked) and to one HTML file
(images embedded as base64), so both show the same content."""

from __future__ import annotations

import base64
import dataclasses
import html
import os


@dataclasses.dataclass
class Heading:
    text: str
    level: int = 2


@dataclasses.dataclass
class Para:
    text: str  # plain text; `code` spans in backticks


@dataclasses.dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclasses.dataclass
class Image:
    path: str  # absolute path of the PNG
    alt: str


Block = Heading | Para | Table | Image


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>") or " "


def markdown(blocks: list[Block], base: str) -> str:
    """Markdown with images linked relative to `base` (the report's folder)."""
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Table):
            out += ["| " + " | ".join(map(_md_cell, b.header)) + " |",
                    "|" + "---|" * len(b.header)]
            out += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in b.rows]
            out.append("")
        else:
            out += [f"![{b.alt}]({os.path.relpath(b.path, base)})", ""]
    return "\n".join(out)


def _inline(text: str) -> str:
    """HTML of a paragraph: escaped, `code` spans, line breaks."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p
                   for i, p in enumerate(parts)).replace("\n", "<br>")


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
         "line-height:1.45}table{border-collapse:collapse;margin:.5em 0 1.5em}"
         "td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top;font-size:.9em}"
         "th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:0 .2em}")


def to_html(blocks: list[Block], title: str) -> str:
    """One self-contained HTML page: every image inline as a data: URI."""
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
           f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Table):
            out.append("<table><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in b.header)
                       + "</tr>")
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                    for r in b.rows]
            out.append("</table>")
        else:
            with open(b.path, "rb") as f:
                data = base64.b64encode(f.read()).decode()
            out.append(f"<p><img alt='{html.escape(b.alt)}' src='data:image/png;base64,{data}'>"
                       "</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
