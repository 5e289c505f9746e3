"""The run's QC page: every slide of a tile store with its picture, tile counts and error, sortable.

``STORE/qc/index.html`` is one self-contained page (plain HTML and a few
lines of JavaScript, no network) next to the QC pictures it shows, so it can
be opened from the file system or copied with the ``qc`` folder. Clicking a
column header sorts by it; a slide's picture opens full size on a click.
Written at the end of each tiling run and by ``python -m flows.inspect qc``.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from storage.atomic import write_bytes_atomic
from storage.manifest import read_record
from storage.tile_store import TileStore

_STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 16px; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 6px 8px; text-align: left; vertical-align: top; }
th { cursor: pointer; background: #f3f3f3; position: sticky; top: 0; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.error { color: #a00; max-width: 420px; overflow-wrap: anywhere; }
tr.failed { background: #fff4f4; }
img { width: 240px; height: auto; border: 1px solid #ccc; }
"""

_SCRIPT = """
document.querySelectorAll("th").forEach((th, column) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  document.querySelectorAll("th").forEach(other => other.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const key = row => row.cells[column].dataset.sort ?? row.cells[column].textContent;
  const rows = Array.from(body.rows).sort((a, b) => {
    const [x, y] = [key(a), key(b)];
    const order = (x !== "" && y !== "" && !isNaN(x) && !isNaN(y)) ? x - y : x.localeCompare(y);
    return ascending ? order : -order;
  });
  rows.forEach(row => body.appendChild(row));
}));
"""

COLUMNS = ("picture", "slide", "status", "tiles kept", "tiles rejected", "error or note", "seconds")


def _slide_attributes(store: TileStore, slide_id: str) -> dict:
    path = store.slide_path(slide_id) / "zarr.json"
    return json.loads(path.read_bytes()).get("attributes", {}) if path.is_file() else {}


def _rows(store: TileStore) -> list[dict]:
    rows = []
    folders = sorted(store.status_dir.iterdir()) if store.status_dir.is_dir() else []
    for folder in folders:
        record = read_record(store, folder.name)
        if record is None:
            continue
        rejected = _slide_attributes(store, record.slide_id).get("n_rejected", {})
        rows.append(
            {
                "slide_id": record.slide_id,
                "status": record.status,
                "n_tiles": record.n_tiles,
                "n_rejected": sum(rejected.values()) if isinstance(rejected, dict) else int(rejected or 0),
                "error": record.error,
                "message": record.message,
                "seconds": record.seconds,
                "picture": store.qc_path(record.slide_id).name if store.qc_path(record.slide_id).is_file() else None,
            }
        )
    return rows


def _cell(text: object, css: str = "", sort: object = None) -> str:
    attributes = (f' class="{css}"' if css else "") + (
        f' data-sort="{html.escape(str(sort))}"' if sort is not None else ""
    )
    return f"<td{attributes}>{html.escape(str(text))}</td>"


def render_qc_index(store: TileStore) -> str:
    """The page's HTML for the store's slides as its manifest records them."""
    rows = _rows(store)
    failed = sum(row["status"] == "failed" for row in rows)
    body = []
    for row in rows:
        picture = (
            f'<td><a href="{html.escape(row["picture"])}"><img src="{html.escape(row["picture"])}" '
            f'alt="QC picture of {html.escape(row["slide_id"])}" loading="lazy"></a></td>'
            if row["picture"]
            else "<td>no picture</td>"
        )
        note = row["error"] or row["message"]
        seconds = f"{row['seconds']:.1f}"
        body.append(
            f'<tr class="{html.escape(row["status"])}">{picture}{_cell(row["slide_id"])}{_cell(row["status"])}'
            f"{_cell(row['n_tiles'], 'num')}{_cell(row['n_rejected'], 'num')}"
            f"{_cell(note, 'error' if row['error'] else '')}{_cell(seconds, 'num')}</tr>"
        )
    header = "".join(f"<th>{html.escape(name)}</th>" for name in COLUMNS)
    title = f"QC of {store.root.name}"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head><body>'
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{len(rows)} slides, {sum(r['n_tiles'] for r in rows)} tiles kept, "
        f"{sum(r['n_rejected'] for r in rows)} rejected by the tile QC, {failed} slides failed. "
        "Green outlines the tissue found, yellow squares are the tiles kept, red the ones rejected. "
        "Click a column header to sort, a picture to open it full size.</p>"
        f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"<script>{_SCRIPT}</script></body></html>\n"
    )


def write_qc_index(store: TileStore) -> Path:
    """Write ``qc/index.html`` for the store's current manifest, atomically; return its path."""
    path = store.qc_dir / "index.html"
    write_bytes_atomic(path, render_qc_index(store).encode())
    return path
