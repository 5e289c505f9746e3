"""Look inside any store of this project: what it is, what it holds, what failed, and where tiles came from.

:func:`info` summarises a tile, embedding or aligned tile store as a plain
dict (kind, parameters, slides or conditions, tiles, failures with their
reasons, size on disk); :func:`preview` pastes a slide's tiles back at their
level-0 coordinates over its tissue mask, as a PNG a person can read. Both
need only numpy, zarr and imagecodecs, so they run wherever a store is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import imagecodecs
import numpy as np
import zarr

from storage.aligned_store import LAYOUT_NAME as ALIGNED_LAYOUT
from storage.aligned_store import AlignedTileStore
from storage.embedding_store import LAYOUT_NAME as EMBEDDING_LAYOUT
from storage.embedding_store import EmbeddingStore
from storage.manifest import FAILED, read_records
from storage.tile_store import LAYOUT_NAME as TILE_LAYOUT
from storage.tile_store import StoreError, TileStore

KINDS = {TILE_LAYOUT: "tile store", EMBEDDING_LAYOUT: "embedding store", ALIGNED_LAYOUT: "aligned tile store"}
PREVIEW_LONG_EDGE_PX = 2048
_GLASS, _TISSUE = 255, 225  # background grey levels of the preview


def _root_attributes(path: Path) -> dict:
    try:
        attributes = dict(zarr.open_group(path, mode="r").attrs)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as error:
        raise StoreError(f"{path} is not a zarr group, so not a distillpath store") from error
    if attributes.get("layout") not in KINDS:
        raise StoreError(f"{path} is a zarr group but not a distillpath store (layout {attributes.get('layout')!r})")
    return attributes


def size_on_disk(path: Path) -> int:
    """Bytes of every file under ``path`` (what copying the store moves)."""
    return sum(entry.stat().st_size for entry in Path(path).rglob("*") if entry.is_file() and not entry.is_symlink())


def info(path: Path | str) -> dict:
    """What the store at ``path`` is and holds.

    Keys: ``path``, ``kind``, ``layout_version``, ``created_at``,
    ``software_version``, ``parameters``, ``size_bytes``, ``failed`` (a list
    of ``{"id", "error_type", "error"}``), and by kind: ``slides`` (``{id:
    tiles}``) and ``tiles`` for tile and embedding stores, ``conditions``
    (``{name: status}``), ``tiles`` and ``excluded`` for aligned stores.

    Raises
    ------
    StoreError
        When ``path`` is not a store of this project.
    """
    root = Path(path).resolve()
    attributes = _root_attributes(root)
    layout = attributes["layout"]
    store_class = {TILE_LAYOUT: TileStore, EMBEDDING_LAYOUT: EmbeddingStore, ALIGNED_LAYOUT: AlignedTileStore}[layout]
    store = store_class(root)
    summary = {
        "path": str(root),
        "kind": KINDS[layout],
        "layout_version": attributes.get("layout_version"),
        "created_at": attributes.get("created_at"),
        "software_version": attributes.get("software_version"),
        "parameters": attributes.get(store_class.PARAMETERS_KEY, {}),
        "size_bytes": size_on_disk(root),
    }
    records = read_records(store)
    summary["failed"] = [
        {"id": r.slide_id, "error_type": r.error_type, "error": r.error} for r in records if r.status == FAILED
    ]
    if layout == ALIGNED_LAYOUT:
        plan = store.read_plan()
        statuses = {r.slide_id: r.status for r in records}
        summary["conditions"] = statuses
        summary["tiles"] = int(zarr.open_array(root / "grid", mode="r").shape[0]) if plan else 0
        summary["excluded"] = plan["excluded"] if plan else {}
        return summary
    entries = store.slide_entries()
    summary["slides"] = {slide_id: int(entry["n_tiles"]) for slide_id, entry in entries.items()}
    summary["tiles"] = sum(summary["slides"].values())
    return summary


def format_info(summary: dict) -> str:
    """:func:`info` as lines for a terminal."""
    lines = [
        f"{summary['path']}: {summary['kind']} (layout {summary['layout_version']}, "
        f"made {summary['created_at']} by distillpath {summary['software_version']})",
        f"size on disk: {summary['size_bytes'] / 1e6:.1f} MB",
    ]
    if "conditions" in summary:
        lines.append(f"conditions: {len(summary['conditions'])}, tiles per condition: {summary['tiles']}")
        lines += [f"  {name}: {status}" for name, status in summary["conditions"].items()]
        if summary["excluded"]:
            lines.append(f"excluded: {summary['excluded']}")
    else:
        lines.append(f"slides: {len(summary['slides'])}, tiles: {summary['tiles']}")
        lines += [f"  {slide_id}: {n} tiles" for slide_id, n in summary["slides"].items()]
    lines.append(f"failed: {len(summary['failed'])}")
    lines += [f"  {f['id']}: {f['error_type']}: {f['error']}" for f in summary["failed"]]
    lines.append("parameters: " + json.dumps(summary["parameters"], sort_keys=True))
    return "\n".join(lines)


def _shrink(tile: np.ndarray, size: int) -> np.ndarray:
    """``tile`` ``[H, W, 3]`` at ``size`` × ``size``: block means by the whole factor, then nearest pixels."""
    factor = max(1, tile.shape[0] // size)
    if factor > 1:
        h = tile.shape[0] // factor * factor
        tile = tile[:h, :h].reshape(h // factor, factor, h // factor, factor, 3).mean(axis=(1, 3))
    pick = (np.arange(size) * tile.shape[0] / size).astype(int)
    return tile[pick][:, pick].astype(np.uint8)


def _slide_layout(root: Path, slide_id: str) -> tuple[np.ndarray, zarr.Array, np.ndarray, float, float, tuple]:
    """Coordinates, tiles array, tissue mask, mask µm/px, tile edge in level-0 px, level-0 size of a slide."""
    store = TileStore(root)
    if not store.is_complete(slide_id):
        known = ", ".join(store.complete_slide_ids()[:10])
        raise KeyError(f"{root} has no complete slide {slide_id!r}; some it has: {known}")
    group = zarr.open_group(store.slide_path(slide_id), mode="r")
    attributes = dict(group.attrs)
    mask = group["tissue_mask"]
    mpp0 = float(attributes["mpp_level0_um"])
    width, height = attributes["level_dimensions"][0]
    return (
        group["coords"][:],
        group["tiles"],
        mask[:],
        float(mask.attrs["mpp_um"]) / mpp0,
        float(attributes["resolution"]["tile_size_level0"]),
        (int(width), int(height)),
    )


def preview(path: Path | str, slide_id: str, out: Path | str, long_edge_px: int = PREVIEW_LONG_EDGE_PX) -> Path:
    """Write a PNG of slide ``slide_id``'s tiles pasted at their coordinates; return its path.

    The canvas is the whole slide at ``long_edge_px`` on its long side (never
    above level 0): white is glass, light grey the tissue mask, and every tile
    of the store sits where it was cut, so gaps show what the tiler left out.
    """
    root = Path(path).resolve()
    if _root_attributes(root)["layout"] != TILE_LAYOUT:
        raise StoreError(f"{root}: preview places tiles of a tile store; this is a {info(root)['kind']}")
    coords, tiles, mask, mask_px_level0, tile_level0, (width, height) = _slide_layout(root, slide_id)
    scale = min(1.0, long_edge_px / max(width, height))  # canvas px per level-0 px
    canvas_w, canvas_h = max(1, round(width * scale)), max(1, round(height * scale))
    rows = np.minimum((np.arange(canvas_h) / scale / mask_px_level0).astype(int), mask.shape[0] - 1)
    cols = np.minimum((np.arange(canvas_w) / scale / mask_px_level0).astype(int), mask.shape[1] - 1)
    canvas = np.where(mask[rows][:, cols, None] > 0, _TISSUE, _GLASS).astype(np.uint8).repeat(3, axis=2)
    size = max(1, round(tile_level0 * scale))
    for start in range(0, len(coords), 256):  # a few hundred decoded tiles in memory at a time
        for (x, y), tile in zip(coords[start : start + 256], tiles[start : start + 256]):
            left, top = round(x * scale), round(y * scale)
            if left >= canvas_w or top >= canvas_h:
                continue
            piece = _shrink(tile, size)[: canvas_h - top, : canvas_w - left]
            canvas[top : top + piece.shape[0], left : left + piece.shape[1]] = piece
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}")
    temporary.write_bytes(imagecodecs.png_encode(canvas))
    os.replace(temporary, out)
    return out
