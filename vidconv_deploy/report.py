"""Reports a person reads: one document built once, written as Markdown and as standalone HTML.

Sections hold paragraphs, tables and images (PNG plots beside the report); both renderings come
from the same content, so the two never disagree.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vidconv_deploy.atomic import write_text


@dataclasses.dataclass
class _Table:
    headers: list[str]
    rows: list[list[str]]


@dataclasses.dataclass
class _Image:
    file: str
    caption: str


def cell(value: Any) -> str:
    """A table cell: floats with 4 significant digits, everything else as text."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class Report:
    """A titled document of sections; :meth:`write` renders ``NAME.md`` and ``NAME.html``."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.sections: list[tuple[str, list[str | _Table | _Image]]] = []

    def section(self, title: str) -> Report:
        self.sections.append((title, []))
        return self

    def text(self, paragraph: str) -> Report:
        self.sections[-1][1].append(paragraph)
        return self

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> Report:
        self.sections[-1][1].append(_Table(list(headers), [[cell(v) for v in row] for row in rows]))
        return self

    def what_ran(self, steps: Sequence[dict[str, Any]], verdict: dict[str, Any], weights: str) -> Report:
        """The two sections every export report opens with: the verdict (what holds, why) and each step."""
        self.section(f"Verdict: {'holds' if verdict['holds'] else 'FAILED'} (exit {verdict['exit_code']})").table(
            ["verdict", "holds", "why"],
            [[name, "yes" if c["holds"] else ("no, accepted" if c.get("accepted") else "NO"), c["detail"]]
             for name, c in verdict["checks"].items()])
        self.section("What ran").table(
            ["step", "status", "seconds / reason"],
            [[s["name"], s["status"], s.get("seconds", s.get("reason", ""))] for s in steps])
        return self.text(f"Weights: {weights}.")

    def accuracy_table(self, rows: Sequence[dict[str, Any]]) -> Report:
        """The accuracy table every report shares (rows as ``evaluate.metrics.summary`` gives them)."""
        return self.table(["model", "videos", "top-1 %", "top-5 %", "top-1 agreement with float %"],
                          [[r["model"], r["videos"], r["top1"], r["top5"], r["agreement_with_float"]] for r in rows])

    def image(self, file: str, caption: str) -> Report:
        self.sections[-1][1].append(_Image(file, caption))
        return self

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for title, items in self.sections:
            out += [f"## {title}", ""]
            for item in items:
                if isinstance(item, _Table):
                    out.append("| " + " | ".join(item.headers) + " |")
                    out.append("|" + "---|" * len(item.headers))
                    out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in item.rows]
                elif isinstance(item, _Image):
                    out.append(f"![{item.caption}]({item.file})")
                else:
                    out.append(item)
                out.append("")
        return "\n".join(out)

    def html(self) -> str:
        esc = html.escape
        body = [f"<h1>{esc(self.title)}</h1>"]
        for title, items in self.sections:
            body.append(f"<h2>{esc(title)}</h2>")
            for item in items:
                if isinstance(item, _Table):
                    head = "".join(f"<th>{esc(h)}</th>" for h in item.headers)
                    rows = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in item.rows)
                    body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
                elif isinstance(item, _Image):
                    body.append(f'<figure><img src="{esc(item.file)}" alt="{esc(item.caption)}">'
                                f"<figcaption>{esc(item.caption)}</figcaption></figure>")
                else:
                    body.append(f"<p>{esc(item)}</p>")
        style = ("body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
                 "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}img{max-width:100%}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(self.title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")

    def write(self, directory: Path, name: str = "report") -> tuple[Path, Path]:
        """Write ``name.md`` and ``name.html`` into ``directory`` atomically."""
        md, page = directory / f"{name}.md", directory / f"{name}.html"
        write_text(md, self.markdown())
        write_text(page, self.html())
        return md, page
