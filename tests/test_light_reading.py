"""Reading every kind of store in a fresh environment holding only the reading dependencies.

The environment gets numpy, zarr, imagecodecs, xarray and pandas from the
package index and this project with ``--no-deps``: no dask, Prefect, torch,
OpenSlide, psutil. A plain ``zarr`` reader decodes tiles through the ``jpeg``
entry point, and the read API opens tile, embedding and aligned stores; the
values must equal what the full environment reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from prefect.task_runners import ThreadPoolTaskRunner

from tests.flow_helpers import write_two_condition_store

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
READING = ["numpy", "zarr>=3.1,<4", "imagecodecs", "xarray", "pandas"]
HEAVY = ["dask", "prefect", "torch", "openslide", "cv2", "psutil", "itk", "pyvips", "distributed"]

READER = """
import importlib.util, json, sys
import numpy as np, zarr
tiles_root, aligned_root, emb_root, aligned_emb_root = sys.argv[1:5]
heavy = [name for name in {heavy!r} if importlib.util.find_spec(name) is not None]
group = zarr.open_group(tiles_root, mode="r")
plain = group["slides/CMU-1-Small-Region/tiles"][3]
from storage import open_tiles, open_embeddings, open_aligned_tiles, TileReader, read_manifest
from storage.inspection import info
ds = open_tiles(tiles_root)
reader = TileReader(tiles_root)
emb = open_embeddings(emb_root)
aligned = open_aligned_tiles(aligned_root)
aligned_emb = open_embeddings(aligned_emb_root)
one = ds.sel(slide_id="OS-1-detail")
print(json.dumps({{
    "heavy_installed": heavy,
    "heavy_loaded": [name for name in {heavy!r} if name in sys.modules],
    "plain_mean": float(plain.mean()),
    "tiles_sum": int(ds.tiles.values.astype(np.int64).sum()),
    "reader_slice_sum": int(reader[2:7].astype(np.int64).sum()),
    "os_tiles": int(one.sizes["tile"]),
    "embeddings_sum": float(emb.embeddings.values.astype(np.float64).sum()),
    "embedding_slides": sorted(set(emb.slide_id.values.tolist())),
    "aligned_sum": int(aligned.tiles.values.astype(np.int64).sum()),
    "aligned_embeddings_sum": float(aligned_emb.embeddings.values.astype(np.float64).sum()),
    "manifest_rows": len(read_manifest(tiles_root)),
    "kinds": [info(path)["kind"] for path in sys.argv[1:5]],
}}))
"""


@pytest.fixture(scope="module")
def stores(tmp_path_factory, shipped_tile_store, prefect_api):
    """The shipped tile store, an aligned store of two conditions, and the embeddings of both."""
    from flows.embedding_flow import embed_tiles
    from pipeline.embed import EmbeddingSettings

    folder = tmp_path_factory.mktemp("light")
    tiles = zarr.open_array(shipped_tile_store / "slides" / "CMU-1-Small-Region" / "tiles", mode="r")[:16]
    aligned = write_two_condition_store(folder / "aligned.zarr", tiles, np.zeros((2, 16, 2)))
    runner = ThreadPoolTaskRunner(max_workers=1)
    settings = EmbeddingSettings(model="tiny-student", batch_size=16, loader_workers=0)
    for source, out in ((shipped_tile_store, folder / "emb.zarr"), (aligned, folder / "aligned-emb.zarr")):
        embed_tiles.with_options(task_runner=runner)(tiles=str(source), out=str(out), settings=settings)
    return shipped_tile_store, aligned, folder / "emb.zarr", folder / "aligned-emb.zarr"


@pytest.fixture(scope="module")
def light_python(tmp_path_factory) -> Path:
    """A virtual environment with the reading dependencies and this project installed without its others."""
    venv = tmp_path_factory.mktemp("venv") / "read"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([*pip, *READING], check=True, timeout=600, env=environment)
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True, timeout=600, env=environment, cwd=venv)
    return venv / "bin" / "python"


def test_a_fresh_environment_with_only_the_reading_dependencies_reads_every_store(stores, light_python, tmp_path):
    from storage import TileReader, open_aligned_tiles, open_embeddings, open_tiles

    tiles_root, aligned_root, emb_root, aligned_emb_root = stores
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(light_python), "-c", READER.format(heavy=HEAVY), *map(str, stores)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["heavy_installed"] == [] and seen["heavy_loaded"] == []
    tiles = open_tiles(tiles_root)
    expected = zarr.open_array(tiles_root / "slides" / "CMU-1-Small-Region" / "tiles", mode="r")[3]
    assert seen["plain_mean"] == pytest.approx(float(expected.mean()))
    assert seen["tiles_sum"] == int(tiles.tiles.values.astype(np.int64).sum())
    assert seen["reader_slice_sum"] == int(TileReader(tiles_root)[2:7].astype(np.int64).sum())
    assert seen["os_tiles"] == int((tiles.slide_id == "OS-1-detail").sum()) > 0
    embeddings = open_embeddings(emb_root)
    assert seen["embeddings_sum"] == pytest.approx(float(embeddings.embeddings.values.astype(np.float64).sum()))
    assert seen["embedding_slides"] == ["CMU-1-Small-Region", "OS-1-detail"]
    assert seen["aligned_sum"] == int(open_aligned_tiles(aligned_root).tiles.values.astype(np.int64).sum())
    assert seen["aligned_embeddings_sum"] == pytest.approx(
        float(open_embeddings(aligned_emb_root).embeddings.values.astype(np.float64).sum())
    )
    assert seen["manifest_rows"] == 2
    assert seen["kinds"] == ["tile store", "aligned tile store", "embedding store", "embedding store"]
