"""Register a PLISM-style study and extract its aligned tiles: ``python -m flows.extract_plism``.

The same command as :mod:`flows.register_plism` with ``--stage all`` as the
default: conditions registered by an earlier run are reused, the others
registered first.
"""

from __future__ import annotations

import sys

from flows.register_plism import main as _main


def main(argv: list[str] | None = None) -> int:
    return _main(argv, prog="python -m flows.extract_plism", default_stage="all")


if __name__ == "__main__":
    sys.exit(main())
