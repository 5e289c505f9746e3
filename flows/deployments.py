"""The jobs as Prefect deployments: each served flow is the job's own flow, taking its config object.

A deployment's parameters are what the Prefect UI shows as a form and what
``prefect deployment run --param`` and ``run_deployment`` accept: here the
one parameter ``job``, the command line's config model (:mod:`flows.jobs`),
typed and described field by field, with the command's defaults and preset
(``register-plism``: ``stage: register``). The flows are those of
:mod:`flows.job_flows`, the ones the command lines run: a deployment run is
the job's run, with its own task runs, logs, progress and summary artifacts,
and its task runner chosen per run from ``workers`` / ``dask_address``.

Deployments are named after their command line: ``tile-tcga/tile-tcga``,
``plism/register-plism``, ``plism/extract-plism``, ``embed/embed``,
``distill/distill``, ``robustness/robustness``, ``evaluate/evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.flows import Flow
from prefect.schedules import Cron
from pydantic import BaseModel

from flows import job_flows
from flows.jobs import DEPLOYMENT_JOBS


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment: its name (the command line's), its flow, its job model and the fields preset for it."""

    name: str
    flow: Flow
    job: type[BaseModel]
    preset: dict[str, Any]

    @property
    def full_name(self) -> str:
        return f"{self.flow.name}/{self.name}"

    @property
    def dask(self) -> bool:
        """Whether the job takes ``dask_address``."""
        return "dask_address" in self.job.model_fields

    def parameter_names(self) -> list[str]:
        return list(self.job.model_fields)


_FLOWS: dict[str, Flow] = {
    "tile-tcga": job_flows.tile,
    "register-plism": job_flows.plism,
    "extract-plism": job_flows.plism,
    "embed": job_flows.embed,
    "distill": job_flows.distill,
    "robustness": job_flows.robustness,
    "evaluate": job_flows.evaluate,
}
DEPLOYMENTS: tuple[DeploymentSpec, ...] = tuple(
    DeploymentSpec(name, _FLOWS[name], job, preset) for name, (job, preset) in DEPLOYMENT_JOBS.items()
)


def deployment_spec(name: str) -> DeploymentSpec:
    for spec in DEPLOYMENTS:
        if name in (spec.name, spec.full_name):
            return spec
    raise ValueError(f"no deployment {name!r}; there are {', '.join(s.name for s in DEPLOYMENTS)}")


def required_parameters(spec: DeploymentSpec) -> list[str]:
    """The job's fields without a default: a scheduled run needs them among the served parameters."""
    return [name for name, info in spec.job.model_fields.items() if info.is_required()]


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
        parameters={"job": defaults} if defaults else {},
        schedules=[Cron(cron, timezone=timezone)] if cron else None,
        tags=["distillpath", *(tags or [])],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
