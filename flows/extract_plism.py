"""Register a PLISM-style study and extract its aligned tiles: ``python -m flows.extract_plism``.

The same command as :mod:`flows.register_plism` with ``--stage all`` (the
default of :class:`flows.jobs.PlismJob`): conditions registered by an
earlier run are reused, the others registered first.
"""

from __future__ import annotations

import sys

from flows.register_plism import main as _main


def main(argv: list[str] | None = None, prog: str = "python -m flows.extract_plism") -> int:
    return _main(argv, prog=prog, preset={})


if __name__ == "__main__":
    sys.exit(main())
