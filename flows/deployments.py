"""The flows as Prefect deployments: one thin wrapper flow per command line, with plain parameters.

A deployment's parameters are what the Prefect UI shows as a form and what
``prefect deployment run --param`` and ``run_deployment`` accept, so each
wrapper takes the options of its command line (``python -m flows.<cli>``):
paths as strings, the task runner as ``workers`` / ``dask_address`` (the
task runner of a served flow is otherwise fixed when it is served), and the
typed configs (``TilingConfig``, ``RegistrationConfig``) with their defaults,
so that a run needs only its paths. ``EmbeddingSettings`` and
``ProbeSettings``, dataclasses with a required field or a device resolved at
run time, become flat fields.

Each wrapper runs the real flow as a child run, with the task runner its
parameters ask for: the child is the same run the command line makes, with
its logs, progress and summary artifacts. Wrappers import their flow inside
the run, so serving needs neither torch nor the other model dependencies.
Their docstrings are Google-style because Prefect reads the ``Args:``
section into the descriptions of the UI's parameter form.

Deployments are named after their command line: ``tile-tcga/tile-tcga``,
``plism/register-plism``, ``plism/extract-plism``, ``embed/embed``,
``distill/distill``, ``robustness/robustness``, ``evaluate/evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.flows import Flow
from prefect.schedules import Cron
from pydantic import BaseModel

from flows.jobs import EmbedJob, EvaluateJob, PlismJob, TileJob
from flows.register_plism import PRESET as REGISTER_PRESET


def _task_runner(workers: int, dask_address: str | None):
    from flows.runners import make_task_runner, quiet_dask_logging

    quiet_dask_logging()
    logger = get_run_logger()
    if dask_address:
        logger.info("tasks run on the Dask cluster at %s", dask_address)
    elif workers > 1:
        logger.info("tasks run on a local Dask cluster of %d worker processes", workers)
    return make_task_runner(workers, dask_address)


@flow(name="tile-tcga", log_prints=True)
def tile_tcga_deployment(job: TileJob) -> dict:
    """Tile a folder or CSV of slides into a tile store (``distillpath tile``).

    Args:
        job: every parameter of the command line (flows.jobs.TileJob): paths, tiling, workers.
    """
    from flows.tiling_flow import tile_tcga

    return tile_tcga.with_options(task_runner=_task_runner(job.workers, job.dask_address))(
        slides=job.slides,
        out=job.out,
        config=job.tiling,
        mpp_override_um=job.mpp_override_um,
        mpp_replace_um=job.mpp_replace_um,
        overwrite=job.overwrite,
    )


@flow(name="plism", log_prints=True)
def plism_deployment(job: PlismJob) -> dict:
    """Register a PLISM-style study and cut its aligned tiles (``distillpath extract-plism``).

    Args:
        job: every parameter of the command line (flows.jobs.PlismJob): paths, stage, registration, tiling.
    """
    from flows.plism_flow import plism

    return plism.with_options(task_runner=_task_runner(job.workers, job.dask_address))(
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
    )


@flow(name="embed", log_prints=True)
def embed_deployment(job: EmbedJob) -> dict:
    """Embed a tile store with a model (``distillpath embed``).

    Args:
        job: every parameter of the command line (flows.jobs.EmbedJob): paths, model, weights, device.
    """
    from flows.embedding_flow import embed_tiles

    return embed_tiles.with_options(task_runner=_task_runner(job.partitions, job.dask_address))(
        tiles=job.tiles,
        out=job.out,
        settings=job.settings(),
        partitions=job.partitions,
        overwrite=job.overwrite,
    )


@flow(name="distill", log_prints=True)
def distill_deployment(
    config: str,
    tiles: list[str],
    out: str,
    processes: int = 1,
    device: Literal["cpu", "cuda"] = "cpu",
    sharding: Literal["ddp", "fsdp"] = "ddp",
) -> dict:
    """Distil a teacher into a student on tile stores (``python -m flows.distill``).

    Args:
        config: distillation config (YAML), e.g. configs/distill/h0-mini.yaml.
        tiles: tile stores to train on.
        out: run directory to create or resume.
        processes: training processes (torchrun when > 1, one per GPU with device cuda).
        device: cpu or cuda.
        sharding: with several processes, whole networks in each (ddp) or parameters sharded (fsdp).
    """
    from flows.distill_flow import distill

    return distill(config=config, tiles=tiles, out=out, processes=processes, device=device, sharding=sharding)


@flow(name="robustness", log_prints=True)
def robustness_deployment(
    embeddings: list[str],
    out: str,
    ks: list[int] | None = None,
    subset: str | None = None,
    labels: list[str] | None = None,
) -> dict:
    """Score PLISM embedding stores of one or several models into a report (``python -m flows.robustness``).

    Args:
        embeddings: one PLISM embedding store per model.
        out: report folder.
        ks: k of the top-k accuracies (default 1, 3, 5, 10).
        subset: .npy file of the tile indices to score.
        labels: a name per store for the report (default: model name and weights checksum).
    """
    from flows.robustness_flow import robustness

    options = {"ks": tuple(ks)} if ks else {}
    return robustness(embeddings=embeddings, out=out, subset=subset, labels=labels, **options)


@flow(name="evaluate", log_prints=True)
def evaluate_deployment(job: EvaluateJob) -> dict[str, float]:
    """Probe an embedding store against a labels CSV (``distillpath evaluate``).

    Args:
        job: every parameter of the command line (flows.jobs.EvaluateJob): paths, task, level, targets.
    """
    from flows.evaluate_flow import evaluate_embeddings

    return evaluate_embeddings(embeddings=job.embeddings, labels=job.labels, out=job.out, settings=job.probe_settings())


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: its name (the command line's), its flow, and parameters preset for it.

    A flow migrated to a job config (``job``) takes that object as its one
    parameter ``job``; presets and served defaults name the job's fields.
    """

    name: str
    flow: Flow
    preset: dict[str, Any]
    dask: bool  # takes ``dask_address``
    job: type[BaseModel] | None = None

    @property
    def full_name(self) -> str:
        return f"{self.flow.name}/{self.name}"

    def parameter_names(self) -> list[str]:
        return list(self.job.model_fields) if self.job else list(self.flow.parameters.properties)


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec("tile-tcga", tile_tcga_deployment, {}, dask=True, job=TileJob),
    DeploymentSpec("register-plism", plism_deployment, REGISTER_PRESET, dask=True, job=PlismJob),
    DeploymentSpec("extract-plism", plism_deployment, {"stage": "all"}, dask=True, job=PlismJob),
    DeploymentSpec("embed", embed_deployment, {}, dask=True, job=EmbedJob),
    DeploymentSpec("distill", distill_deployment, {}, dask=False),
    DeploymentSpec("robustness", robustness_deployment, {}, dask=False),
    DeploymentSpec("evaluate", evaluate_deployment, {}, dask=False, job=EvaluateJob),
)


