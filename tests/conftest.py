"""Shared fixtures: the shipped real slides, and slides generated from them; a Prefect of the tests' own."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# The tests run flows against temporary Prefect servers. Before anything imports Prefect, point it at a
# home of its own (database and profiles), so that a developer's ~/.prefect history, or a server their
# environment or profile names, never receives test runs. Removed at the end of the session.
_PREFECT_HOME = tempfile.mkdtemp(prefix="distillpath-tests-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
for _name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_PROFILES_PATH"):
    os.environ.pop(_name, None)

# Under pytest-xdist the workers share the cores: each gets its share of OpenMP (torch) threads, set before
# torch loads, and passes it to the processes it starts. Two workers of two threads each on two cores made
# the tiny-model tests spin-wait against each other (14 s instead of 0.7 s for one, measured under load).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import numpy as np  # noqa: E402  (after the Prefect environment above)
import openslide  # noqa: E402
import pytest  # noqa: E402
import pyvips  # noqa: E402
import tifffile  # noqa: E402

from tiling.pyramid_tiff import write_pyramid_tiff  # noqa: E402

DATA = Path(__file__).parent / "data" / "slides"
CMU_SVS = DATA / "CMU-1-Small-Region.svs"
OME_TIFF = DATA / "OS-1-detail.ome.tif"


def cmu_rgb() -> np.ndarray:
    """Pixels of the real CMU sample, ``[2967, 2220, 3]`` uint8 at 0.499 µm/px."""
    with openslide.OpenSlide(CMU_SVS) as slide:
        return np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))


def write_tiff(path: Path, rgb: np.ndarray, mpp_um: float | None, *, pyramid: bool = True) -> Path:
    """Write a tiled JPEG TIFF (pyramidal unless told otherwise) claiming ``mpp_um`` µm/px."""
    if mpp_um is None:  # libvips always writes a resolution; tifffile can leave it unitless
        tifffile.imwrite(path, rgb, tile=(256, 256), compression="jpeg", photometric="rgb", resolutionunit="NONE")
        return path
    return write_pyramid_tiff(path, rgb, mpp_um, pyramid=pyramid)


@pytest.fixture(scope="session")
def cmu_pixels() -> np.ndarray:
    return cmu_rgb()


@pytest.fixture(scope="session")
def slide_025(tmp_path_factory, cmu_pixels) -> Path:
    """The real sample upscaled 2× and written as a pyramid at 0.25 µm/px (levels 1, 2, 4, …)."""
    upscaled = np.asarray(pyvips.Image.new_from_array(cmu_pixels).resize(2.0, kernel="linear"))
    return write_tiff(tmp_path_factory.mktemp("p25") / "pyramid-025.tif", upscaled, 0.25)


@pytest.fixture(scope="session")
def slide_025_single_level(tmp_path_factory, slide_025) -> Path:
    """The same pixels as one level only, so 0.5 µm/px tiles must be resampled."""
    with openslide.OpenSlide(slide_025) as slide:
        rgb = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    return write_tiff(tmp_path_factory.mktemp("flat25") / "flat-025.tif", rgb, 0.25, pyramid=False)


@pytest.fixture
def one_torch_thread():
    """Single-threaded torch: the same sums in every run, and no thread thrash on two busy cores
    (tiny crops run ~15x slower with two threads fighting for them, as a loader worker never does).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shipped_tile_store(tmp_path_factory) -> Path:
    """A tile store of both shipped slides (53 real tiles) in shards of 16, made without Prefect."""
    from storage.tile_store import TileStore
    from tiling.config import TilingConfig
    from tiling.slide_list import SlideSpec, slide_id_from_path
    from tiling.tile_slide import tile_slide

    config = TilingConfig(tiles_per_shard=16)
    store = TileStore.create_or_open(tmp_path_factory.mktemp("shipped") / "tiles.zarr", config.model_dump())
    for path in (CMU_SVS, OME_TIFF):
        tile_slide(SlideSpec(path, slide_id_from_path(path)), store, config)
    return store.root


@pytest.fixture
def slide_dir(tmp_path) -> Path:
    """A folder holding copies of both shipped real slides."""
    folder = tmp_path / "slides"
    folder.mkdir()
    for source in (CMU_SVS, OME_TIFF):
        shutil.copy(source, folder / source.name)
    return folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that needs the Prefect server, directly or through a fixture: it starts one.

    Without ``prefect_api`` a flow would start Prefect's own temporary server, so a test that runs a flow
    asks for this fixture, and the fast lane (``-m "not slow"``) starts no server.
    """
    for item in items:
        if "prefect_api" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """One temporary Prefect API server for the whole session, as the CLI would start it."""
    from flows.prefect_api import prefect_api

    with prefect_api() as api_url:
        yield api_url


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(_PREFECT_HOME, ignore_errors=True)
