"""Serve every job as a Prefect deployment, to run from the UI, the API or a schedule: ``python -m flows.serve``.

A long-running process: it registers the deployments of :mod:`flows.deployments`
(``tile-tcga/tile-tcga``, ``plism/register-plism``, ``plism/extract-plism``,
``embed/embed``, ``distill/distill``, ``robustness/robustness``,
``evaluate/evaluate``) with the Prefect server of ``PREFECT_API_URL`` and runs
each flow run they get in a subprocess of this machine, until stopped
(Ctrl-C). Runs see this machine's files: give paths as this machine sees them.

The parameters are the fields of :class:`flows.jobs.ServeJob`. Schedules:
``--cron-tile-tcga "0 2 * * *"`` (one option per deployment), or a YAML file
(``--config``) with a section per deployment::

    tile-tcga:
      cron: "0 2 * * *"            # optional
      timezone: Europe/Paris       # optional, --timezone (UTC) by default
      parameters:                  # default job fields: of scheduled runs, and preset in the UI
        slides: /data/tcga
        out: /data/tiles.zarr
        workers: 8
    limit: 4                       # any ServeJob field, e.g. the most runs at once

Each section's parameters are checked against its job model before anything
is served. Command-line crons override the file's. ``--dask-address``
presets the cluster of every Dask-parallel deployment (tile-tcga, the plism
ones, embed). Exit code 2 when no Prefect server is configured or an option
is wrong.
"""

from __future__ import annotations

import sys
from typing import cast

from flows.jobs import DEPLOYMENT_JOBS, ServedDeployment, ServeJob
from flows.prefect_api import PrefectServerError

FLAGS = {"--only": "only", "--timezone": "timezone", "--dask-address": "dask_address", "--limit": "limit"}


def _load(argv: list[str] | None, prog: str) -> ServeJob:
    """The serve job of the command line; a typo raises ``ConfigError`` before Prefect is imported."""
    from flows.cli import job_parser
    from flows.config_loader import config_from_args

    parser = job_parser(prog, __doc__.split("\n\n")[0], ServeJob, FLAGS, progress=False)
    for name in DEPLOYMENT_JOBS:
        parser.add_argument(f"--cron-{name}", metavar="CRON", help=f"cron schedule of {name} (e.g. '0 2 * * *')")
    args = parser.parse_intermixed_args(argv)
    crons = {f"deployments.{name}.cron": getattr(args, f"cron_{name.replace('-', '_')}") for name in DEPLOYMENT_JOBS}
    return cast(ServeJob, config_from_args(ServeJob, args, FLAGS, more_flags=crons))


def _check_api() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise PrefectServerError(
            "no Prefect server: start one (prefect server start) and set PREFECT_API_URL, "
            "e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise PrefectServerError(f"the Prefect server at {url} does not answer: {error}")
    return url


def main(argv: list[str] | None = None, prog: str = "python -m flows.serve") -> int:
    from flows.config_loader import ConfigError

    try:
        job = _load(argv, prog)  # before Prefect is imported: --help and a typo answer at once
    except ConfigError as error:
        print(f"serve: {error}", file=sys.stderr)
        return 2
    from flows.deployments import build_deployment, deployment_spec, required_parameters
    from flows.runners import quiet_dask_logging

    deployments = []
    for name in job.served():
        spec = deployment_spec(name)
        section = job.deployments.get(name, ServedDeployment())
        deployments.append(
            build_deployment(
                spec,
                section.parameters,
                cron=section.cron,
                timezone=section.timezone or job.timezone,
                dask_address=job.dask_address,
            )
        )
        missing = [p for p in required_parameters(spec) if p not in {**spec.preset, **section.parameters}]
        if section.cron and missing:
            print(
                f"serve: warning: scheduled runs of {spec.full_name} will fail without the parameters "
                f"{', '.join(missing)}: set them under {name}.parameters in --config",
                file=sys.stderr,
            )
    try:
        api_url = _check_api()
    except PrefectServerError as error:
        print(f"serve: {error}", file=sys.stderr)
        return 2
    from prefect import serve

    quiet_dask_logging()  # inherited by the flow-run processes and their local Dask workers
    print(f"serving {len(deployments)} deployments on {api_url}", file=sys.stderr)
    serve(*deployments, limit=job.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
