"""The run's QC page: every slide of a tile store with its picture, tile counts and error, sortable.

``STORE/qc/index.html`` is one self-contained page (plain HTML and a few
lines of JavaScript, no network) next to the QC pictures it shows, so it can
be opened from the file system or copied with the ``qc`` folder. Clicking a
column header sorts by it; a slide's picture opens full size on a click.
Written at the end of each tiling run and by ``python -m flows.inspect qc``.

At 6,093 slides the page must not cost a walk of the store at the end of
every run: its rows come from the consolidated records
(:func:`storage.manifest.read_records`), the slide index (tiles rejected) and
one listing of ``qc/`` (which pictures exist). Only slides the indexes lack
or hold an older entry for are read from their own files, and written back
to the index, so the next run reads none of them again.
"""

from __future__ import annotations

import html
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from storage.atomic import atomic_path
from storage.manifest import FAILED, SlideRecord, read_records
from storage.tile_store import TileStore, rejected_count

logger = logging.getLogger(__name__)

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


def _rejected_counts(store: TileStore) -> dict[str, int]:
    """Tiles rejected by the tile QC, per complete slide, from the slide index.

    Entries indexed before ``n_rejected`` was (an older store) get it from
    their slide's group, once: the entries are written back with it.
    """
    entries = store.slide_entries()
    older = [slide_id for slide_id, entry in entries.items() if "n_rejected" not in entry]
    if older:
        logger.info(
            "%s: reading %d slide groups for their rejected tiles (indexed before the count was)",
            store.root,
            len(older),
        )
        updated = {
            slide_id: {**entries[slide_id], "n_rejected": _rejected_in_group(store, slide_id)} for slide_id in older
        }
        try:
            store.index.add_many(updated)
        except OSError as error:  # a reader without write permission still gets its page
            logger.info("%s: could not update the index (%s)", store.root, error)
        entries.update(updated)
    return {slide_id: entry["n_rejected"] for slide_id, entry in entries.items()}


def _rejected_in_group(store: TileStore, slide_id: str) -> int:
    path = store.slide_path(slide_id) / "zarr.json"
    return rejected_count(json.loads(path.read_bytes()).get("attributes", {})) if path.is_file() else 0


def _pictures(store: TileStore) -> set[str]:
    """Names of the QC pictures in ``qc/``: one listing, no ``stat`` per slide."""
    try:
        return {name for name in os.listdir(store.qc_dir) if name.endswith(".png")}
    except FileNotFoundError:
        return set()


def _slides(store: TileStore) -> tuple[list[SlideRecord], dict[str, int], set[str]]:
    """The store's records, tiles rejected per complete slide, and the names of the QC pictures."""
    return read_records(store), _rejected_counts(store), _pictures(store)


def _row(record: SlideRecord, rejected: dict[str, int], pictures: set[str]) -> dict:
    """One slide's row; its picture's name is built as ``store.qc_path``'s, without a ``Path`` per slide."""
    picture = f"{record.slide_id}.png"
    return {
        "slide_id": record.slide_id,
        "status": record.status,
        "n_tiles": record.n_tiles,
        "n_rejected": rejected.get(record.slide_id, 0),
        "error": record.error,
        "message": record.message,
        "seconds": record.seconds,
        "picture": picture if picture in pictures else None,
    }


def _cell(text: object, css: str = "", sort: object = None) -> str:
    attributes = (f' class="{css}"' if css else "") + (
        f' data-sort="{html.escape(str(sort))}"' if sort is not None else ""
    )
    return f"<td{attributes}>{html.escape(str(text))}</td>"


def _row_html(row: dict) -> str:
    picture = (
        f'<td><a href="{html.escape(row["picture"])}"><img src="{html.escape(row["picture"])}" '
        f'alt="QC picture of {html.escape(row["slide_id"])}" loading="lazy"></a></td>'
        if row["picture"]
        else "<td>no picture</td>"
    )
    note = row["error"] or row["message"]
    seconds = f"{row['seconds']:.1f}"
    return (
        f'<tr class="{html.escape(row["status"])}">{picture}{_cell(row["slide_id"])}{_cell(row["status"])}'
        f"{_cell(row['n_tiles'], 'num')}{_cell(row['n_rejected'], 'num')}"
        f"{_cell(note, 'error' if row['error'] else '')}{_cell(seconds, 'num')}</tr>"
    )


def _page(store: TileStore) -> Iterator[str]:
    """The page's HTML, piece by piece, written as it is made.

    At 6,093 slides a whole page held at once (its rows, their HTML, the
    joined text, its bytes) added several MiB to the driver's peak at the
    end of the run.
    """
    records, rejected, pictures = _slides(store)
    failed = sum(record.status == FAILED for record in records)
    header = "".join(f"<th>{html.escape(name)}</th>" for name in COLUMNS)
    title = f"QC of {store.root.name}"
    yield (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head><body>'
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{len(records)} slides, {sum(record.n_tiles for record in records)} tiles kept, "
        f"{sum(rejected.get(record.slide_id, 0) for record in records)} rejected by the tile QC, "
        f"{failed} slides failed. "
        "Green outlines the tissue found, yellow squares are the tiles kept, red the ones rejected. "
        "Click a column header to sort, a picture to open it full size.</p>"
        f"<table><thead><tr>{header}</tr></thead><tbody>"
    )
    for record in records:
        yield _row_html(_row(record, rejected, pictures))
    yield f"</tbody></table><script>{_SCRIPT}</script></body></html>\n"


def render_qc_index(store: TileStore) -> str:
    """The page's HTML for the store's slides as its manifest records them."""
    return "".join(_page(store))


def write_qc_index(store: TileStore) -> Path:
    """Write ``qc/index.html`` for the store's current manifest, atomically; return its path."""
    path = store.qc_dir / "index.html"
    with atomic_path(path) as temporary, temporary.open("w", encoding="utf-8") as page:
        page.writelines(_page(store))
    return path
