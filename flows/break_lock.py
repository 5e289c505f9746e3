"""Show or break a store's run lock: ``python -m flows.break_lock STORE [--force]``.

A run that ends normally releases its lock; one that was killed leaves it.
On the same host the next run takes over a dead run's lock by itself. A lock
taken on another host (a cluster node, a login node) cannot be judged from
here: check on that host that the named process is gone, then run this
command with ``--force``. Without ``--force`` it only removes locks known to
be stale and prints the owner otherwise. Exit code 0 when the store is free
afterwards, 2 when it is still locked.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from storage.run_lock import LOCK_NAME, LockHeldError, RunLock


def main(argv: list[str] | None = None, prog: str = "python -m flows.break_lock") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path, help="tile, aligned or embedding store")
    parser.add_argument(
        "--force",
        action="store_true",
        help="break a lock taken on another host (after checking that its process is gone)",
    )
    args = parser.parse_args(argv)
    root = args.store.resolve()
    lock = RunLock(root / "staging" / LOCK_NAME, str(root))
    try:
        owner = lock.break_stale(force=args.force)
    except LockHeldError as error:
        print(f"break_lock: {error}", file=sys.stderr)
        return 2
    print(f"{root}: not locked" if owner is None else f"{root}: removed the lock of {owner.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
