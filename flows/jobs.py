"""One frozen config per job: every parameter of a command line and of its deployment, stated once.

The command lines derive their options from these models
(:mod:`flows.config_loader`), and the deployments take them as their one
parameter, so the Prefect UI's form and each run's record show every field,
typed, with the same defaults. The domain configs inside (``TilingConfig``,
``RegistrationConfig``, ``RefinementConfig``) are the ones the stores record. Importing this module
imports neither Prefect, torch nor Dask: it is the validation path of every
command.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from pipeline.distill.config import DistillConfig
from registration.config import DEFAULT_PATTERN, DEFAULT_REFERENCE, RefinementConfig, RegistrationConfig
from tiling.config import TilingConfig

NODES_PER_SIDE = 8  # registration nodes measured per side of each tile, to know where it falls on a condition


def default_workers() -> int:
    """Half the CPUs: one local Dask worker process per two cores (each slide also uses ``threads``)."""
    return max(1, (os.cpu_count() or 2) // 2)


class _Job(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TileJob(_Job):
    """Tile a folder or CSV of slides into a tile store (``distillpath tile``)."""

    slides: str = Field(description="folder of slides, a CSV with columns path[,slide_id,mpp], or one slide file")
    out: str = Field(description="tile store (a zarr folder) to create or resume")
    tiling: TilingConfig = Field(TilingConfig(), description="every tiling parameter; recorded in the store")
    mpp_override_um: float | None = Field(None, gt=0, description="µm/px for slides whose files record none")
    mpp_replace_um: float | None = Field(None, gt=0, description="µm/px for every slide, replacing the files' own")
    overwrite: bool = Field(False, description="delete the store and redo every slide")
    workers: int = Field(
        default_factory=default_workers,
        gt=0,
        description="local worker processes (1 runs in the flow's process); ignored with dask_address",
    )
    dask_address: str | None = Field(None, description="scheduler of an existing Dask cluster, e.g. tcp://host:8786")


class PlismJob(_Job):
    """Register a PLISM-style study and cut its aligned tiles (``distillpath register-plism`` / ``extract-plism``)."""

    slides: str = Field(description="folder of the study's slides, named {staining}_{scanner}")
    out: str = Field(description="aligned tile store (a zarr folder) to create or resume")
    stage: Literal["register", "all"] = Field("all", description="register only, or register and extract (all)")
    registration: RegistrationConfig = Field(RegistrationConfig(), description="how each condition is registered")
    tiling: TilingConfig = Field(TilingConfig(), description="tile size, µm/px and tissue detection of the tiles")
    refine: bool = Field(False, description="refine each registration at high resolution near the tiles")
    refinement: RefinementConfig | None = Field(
        None, description="how each registration is refined near the tiles (given, even empty, implies refine)"
    )
    reference: tuple[str, str] = Field(DEFAULT_REFERENCE, description="reference condition: staining and scanner")
    pattern: str = Field(DEFAULT_PATTERN, description="regular expression with groups staining and scanner")
    stainings: list[str] | None = Field(None, description="keep only these stainings (the reference's is kept)")
    overwrite: bool = Field(False, description="delete the store and redo every condition")
    workers: int = Field(
        default_factory=default_workers,
        gt=0,
        description="local worker processes (1 runs in the flow's process); ignored with dask_address",
    )
    dask_address: str | None = Field(None, description="scheduler of an existing Dask cluster, e.g. tcp://host:8786")

    def refinement_options(self) -> RefinementConfig | None:
        """What the flow takes: ``None`` (no refinement) or the refinement's config, defaults with ``--refine``."""
        if self.refinement is not None:
            return self.refinement
        return RefinementConfig() if self.refine else None


