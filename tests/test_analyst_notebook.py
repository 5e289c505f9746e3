"""The analyst notebook runs top to bottom on stores of the shipped slides, and its numbers are right."""

from __future__ import annotations

import base64
import json
import os

import imagecodecs
import numpy as np
import pytest
import zarr

from tests.flow_helpers import REPO

NOTEBOOK = REPO / "examples" / "analyst.ipynb"


@pytest.fixture(scope="module")
def embedding_store(tmp_path_factory, shipped_tile_store):
    """Embeddings of the shipped tile store by a tiny randomly initialised student, made without Prefect."""
    from pipeline.embed import EmbeddingSettings, embed_partition, prepared_store
    from storage.tile_units import open_tile_source

    out = tmp_path_factory.mktemp("analyst") / "embeddings.zarr"
    settings = EmbeddingSettings("tiny-student", dtype="float32", batch_size=16, loader_workers=0)
    with prepared_store(out, settings, open_tile_source(shipped_tile_store)):
        embed_partition(str(shipped_tile_store), str(out), settings)
    return out


def _cell(notebook, tag: str):
    (cell,) = [c for c in notebook.cells if tag in c.metadata.get("tags", [])]
    return cell


def _png(cell) -> np.ndarray:
    (image,) = [o.data["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
    return imagecodecs.png_decode(base64.b64decode(image))


@pytest.mark.slow  # starts a Jupyter kernel
def test_the_notebook_maps_the_largest_slides_embeddings_onto_it(shipped_tile_store, embedding_store):
    import nbformat  # here, not at collection
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), "ship it without outputs"
    # One cell of the test's own after the notebook's: the joined table, to check against plain zarr reads.
    notebook.cells.append(nbformat.v4.new_code_cell("print(slide, joined.to_json(orient='records'))"))
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DISTILLPATH_TILES": str(shipped_tile_store),
        "DISTILLPATH_EMBEDDINGS": str(embedding_store),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute(env=env)

    slides = zarr.open_group(shipped_tile_store / "slides", mode="r")
    counts = {name: group["coords"].shape[0] for name, group in slides.groups()}
    largest = max(counts, key=counts.get)
    assert largest == "CMU-1-Small-Region" and counts[largest] == 50
    join_text = "".join(o.get("text", "") for o in _cell(notebook, "join").outputs)
    assert f"joined {counts[largest]} of {counts[largest]} tiles" in join_text

    mosaic, heatmap = _png(_cell(notebook, "mosaic")), _png(_cell(notebook, "heatmap"))
    assert mosaic.shape[1] >= 800 and heatmap.shape[1] >= 800
    assert mosaic.std() > 20  # tiles drawn, not a blank figure

    last = "".join(o.get("text", "") for o in notebook.cells[-1].outputs)
    slide, table = last.split(" ", 1)
    rows = json.loads(table)
    assert slide == largest and len(rows) == counts[largest]
    group = slides[largest]
    order = np.lexsort(group["coords"][:].T[::-1])  # the reference in (x, y) order, like the rows below
    rows.sort(key=lambda r: (r["x"], r["y"]))
    np.testing.assert_array_equal([[r["x"], r["y"]] for r in rows], group["coords"][:][order])
    np.testing.assert_allclose([r["tissue_fraction"] for r in rows], group["tissue_fraction"][:][order], rtol=1e-6)
    # An independent first principal component: the top eigenvector of the covariance, read with plain zarr.
    vectors = zarr.open_array(embedding_store / "slides" / largest / "embeddings", mode="r")[:].astype(np.float64)
    embedded_coords = zarr.open_array(embedding_store / "slides" / largest / "coords", mode="r")[:]
    centred = vectors - vectors.mean(axis=0)
    _, eigenvectors = np.linalg.eigh(np.cov(centred.T))
    reference = dict(zip(map(tuple, embedded_coords.tolist()), centred @ eigenvectors[:, -1]))
    pc1 = np.array([r["pc1"] for r in rows])
    expected = np.array([reference[(r["x"], r["y"])] for r in rows])
    sign = np.sign(pc1 @ expected)  # a component's sign is arbitrary
    np.testing.assert_allclose(sign * pc1, expected, rtol=1e-6, atol=1e-6)
