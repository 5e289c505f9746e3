"""The end-to-end demo as one Prefect flow whose steps are the project's flows (see :mod:`flows.demo`)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.embedding_flow import embed_tiles
from flows.plism_flow import plism
from flows.robustness_flow import robustness
from flows.runners import make_task_runner
from flows.tiling_flow import tile_tcga
from pipeline.embed import EmbeddingSettings
from registration.config import RegistrationConfig
from registration.synthetic import make_synthetic_plism

SAMPLE_SLIDES = Path(__file__).resolve().parent / "samples"  # package data: the wheel holds them too
CMU_SAMPLE = SAMPLE_SLIDES / "CMU-1-Small-Region.svs"
# The CMU sample is 1.1 x 1.5 mm: register at 4 µm/px with a 120 µm B-spline grid (docs/performance.md).
SAMPLE_REGISTRATION = RegistrationConfig(view_mpp_um=4.0, bspline_grid_spacing_um=120.0)


@flow(name="demo", log_prints=True)
def demo(
    out: str,
    models: list[tuple[str, str | None]],
    stainings: list[str],
    scanners: list[str],
    workers: int = 1,
    progress_bar: bool = False,
) -> str:
    """Tile, register, extract, embed and score the sample data under ``out``; return the report's path."""
    logger = get_run_logger()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    runner = make_task_runner(workers, None)
    tiles = root / "tiles.zarr"
    tile_tcga.with_options(task_runner=runner)(slides=str(SAMPLE_SLIDES), out=str(tiles), progress_bar=progress_bar)
    study = root / "plism-slides"
    if not study.is_dir():
        make_synthetic_plism(
            CMU_SAMPLE,
            study,
            stainings=tuple(stainings),
            scanners=tuple(scanners),
            reference=(stainings[0], scanners[0]),
        )
    aligned = root / "plism.zarr"
    plism.with_options(task_runner=runner)(
        slides=str(study),
        out=str(aligned),
        registration=SAMPLE_REGISTRATION,
        reference=(stainings[0], scanners[0]),
        progress_bar=progress_bar,
    )
    embedded = []
    for name, weights in models:
        settings = EmbeddingSettings(model=name, weights=weights, batch_size=32, loader_workers=0)
        for source, kind in ((aligned, "plism"), (tiles, "tiles")):
            target = root / "embeddings" / f"{kind}-{name}.zarr"
            embed_tiles(tiles=str(source), out=str(target), settings=settings, progress_bar=progress_bar)
            if kind == "plism":
                embedded.append(str(target))
    robustness(embeddings=embedded, out=str(root / "report"), qc_from=[str(tiles)])
    page = root / "report" / "index.html"
    logger.info("report: %s", page)
    print(f"demo finished; open {page}")
    return str(page)
