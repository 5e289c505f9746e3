"""Which slide is which condition of a PLISM-style study: staining × scanner.

PLISM names its whole-slide images ``{staining}_{scanner}`` (``GMH_S60``,
``GIVH_AT2``, ``HR_GT450``…): 13 stainings × 7 scanners, of which the paper
keeps 3 stainings (21 slides). The layout is parsed from file names with a
configurable regular expression holding the named groups ``staining`` and
``scanner``, so a lab's own naming works too. One condition is the
reference every other one is registered to (GMH on the Hamamatsu S60 in the
paper).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from registration.config import DEFAULT_PATTERN, DEFAULT_REFERENCE
from tiling.slide import opened_slide
from tiling.slide_list import find_slide_files, slide_id_from_path


class LayoutError(ValueError):
    """The slides do not form a usable study: no reference, duplicates, or nothing matched."""


@dataclass(frozen=True)
class PlismCondition:
    """One slide: a staining scanned on a scanner.

    ``mpp_um`` is the level-0 µm/px its file records, ``None`` when it records
    none (the registration then needs an override).
    """

    staining: str
    scanner: str
    path: Path
    mpp_um: float | None

    @property
    def name(self) -> str:
        return f"{self.staining}_{self.scanner}"


@dataclass(frozen=True)
class PlismLayout:
    """All conditions of a study, the reference first, the others sorted by name.

    Attributes
    ----------
    conditions
        Every condition; ``conditions[0]`` is the reference.
    unmatched
        Slide files whose names the pattern did not match (reported, not used).
    """

    conditions: tuple[PlismCondition, ...]
    unmatched: tuple[Path, ...] = ()

    @property
    def reference(self) -> PlismCondition:
        return self.conditions[0]

    @property
    def moving(self) -> tuple[PlismCondition, ...]:
        """Conditions registered to the reference."""
        return self.conditions[1:]

    @property
    def stainings(self) -> tuple[str, ...]:
        return tuple(sorted({c.staining for c in self.conditions}))

    @property
    def scanners(self) -> tuple[str, ...]:
        return tuple(sorted({c.scanner for c in self.conditions}))

    @property
    def missing(self) -> tuple[str, ...]:
        """``staining_scanner`` names of the full staining × scanner grid that have no slide."""
        present = {c.name for c in self.conditions}
        return tuple(f"{s}_{m}" for s in self.stainings for m in self.scanners if f"{s}_{m}" not in present)

    def condition(self, name: str) -> PlismCondition:
        for condition in self.conditions:
            if condition.name == name:
                return condition
        raise KeyError(f"no condition {name!r}; known: {', '.join(c.name for c in self.conditions)}")

    @classmethod
    def from_folder(
        cls,
        folder: Path | str,
        *,
        pattern: str = DEFAULT_PATTERN,
        reference: tuple[str, str] = DEFAULT_REFERENCE,
        stainings: tuple[str, ...] | None = None,
    ) -> PlismLayout:
        """Parse every slide file of ``folder`` whose name (without extension) matches ``pattern``.

        ``stainings`` keeps only those stainings (the paper's 3 of 13); the
        reference's staining is always kept.

        Raises
        ------
        LayoutError
            When the folder holds no matching slide, two files claim one
            condition, or the reference condition is missing.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise LayoutError(f"{folder} is not a folder of slides")
        regex = re.compile(pattern)
        if not {"staining", "scanner"} <= set(regex.groupindex):
            raise LayoutError(f"pattern {pattern!r} needs the named groups 'staining' and 'scanner'")
        kept_stainings = None if stainings is None else {*stainings, reference[0]}
        found: dict[tuple[str, str], Path] = {}
        unmatched = []
        for path in find_slide_files(folder):
            match = regex.fullmatch(slide_id_from_path(path))
            if match is None:
                unmatched.append(path)
                continue
            key = (match["staining"], match["scanner"])
            if kept_stainings is not None and key[0] not in kept_stainings:
                continue
            if key in found:
                raise LayoutError(f"{found[key].name} and {path.name} are both condition {key[0]}_{key[1]}")
            found[key] = path
        if not found:
            raise LayoutError(f"no slide in {folder} matches {pattern!r}")
        if reference not in found:
            raise LayoutError(f"reference condition {reference[0]}_{reference[1]} is not in {folder}")
        order = [reference, *sorted(k for k in found if k != reference)]
        conditions = tuple(PlismCondition(s, m, found[(s, m)], _recorded_mpp(found[(s, m)])) for s, m in order)
        return cls(conditions, tuple(unmatched))


def _recorded_mpp(path: Path) -> float | None:
    """The level-0 µm/px the file records; ``None`` if none or the file cannot be opened (reported later)."""
    try:
        with opened_slide(path) as backend:
            return backend.mpp_um
    except Exception:  # an unreadable slide fails its own registration task, with the reader's message
        return None
