"""The study layout: conditions parsed from file names, the reference first."""

from __future__ import annotations

import numpy as np
import pytest

from registration.layout import LayoutError, PlismLayout
from tests.conftest import write_tiff

# PLISM's 13 stainings and 7 scanners (the paper keeps GIVH, GMH and HR).
STAININGS = ("GIV", "GIVH", "GM", "GMH", "GV", "GVH", "HR", "HRH", "KR", "KRH", "LM", "LMH", "MY")
SCANNERS = ("AT2", "GT450", "P", "S210", "S360", "S60", "SQ")


@pytest.fixture
def full_study(tmp_path):
    """The 91 PLISM slide names as empty placeholder files (their pixels are never read)."""
    for staining in STAININGS:
        for scanner in SCANNERS:
            (tmp_path / f"{staining}_{scanner}.tif").touch()
    (tmp_path / "notes.txt").write_text("not a slide")
    (tmp_path / "overview-macro.tif").touch()
    return tmp_path


def test_all_91_conditions_are_parsed_with_the_reference_first(full_study):
    layout = PlismLayout.from_folder(full_study)
    assert len(layout.conditions) == 91
    assert layout.reference.name == "GMH_S60"
    assert len(layout.moving) == 90 and all(c.name != "GMH_S60" for c in layout.moving)
    assert layout.stainings == tuple(sorted(STAININGS))
    assert layout.scanners == tuple(sorted(SCANNERS))
    assert layout.missing == ()
    assert [p.name for p in layout.unmatched] == ["overview-macro.tif"]
    assert layout.condition("HR_GT450").path == full_study / "HR_GT450.tif"
    assert layout.reference.mpp_um is None  # placeholders record no pixel size


def test_the_papers_21_conditions_and_another_reference(full_study):
    layout = PlismLayout.from_folder(full_study, stainings=("GIVH", "HR"), reference=("GMH", "AT2"))
    assert len(layout.conditions) == 21
    assert layout.stainings == ("GIVH", "GMH", "HR")
    assert layout.reference.name == "GMH_AT2"


def test_a_lab_naming_scheme_through_a_pattern(tmp_path):
    for name in ("study7-scanA-HE1.svs", "study7-scanB-HE1.svs", "study7-scanA-HE2.svs"):
        (tmp_path / name).touch()
    layout = PlismLayout.from_folder(
        tmp_path, pattern=r"study7-(?P<scanner>scan[A-Z])-(?P<staining>HE\d)", reference=("HE1", "scanA")
    )
    assert [c.name for c in layout.conditions] == ["HE1_scanA", "HE1_scanB", "HE2_scanA"]
    assert layout.missing == ("HE2_scanB",)


def test_recorded_mpp_is_read_from_each_slide(tmp_path):
    write_tiff(tmp_path / "GMH_S60.tif", np.full((64, 64, 3), 200, np.uint8), 0.2208)
    write_tiff(tmp_path / "GMH_AT2.tif", np.full((64, 64, 3), 200, np.uint8), 0.2527)
    layout = PlismLayout.from_folder(tmp_path)
    assert layout.reference.mpp_um == pytest.approx(0.2208, rel=1e-4)
    assert layout.condition("GMH_AT2").mpp_um == pytest.approx(0.2527, rel=1e-4)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["GMH_AT2.tif", "HR_S60.tif"], "reference condition GMH_S60 is not in"),
        (["GMH_S60.tif", "GMH_S60.svs"], "both condition GMH_S60"),
        (["readme.tif"], "no slide in .* matches"),
    ],
)
def test_unusable_folders_are_refused(tmp_path, names, message):
    for name in names:
        (tmp_path / name).touch()
    with pytest.raises(LayoutError, match=message):
        PlismLayout.from_folder(tmp_path)


def test_a_pattern_without_the_named_groups_is_refused(tmp_path):
    (tmp_path / "GMH_S60.tif").touch()
    with pytest.raises(LayoutError, match="named groups"):
        PlismLayout.from_folder(tmp_path, pattern=r"(\w+)_(\w+)")