class EmbedJob(_Job):
    """Embed a tile store with a model (``distillpath embed``)."""

    tiles: str = Field(description="tile store or aligned tile store to read")
    out: str = Field(description="embedding store to create or resume")
    model: str = Field(description="h-optimus-0, h0-mini, tiny-teacher, tiny-student or a timm model name")
    weights: str | None = Field(None, description="local weights file (safetensors or torch checkpoint); none: random")
    pooling: Literal["cls+mean", "cls"] = Field(
        "cls+mean",
        description="class token and mean patch token (the paper's HEST/EVA embedding), or the class "
        "token only (what the PLISM leaderboard uses)",
    )
    seed: int = Field(0, description="without weights: the random weights are drawn from (model, seed)")
    dtype: Literal["float16", "float32"] = Field("float16", description="stored precision")
    batch_size: int | None = Field(None, gt=0, description="tiles per forward pass (none: 256 on CUDA, 32 on CPU)")
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="cpu, cuda, cuda:N, or auto (CUDA when available)"
    )
    loader_workers: int | None = Field(None, ge=0, description="processes decoding tiles (none: 4 on CUDA, 0 on CPU)")
    partitions: int = Field(1, gt=0, description="processes splitting the shards, one GPU each (Dask when > 1)")
    dask_address: str | None = Field(None, description="scheduler of an existing Dask cluster (one GPU per worker)")
    overwrite: bool = Field(False, description="delete the embedding store and start again")

    def settings(self):  # -> pipeline.embed.EmbeddingSettings; imports torch, so only once the job runs
        """The embedding settings, with ``auto`` resolved to this machine's device."""
        import torch

        from pipeline.embed import EmbeddingSettings

        device = ("cuda" if torch.cuda.is_available() else "cpu") if self.device == "auto" else self.device
        return EmbeddingSettings(
            model=self.model,
            weights=self.weights,
            pooling=self.pooling,
            dtype=self.dtype,
            batch_size=self.batch_size,
            device=device,
            loader_workers=self.loader_workers,
            init_seed=self.seed,
        )


class EvaluateJob(_Job):
    """Probe an embedding store against a labels CSV (``distillpath evaluate``)."""

    embeddings: str = Field(description="embedding store of a per-slide tile store")
    labels: str = Field(description="CSV: slide_id [, tile | x, y], the folds column and the targets")
    out: str = Field(description="folder for results.csv and results.md")
    task: Literal["regression", "classification"] = Field(
        description="HEST-style ridge regression, or linear-probe classification"
    )
    level: Literal["slide", "tile"] = Field("slide", description="one sample per slide (mean of its tiles) or tile")
    folds_column: str = Field("fold", description="column giving each sample's test fold")
    targets: tuple[str, ...] = Field((), description="target columns (none: every column but keys and folds)")

    def probe_settings(self):  # -> pipeline.probes.ProbeSettings; imported once the job runs
        from pipeline.probes import ProbeSettings

        return ProbeSettings(task=self.task, level=self.level, folds_column=self.folds_column, targets=self.targets)


class DistillJob(DistillConfig):
    """Distil a teacher into a student on tile stores (``distillpath distill``): every hyperparameter, typed.

    The sections of :class:`~pipeline.distill.config.DistillConfig` (``models``, ``heads``, ``loss``,
    ``optim``, ``train``, ``crops``) sit at the top level beside the paths, so a file of
    ``configs/distill/`` is a job file as it is, and ``train.iterations=10`` sets one hyperparameter.
    """

    tiles: list[str] = Field(min_length=1, description="tile stores to train on")
    out: str = Field(description="run directory to create or resume")
    processes: int = Field(1, gt=0, description="training processes (torchrun when > 1, one per GPU with cuda)")
    device: Literal["cpu", "cuda"] = Field("cpu", description="where to train")
    sharding: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with several processes: whole networks in each (ddp) or parameters sharded (fsdp)"
    )

    def distill_config(self) -> DistillConfig:
        """The hyperparameters alone: what the run directory records and ``pipeline.distill.train`` takes."""
        return DistillConfig.model_validate(self.model_dump(include=set(DistillConfig.model_fields)))


class RobustnessJob(_Job):
    """Score PLISM robustness of embedding stores into a report (``distillpath robustness``)."""

    embeddings: list[str] = Field(min_length=1, description="embedding stores of aligned PLISM tiles, one per model")
    out: str = Field(description="folder for the results and the report")
    ks: tuple[PositiveInt, ...] = Field((1, 3, 5, 10), min_length=1, description="k of the top-k accuracies")
    subset: str | None = Field(None, description="tile indices to keep (.npy), e.g. plismbench's tiles_subset_8139.npy")
    labels: list[str] | None = Field(
        None, description="a name per store, in the order of embeddings (none: model name and weights checksum)"
    )
    qc_from: list[str] | None = Field(None, description="other stores whose QC pictures the report shows")

    @model_validator(mode="after")
    def _a_label_per_store(self) -> RobustnessJob:
        if self.labels is not None and len(self.labels) != len(self.embeddings):
            raise ValueError(f"{len(self.labels)} labels for {len(self.embeddings)} embedding stores")
        return self


