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
        """A table; wide ones must be split or transposed by the caller to fit a 1,280-px window."""
        self.sections.append(frame.to_html(float_format=float_format.format, border=0, classes="results"))

    def pictures(self, paths: list[Path], root: Path, captions: dict[str, str] | None = None) -> None:
        """Figures at their natural size (saved at screen resolution, never scaled down), with captions."""
        captions = captions or {}
        figures = "".join(
            f'<figure><img src="{html.escape(str(p.relative_to(root)))}" alt="{html.escape(p.stem)}">'
            f"<figcaption>{html.escape(captions.get(p.stem, p.stem))}</figcaption></figure>"
            for p in paths
        )
        self.sections.append(f'<div class="pictures">{figures}</div>')

    def thumbnails(self, paths: list[Path], root: Path, width_px: int = 400) -> None:
        """Pictures shown small, each a link to itself at full size (QC pictures of earlier stages)."""
        links = "".join(
            f'<figure><a href="{html.escape(str(p.relative_to(root)))}"><img class="thumbnail" '
            f'src="{html.escape(str(p.relative_to(root)))}" width="{width_px}" alt="{html.escape(p.stem)}"></a>'
            f"<figcaption>{html.escape(p.stem)} (click for full size)</figcaption></figure>"
            for p in paths
        )
        self.sections.append(f'<div class="pictures">{links}</div>')

    def write(self, folder: Path) -> Path:
        style = (
            "body{font:16px/1.45 sans-serif;margin:16px;max-width:1240px}table.results{border-collapse:collapse}"
            "table.results td,table.results th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right;"
            "overflow-wrap:anywhere}table.results th{background:#f3f3f3}"
            ".pictures{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0;max-width:1240px}"
            "figcaption{font-size:14px;max-width:1150px}p{max-width:1150px}"
        )
        page = (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>"
            + "\n".join(self.sections)
            + "</body></html>"
        )
        path = folder / "index.html"
        path.write_text(page)
        return path
