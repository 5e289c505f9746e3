"""Totals of a tiling run, for the console and the Prefect UI.

Only counts and the failed slides are kept, never per-tile data, so the
summary of a 6,000-slide run stays small.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from storage.manifest import DONE, FAILED, SKIPPED, SlideRecord


@dataclass
class RunSummary:
    started: float
    statuses: Counter = field(default_factory=Counter)
    tiles: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, record: SlideRecord) -> None:
        self.statuses[record.status] += 1
        self.tiles += record.n_tiles
        if record.status == FAILED:
            self.failures.append((record.slide_id, record.error))

    def count(self, status: str) -> int:
        return self.statuses[status]

    def finish(self) -> None:
        self.seconds = time.perf_counter() - self.started

    def totals(self) -> dict:
        return {
            "slides": sum(self.statuses.values()),
            DONE: self.count(DONE),
            FAILED: self.count(FAILED),
            SKIPPED: self.count(SKIPPED),
            "tiles": self.tiles,
            "seconds": round(self.seconds, 2),
            "tiles_per_second": round(self.tiles / self.seconds, 1) if self.seconds else 0.0,
            "failures": [{"slide_id": slide_id, "error": error} for slide_id, error in self.failures],
        }

    def to_text(self) -> str:
        totals = self.totals()
        lines = [
            f"slides {totals['slides']}: {totals[DONE]} tiled, {totals[SKIPPED]} already complete, "
            f"{totals[FAILED]} failed",
            f"tiles written {totals['tiles']} in {totals['seconds']} s ({totals['tiles_per_second']} tiles/s)",
        ]
        lines += [f"  failed {slide_id}: {error}" for slide_id, error in self.failures]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        totals = self.totals()
        rows = [
            "| slides | tiled | already complete | failed | tiles | seconds | tiles/s |",
            "|---|---|---|---|---|---|---|",
        ]
        rows.append(
            f"| {totals['slides']} | {totals[DONE]} | {totals[SKIPPED]} | {totals[FAILED]} | {totals['tiles']} "
            f"| {totals['seconds']} | {totals['tiles_per_second']} |"
        )
        if self.failures:
            rows += ["", "| failed slide | error |", "|---|---|"]
            rows += [f"| {slide_id} | {error.replace('|', '/')} |" for slide_id, error in self.failures]
        return "\n".join(rows)