# Each deployment, named after its command line: the job it runs and the fields its command presets.
DEPLOYMENT_JOBS: dict[str, tuple[type[BaseModel], dict[str, Any]]] = {
    "tile-tcga": (TileJob, {}),
    "register-plism": (PlismJob, {"stage": "register"}),
    "extract-plism": (PlismJob, {"stage": "all"}),
    "embed": (EmbedJob, {}),
    "distill": (DistillJob, {}),
    "robustness": (RobustnessJob, {}),
    "evaluate": (EvaluateJob, {}),
}


class ServedDeployment(_Job):
    """What ``distillpath serve`` sets of one deployment: a schedule, and default parameters (the UI's form)."""

    cron: str | None = Field(None, description="cron schedule, e.g. '0 2 * * *' (none: runs on demand only)")
    timezone: str | None = Field(None, description="IANA time zone of the cron (none: ServeJob.timezone)")
    parameters: dict[str, Any] = Field({}, description="fields of the deployment's job: defaults of its runs")


class ServeJob(_Job):
    """Serve every job as a Prefect deployment (``distillpath serve``).

    ``deployments`` maps deployment names to their settings; in a YAML file the
    names may also be top-level sections (``tile-tcga: {cron: ...}``). Each
    section's ``parameters`` are checked against the deployment's job model
    now, except for fields left to each run (the paths).
    """

    deployments: dict[str, ServedDeployment] = Field({}, description="per deployment name: cron, timezone, parameters")
    only: list[str] | None = Field(None, description="serve only these deployments (none: all)")
    timezone: str = Field("UTC", description="IANA time zone of crons that name none")
    dask_address: str | None = Field(None, description="default Dask scheduler of the Dask-parallel deployments")
    limit: int | None = Field(None, gt=0, description="most flow runs at once on this machine (none: no limit)")

    @model_validator(mode="before")
    @classmethod
    def _sections_at_the_top(cls, data: Any) -> Any:
        if isinstance(data, dict) and set(data) & set(DEPLOYMENT_JOBS):
            data = dict(data)
            sections = {name: data.pop(name) or {} for name in list(data) if name in DEPLOYMENT_JOBS}
            nested = data.get("deployments") or {}
            data["deployments"] = {
                name: {**sections.get(name, {}), **nested.get(name, {})} for name in {*sections, *nested}
            }
        return data

    @model_validator(mode="after")
    def _known_names_and_parameters(self) -> ServeJob:
        for name in [*self.deployments, *(self.only or [])]:
            if name not in DEPLOYMENT_JOBS:
                raise ValueError(f"no deployment {name}; there are {', '.join(DEPLOYMENT_JOBS)}")
        for name, section in self.deployments.items():
            model, preset = DEPLOYMENT_JOBS[name]
            try:
                model.model_validate({**preset, **section.parameters})
            except ValidationError as error:
                wrong = [e for e in error.errors() if e["type"] != "missing"]
                if wrong:
                    first = wrong[0]
                    problem = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
                    where = ".".join(map(str, first["loc"]))
                    raise ValueError(f"deployments.{name}.parameters.{where}: {problem}") from None
        return self

    def served(self) -> list[str]:
        """The names of the deployments to serve, in the order of :data:`DEPLOYMENT_JOBS`."""
        return [name for name in DEPLOYMENT_JOBS if not self.only or name in self.only]


def plism_store_parameters(
    reference_name: str,
    pattern: str,
    stainings: list[str] | None,
    registration: RegistrationConfig,
    refinement: RefinementConfig | None,
    tiling: TilingConfig,
    nodes_per_side: int,
) -> dict[str, Any]:
    """What an aligned tile store records of its run, and a rerun must match (checked before Prefect starts too)."""
    return {
        "reference": reference_name,
        "pattern": pattern,
        "stainings": sorted(stainings) if stainings else None,
        "registration": registration.model_dump(mode="json"),
        "refinement": None if refinement is None else refinement.model_dump(mode="json"),
        "tiling": tiling.model_dump(mode="json", exclude=set(tiling.RUN_ONLY)),
        "nodes_per_side": nodes_per_side,
    }
