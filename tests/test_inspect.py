"""The store inspector (info, preview) and the run's QC page, checked against the store's own arrays."""

from __future__ import annotations

import json
import shutil

import imagecodecs
import numpy as np
import pytest
import zarr

from flows.inspect import main
from storage.manifest import FAILED, SlideRecord, write_record
from storage.tile_store import TileStore
from tests.browser import chromium, screenshot_and_measure
from tiling.qc_index import write_qc_index


@pytest.fixture(scope="module")
def store(tmp_path_factory, shipped_tile_store) -> TileStore:
    """The shipped tile store, copied, with one slide recorded as failed."""
    root = tmp_path_factory.mktemp("inspect") / "tiles.zarr"
    shutil.copytree(shipped_tile_store, root)
    store = TileStore(root)
    write_record(
        store,
        SlideRecord(
            "broken", "/data/broken.svs", FAILED, error="not a slide: truncated header", error_type="SlideOpenError"
        ),
    )
    return store


def test_info_names_the_kind_slides_tiles_failures_and_size(store, capsys):
    assert main(["info", str(store.root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    expected = {
        s: zarr.open_array(store.slide_path(s) / "tiles", mode="r").shape[0] for s in store.complete_slide_ids()
    }
    assert summary["kind"] == "tile store" and summary["slides"] == expected
    assert summary["tiles"] == sum(expected.values()) == 53
    assert summary["failed"] == [
        {"id": "broken", "error_type": "SlideOpenError", "error": "not a slide: truncated header"}
    ]
    assert summary["parameters"]["tile_size_px"] == 224
    assert summary["size_bytes"] == sum(p.stat().st_size for p in store.root.rglob("*") if p.is_file())
    assert main(["info", str(store.root)]) == 0
    assert "broken: SlideOpenError: not a slide" in capsys.readouterr().out


def test_preview_pastes_each_tile_at_its_coordinates(store, tmp_path):
    out = tmp_path / "cmu.png"
    assert main(["preview", str(store.root), "CMU-1-Small-Region", "--out", str(out), "--long-edge", "1483"]) == 0
    canvas = imagecodecs.png_decode(out.read_bytes())
    assert canvas.shape == (1483, 1110, 3)  # the 2220 × 2967 slide at half size
    group = zarr.open_group(store.slide_path("CMU-1-Small-Region"), mode="r")
    scale = 1483 / 2967
    for (x, y), tile in zip(group["coords"][:5], group["tiles"][:5]):
        left, top = round(x * scale), round(y * scale)
        pasted = canvas[top + 10 : top + 100, left + 10 : left + 100].astype(float)  # inside the 112-px square
        reference = tile[20:200, 20:200].reshape(90, 2, 90, 2, 3).mean(axis=(1, 3))  # an independent 2× area mean
        assert np.abs(pasted - reference).mean() < 6


def test_inspect_refuses_what_it_cannot_use_in_one_line(store, tmp_path, capsys):
    assert main(["preview", str(store.root), "nope", "--out", str(tmp_path / "x.png")]) == 2
    assert "no complete slide 'nope'" in capsys.readouterr().err
    assert main(["info", str(tmp_path)]) == 2
    assert "not a zarr group" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_the_qc_page_lists_every_slide_with_its_picture_and_sorts(store, tmp_path):
    page = write_qc_index(store)
    text = page.read_text()
    for slide_id in ("CMU-1-Small-Region", "OS-1-detail", "broken"):
        assert f">{slide_id}</td>" in text
    assert "not a slide: truncated header" in text and 'src="CMU-1-Small-Region.png"' in text
    browser = chromium()
    if browser is None:
        pytest.skip("no chromium to render the page")
    shot = tmp_path / "qc.png"
    measured = screenshot_and_measure(browser, page, shot, sort_column=3)
    assert measured["images_loaded"] == measured["images"] == 2
    assert measured["scroll_width"] <= 1280
    assert measured["first_after_sort"] == "broken"  # sorted by tiles kept: 0, 3, 50
    assert imagecodecs.png_decode(shot.read_bytes()).shape[1] == 1280
