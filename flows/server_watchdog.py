"""Run a temporary server for one command and clean it up however that command ends.

``python server_watchdog.py PARENT_PID HOME -- COMMAND...`` starts ``COMMAND``
in a process group of its own and stays beside it. When the parent command
ends in any way (normal exit, exception, SIGTERM, SIGINT, ``kill -9``) or
asks by sending SIGTERM here, it stops the server's whole group (SIGTERM,
then SIGKILL after a grace period) and deletes ``HOME``, the server's
private folder (its database among it).

A parent that dies cannot clean up after itself, so the clean-up must live
in a process that survives it: this one notices the death by being
re-parented (``getppid`` changes), polled a few times a second. On Linux the
server is also given a parent-death signal, so a ``kill -9`` of this
watchdog takes the server down too. Standard library only, run by path, so
it starts in tens of milliseconds.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time

_POLL_S = 0.2
_GRACE_S = 15.0
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In a child about to exec: ask Linux to send SIGTERM when the parent ends (nothing elsewhere)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _stop_group(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL to what is left after the grace period."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        server.wait(timeout=_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    server.wait()


def main(argv: list[str]) -> int:
    parent_pid, home, command = int(argv[0]), argv[1], argv[3:]
    if argv[2] != "--" or not command:
        print("usage: server_watchdog.py PARENT_PID HOME -- COMMAND...", file=sys.stderr)
        return 2
    asked_to_stop = []
    signal.signal(signal.SIGTERM, lambda *_: asked_to_stop.append(True))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; a terminal's Ctrl-C reaches it first
    server = subprocess.Popen(command, start_new_session=True, preexec_fn=die_with_parent, stdin=subprocess.DEVNULL)
    try:
        while server.poll() is None and not asked_to_stop and os.getppid() == parent_pid:
            time.sleep(_POLL_S)
        _stop_group(server)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
