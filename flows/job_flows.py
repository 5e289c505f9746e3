"""One Prefect flow per job, taking its config object: what the command lines run and what is served.

Each flow here is the run: it starts the task runner the job asks for
(``workers`` / ``dask_address`` / ``partitions``, :func:`flows.runners.tasks_on`)
and runs the body of the domain flow (``tile_tcga``, ``plism``, …) inside
itself, through the body's ``.fn``, so a deployment run shows its own task
runs, logs, progress and summary artifacts, with no child run one click
down. The parameter form of a deployment is the job model
(:mod:`flows.jobs`), with every field typed and described.

The domain flows are imported inside each run, so that serving needs
neither torch nor the model dependencies. Docstrings are Google-style
because Prefect reads their ``Args:`` into the UI's parameter descriptions.
"""

from __future__ import annotations

from prefect import flow

from flows.jobs import DistillJob, EmbedJob, EvaluateJob, PlismJob, RobustnessJob, TileJob
from flows.runners import tasks_on


@flow(name="tile-tcga", log_prints=True)
def tile(job: TileJob, progress_bar: bool = False) -> dict:
    """Tile a folder or CSV of slides into a tile store (``distillpath tile``).

    Args:
        job: every parameter of the command line (flows.jobs.TileJob): paths, tiling, workers.
        progress_bar: a progress bar on the terminal (command lines); every run has its progress artifact.
    """
    from flows.tiling_flow import tile_tcga

    with tasks_on(job.workers, job.dask_address):
        return tile_tcga.fn(
            slides=job.slides,
            out=job.out,
            config=job.tiling,
            mpp_override_um=job.mpp_override_um,
            mpp_replace_um=job.mpp_replace_um,
            overwrite=job.overwrite,
            progress_bar=progress_bar,
        )


@flow(name="plism", log_prints=True)
def plism(job: PlismJob, progress_bar: bool = False) -> dict:
    """Register a PLISM-style study and cut its aligned tiles (``distillpath register-plism`` / ``extract-plism``).

    Args:
        job: every parameter of the command line (flows.jobs.PlismJob): paths, stage, registration, tiling.
        progress_bar: a progress bar on the terminal (command lines); every run has its progress artifact.
    """
    from flows import plism_flow

    with tasks_on(job.workers, job.dask_address):
        return plism_flow.plism.fn(
            slides=job.slides,
            out=job.out,
            registration=job.registration,
            tiling=job.tiling,
            refinement=job.refinement_options(),
            pattern=job.pattern,
            reference=job.reference,
            stainings=job.stainings,
            stage=job.stage,
            overwrite=job.overwrite,
            progress_bar=progress_bar,
        )


@flow(name="embed", log_prints=True)
def embed(job: EmbedJob, progress_bar: bool = False) -> dict:
    """Embed a tile store with a model (``distillpath embed``).

    Args:
        job: every parameter of the command line (flows.jobs.EmbedJob): paths, model, weights, device.
        progress_bar: a progress bar on the terminal (command lines); every run has its progress artifact.
    """
    from flows.embedding_flow import embed_tiles

    with tasks_on(job.partitions, job.dask_address):
        return embed_tiles.fn(
            tiles=job.tiles,
            out=job.out,
            settings=job.settings(),
            partitions=job.partitions,
            overwrite=job.overwrite,
            progress_bar=progress_bar,
        )


@flow(name="distill", log_prints=True)
def distill(job: DistillJob, progress_bar: bool = False) -> dict:
    """Distil a teacher into a student on tile stores (``distillpath distill``).

    Args:
        job: every hyperparameter (flows.jobs.DistillJob: models, heads, loss, optim, train, crops), the tile
            stores, the run directory, processes, device and sharding.
        progress_bar: a progress bar on the terminal (command lines); every run has its progress artifact.
    """
    from flows import distill_flow

    return distill_flow.distill.fn(
        config=job.distill_config(),
        tiles=job.tiles,
        out=job.out,
        processes=job.processes,
        device=job.device,
        sharding=job.sharding,
        progress_bar=progress_bar,
    )


@flow(name="robustness", log_prints=True)
def robustness(job: RobustnessJob) -> dict:
    """Score PLISM embedding stores of one or several models into a report (``distillpath robustness``).

    Args:
        job: every parameter of the command line (flows.jobs.RobustnessJob): stores, report folder, ks.
    """
    from flows import robustness_flow

    return robustness_flow.robustness.fn(
        embeddings=job.embeddings,
        out=job.out,
        ks=job.ks,
        subset=job.subset,
        qc_from=job.qc_from,
        labels=job.labels,
    )


@flow(name="evaluate", log_prints=True)
def evaluate(job: EvaluateJob) -> dict[str, float]:
    """Probe an embedding store against a labels CSV (``distillpath evaluate``).

    Args:
        job: every parameter of the command line (flows.jobs.EvaluateJob): paths, task, level, targets.
    """
    from flows.evaluate_flow import evaluate_embeddings

    return evaluate_embeddings.fn(
        embeddings=job.embeddings, labels=job.labels, out=job.out, settings=job.probe_settings()
    )