def deployment_spec(name: str) -> DeploymentSpec:
    for spec in DEPLOYMENTS:
        if name in (spec.name, spec.full_name):
            return spec
    raise ValueError(f"no deployment {name!r}; there are {', '.join(s.name for s in DEPLOYMENTS)}")


def required_parameters(spec: DeploymentSpec) -> list[str]:
    if spec.job:
        return [name for name, info in spec.job.model_fields.items() if info.is_required()]
    return list(spec.flow.parameters.required or [])


def build_deployment(
    spec: DeploymentSpec,
    parameters: dict[str, Any] | None = None,
    cron: str | None = None,
    timezone: str | None = None,
    dask_address: str | None = None,
    tags: list[str] | None = None,
) -> RunnerDeployment:
    """The runner deployment of ``spec``: its preset, then ``dask_address``, then ``parameters`` as defaults.

    Default parameters are editable in the UI for each run; a ``cron``
    schedule runs with them. Unknown parameter names raise ``ValueError``.
    """
    defaults = {
        **spec.preset,
        **({"dask_address": dask_address} if spec.dask and dask_address else {}),
        **(parameters or {}),
    }
    unknown = set(defaults) - set(spec.parameter_names())
    if unknown:
        raise ValueError(
            f"{spec.full_name} has no parameter {', '.join(sorted(unknown))}; "
            f"it takes {', '.join(spec.parameter_names())}"
        )
    return spec.flow.to_deployment(
        name=spec.name,
        parameters={"job": defaults} if spec.job and defaults else defaults,
        schedules=[Cron(cron, timezone=timezone)] if cron else None,
        tags=["distillpath", *(tags or [])],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
