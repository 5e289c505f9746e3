"""Serve every flow as a Prefect deployment, to run from the UI, the API or a schedule: ``python -m flows.serve``.

A long-running process: it registers the deployments of :mod:`flows.deployments`
(``tile-tcga/tile-tcga``, ``plism/register-plism``, ``plism/extract-plism``,
``embed/embed``, ``distill/distill``, ``robustness/robustness``,
``evaluate/evaluate``) with the Prefect server of ``PREFECT_API_URL`` and runs
each flow run they get in a subprocess of this machine, until stopped
(Ctrl-C). Runs see this machine's files: give paths as this machine sees them.

Schedules: ``--cron-tile-tcga "0 2 * * *"`` (one option per deployment), or a
YAML file (``--config``) with a section per deployment::

    tile-tcga:
      cron: "0 2 * * *"            # optional
      timezone: Europe/Paris       # optional, UTC by default
      parameters:                  # default parameters: of scheduled runs, and preset in the UI
        slides: /data/tcga
        out: /data/tiles.zarr
        workers: 8

Command-line crons override the file's. ``--dask-address`` presets the
cluster of every Dask-parallel deployment (tile-tcga, the plism ones, embed).
Exit code 2 when no Prefect server is configured or an option is wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.prefect_api import PrefectServerError

# The names of flows.deployments.DEPLOYMENTS, known without importing Prefect (tests/test_operations.py compares).
DEPLOYMENT_NAMES = ("tile-tcga", "register-plism", "extract-plism", "embed", "distill", "robustness", "evaluate")


def _parse_args(argv: list[str] | None, names: list[str], prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", type=Path, help="YAML file: per deployment name, optional cron, timezone and default parameters"
    )
    for name in names:
        parser.add_argument(f"--cron-{name}", metavar="CRON", help=f"cron schedule of {name} (e.g. '0 2 * * *')")
    parser.add_argument("--timezone", help="IANA time zone of the command-line crons (default UTC)")
    parser.add_argument("--dask-address", help="default Dask scheduler of the Dask-parallel deployments")
    parser.add_argument(
        "--only", nargs="+", choices=names, metavar="NAME", help=f"serve only these ({', '.join(names)})"
    )
    parser.add_argument("--limit", type=int, help="most flow runs at once on this machine (default: no limit)")
    return parser.parse_args(argv)


def _sections(args: argparse.Namespace, names: list[str]) -> dict[str, dict]:
    """Per deployment: ``cron``, ``timezone`` and ``parameters``, from the file then the command line."""
    import yaml

    sections = (yaml.safe_load(args.config.read_text()) or {}) if args.config else {}
    unknown = set(sections) - set(names)
    if unknown:
        raise ValueError(f"{args.config}: no deployment {', '.join(sorted(unknown))}; there are {', '.join(names)}")
    for name, section in sections.items():
        extra = set(section or {}) - {"cron", "timezone", "parameters"}
        if extra:
            raise ValueError(
                f"{args.config}: {name}: unknown keys {', '.join(sorted(extra))} (cron, timezone, parameters)"
            )
    merged = {name: dict(sections.get(name) or {}) for name in names}
    for name in names:
        cron = getattr(args, f"cron_{name.replace('-', '_')}")
        if cron:
            merged[name]["cron"] = cron
            if args.timezone:
                merged[name]["timezone"] = args.timezone
    return merged


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
    names = list(DEPLOYMENT_NAMES)
    args = _parse_args(argv, names, prog)  # before Prefect is imported: --help and a wrong option answer at once
    from flows.deployments import DEPLOYMENTS, build_deployment, required_parameters
    from flows.runners import quiet_dask_logging

    try:
        sections = _sections(args, names)
        deployments = []
        for spec in DEPLOYMENTS:
            if args.only and spec.name not in args.only:
                continue
            section = sections[spec.name]
            parameters = section.get("parameters") or {}
            deployments.append(
                build_deployment(
                    spec,
                    parameters,
                    cron=section.get("cron"),
                    timezone=section.get("timezone"),
                    dask_address=args.dask_address,
                )
            )
            missing = [p for p in required_parameters(spec) if p not in parameters]
            if section.get("cron") and missing:
                print(
                    f"serve: warning: scheduled runs of {spec.full_name} will fail without the parameters "
                    f"{', '.join(missing)}: set them under {spec.name}.parameters in --config",
                    file=sys.stderr,
                )
        api_url = _check_api()
    except (PrefectServerError, ValueError, OSError) as error:
        print(f"serve: {error}", file=sys.stderr)
        return 2
    from prefect import serve

    quiet_dask_logging()  # inherited by the flow-run processes and their local Dask workers
    print(f"serving {len(deployments)} deployments on {api_url}", file=sys.stderr)
    serve(*deployments, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
