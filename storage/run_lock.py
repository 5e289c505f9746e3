"""One run at a time per store: a lock file made by exclusive create, naming its owner.

The lock is ``STORE/staging/run.lock``, created exclusively (a hard link,
which fails if the name exists, like ``O_EXCL``), so of two runs started
together exactly one creates it; the other is refused at
once with the owner's host, pid, start time and command. The file holds a
random token: only the run that wrote it releases it, so a run that finishes
first can never delete a lock another run holds.

A lock whose owner is gone is stale. On the owner's own host that is
decided automatically: the pid is dead, or now belongs to a process started
after the lock was taken (pid reuse). A lock from another host cannot be
judged from here; the message says how to check on that host and to break it
with ``python -m flows.break_lock STORE``.

Breaking moves the lock aside under a unique name and checks that what moved
is the stale lock that was judged; if another process had broken it and
taken a fresh lock in between, that lock is put back and this run refused.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

LOCK_NAME = "run.lock"
_ATTEMPTS = 3


class LockHeldError(Exception):
    """Another run holds the store's lock; the message names it and says what to do."""


@dataclass(frozen=True)
class LockOwner:
    """Who holds a lock: enough to find the process and to tell it from a later one with the same pid."""

    host: str
    pid: int
    started_at: str  # when the lock was taken, UTC ISO 8601
    command: str
    token: str
    process_started: float | None = None  # the owner's own start time (epoch s), to detect pid reuse

    @classmethod
    def of_this_process(cls) -> LockOwner:
        return cls(
            host=socket.gethostname(),
            pid=os.getpid(),
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
            command=" ".join([Path(sys.executable).name, *sys.argv]),
            token=uuid.uuid4().hex,
            process_started=psutil.Process().create_time(),
        )

    def describe(self) -> str:
        return f"process {self.pid} on host {self.host}, since {self.started_at} ({self.command})"

    def is_gone(self) -> bool | None:
        """True if the owner has certainly ended, False if it is alive, None if that cannot be told here."""
        if self.host != socket.gethostname():
            return None
        try:
            process = psutil.Process(self.pid)
            started, status = process.create_time(), process.status()
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:  # exists but is not ours to inspect: count it alive
            return False
        if status == psutil.STATUS_ZOMBIE:  # ended; only its exit status waits to be collected
            return True
        return self.process_started is not None and abs(started - self.process_started) > 1.0


def read_owner(path: Path) -> LockOwner | None:
    """The owner recorded in the lock file ``path``; None if there is none.

    A lock file that cannot be parsed (hand-edited, or from an older version
    of this project) reads as an owner on an unknown host, so it is never
    broken silently.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        fields = json.loads(text)
        return LockOwner(**fields)
    except (ValueError, TypeError):
        return LockOwner(
            host="(unknown)", pid=0, started_at="(unknown)", command=f"unreadable lock: {text[:80]!r}", token=text
        )


class RunLock:
    """The lock of one store; :meth:`acquire` it before writing, :meth:`release` it after."""

    def __init__(self, path: Path, store_name: str) -> None:
        self.path = Path(path)
        self.store_name = store_name
        self.owner: LockOwner | None = None  # set while this object holds the lock

    def acquire(self) -> None:
        """Take the lock, breaking it first if its owner is gone from this host.

        Raises
        ------
        LockHeldError
            If another run holds it, or may: the message names the owner.
        """
        me = LockOwner.of_this_process()
        holder = None
        for _ in range(_ATTEMPTS):  # again only when the lock went, or was stale, between two looks
            if self._create(me):
                self.owner = me
                return
            holder = read_owner(self.path)
            if holder is not None and not holder.is_gone():
                break
            if holder is not None:
                self._break(holder)
        raise LockHeldError(self._held_message(holder))

    def release(self) -> None:
        """Remove the lock if this object still holds it; a lock another run took over is left alone."""
        if self.owner is None:
            return
        holder = read_owner(self.path)
        if holder is not None and holder.token == self.owner.token:
            self.path.unlink(missing_ok=True)
        self.owner = None

    def break_stale(self, *, force: bool = False) -> LockOwner | None:
        """Remove the lock of a run that is gone; return its owner (None if there was no lock).

        ``force`` is for an owner on another host that the user has checked is gone.

        Raises
        ------
        LockHeldError
            If the owner is alive on this host, or on another host without ``force``.
        """
        holder = read_owner(self.path)
        if holder is None:
            return None
        gone = holder.is_gone()
        if gone is False or (gone is None and not force):
            raise LockHeldError(self._held_message(holder))
        self._break(holder)
        return holder

    def refuse_if_held(self) -> None:
        """Raise :class:`LockHeldError` unless the lock is free or its owner is certainly gone."""
        holder = read_owner(self.path)
        if holder is not None and holder.is_gone() is not True:
            raise LockHeldError(self._held_message(holder))

    def _create(self, me: LockOwner) -> bool:
        """Exclusive create with the owner already inside: written aside, then hard-linked to the lock name.

        ``link`` fails if the name exists, atomically, as ``O_EXCL`` does (and
        also on NFS); unlike ``O_EXCL`` it never shows a reader an empty lock.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        draft = self.path.with_name(f".{LOCK_NAME}.{me.token}")
        with open(draft, "w") as file:
            json.dump(asdict(me), file)
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(draft, self.path)
        except FileExistsError:
            return False
        finally:
            draft.unlink()
        return True

    def _break(self, judged: LockOwner) -> None:
        """Move aside the lock judged stale; put it back if what moved is someone else's fresh lock."""
        aside = self.path.with_name(f".{LOCK_NAME}.broken-{uuid.uuid4().hex[:12]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another run broke it first
        moved = read_owner(aside)
        if moved is not None and moved.token != judged.token:
            try:
                os.link(aside, self.path)  # no overwrite: a lock made in the meantime wins
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def _held_message(self, holder: LockOwner | None) -> str:
        if holder is None:  # taken and released by others between each of our looks
            return f"{self.store_name} is being locked and unlocked by other runs; try again"
        message = f"{self.store_name} is in use by {holder.describe()}"
        if holder.is_gone() is None:
            message += (
                f". If that run is gone (check on {holder.host}: `ps -p {holder.pid}`), "
                f"break the lock with `python -m flows.break_lock {self.store_name} --force`"
            )
        return message
