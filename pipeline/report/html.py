"""One self-contained folder with an ``index.html``: tables, figures and the QC pictures of earlier stages."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class Report:
    """Sections added in order, written as ``index.html`` next to the pictures it links (relative paths)."""

    title: str
    sections: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.sections.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str) -> None:
        self.sections.append(f"<p>{html.escape(text)}</p>")

    def table(self, frame: pd.DataFrame, float_format: str = "{:.4f}") -> None:
        self.sections.append(frame.to_html(float_format=float_format.format, border=0, classes="results"))

    def pictures(self, paths: list[Path], root: Path, width_px: int = 640) -> None:
        figures = "".join(
            f'<figure><img src="{html.escape(str(p.relative_to(root)))}" width="{width_px}">'
            f"<figcaption>{html.escape(p.stem)}</figcaption></figure>" for p in paths
        )
        self.sections.append(f'<div class="pictures">{figures}</div>')

    def write(self, folder: Path) -> Path:
        style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table.results{border-collapse:collapse}"
                 "table.results td,table.results th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}"
                 ".pictures{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0}figcaption{font-size:80%}")
        page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>"
                + "\n".join(self.sections) + "</body></html>")
        path = folder / "index.html"
        path.write_text(page)
        return path
