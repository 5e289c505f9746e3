"""Slide lists: ids from file names, DICOM folders, CSV columns."""

from __future__ import annotations

from pathlib import Path

import pytest

from tiling.slide_list import list_slides, slide_id_from_path


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("TCGA-AA-3512-01Z-00-DX1.0a1b2c3d-1111-2222-3333-444455556666.svs", "TCGA-AA-3512-01Z-00-DX1"),
        ("tcga-a7-a0ce-01a-01-ts1.svs", "TCGA-A7-A0CE-01A-01-TS1"),
        ("OS-1-detail.ome.tif", "OS-1-detail"),
        ("case 12.ndpi", "case 12"),
    ],
)
def test_slide_ids_from_file_names(name, expected):
    assert slide_id_from_path(Path("/data") / name) == expected


def test_folder_listing_counts_a_dicom_slide_once_and_skips_other_files(tmp_path):
    (tmp_path / "a.svs").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.svs").write_bytes(b"x")
    dicom = tmp_path / "nested" / "S-42"
    dicom.mkdir(parents=True)
    for level in range(3):
        (dicom / f"level-{level}.dcm").write_bytes(b"x")
    specs, rejected = list_slides(tmp_path)
    assert [(s.slide_id, s.path.name) for s in specs] == [("a", "a.svs"), ("S-42", "level-0.dcm")]
    assert rejected == []


def test_csv_paths_are_relative_to_the_csv_and_mpp_overrides_the_global_one(tmp_path):
    (tmp_path / "x.svs").write_bytes(b"x")
    csv = tmp_path / "list.csv"
    csv.write_text("path,slide_id,mpp\nx.svs,first,0.25\nx.svs,second,\nx.svs,third,-1\n")
    specs, rejected = list_slides(csv, mpp_override_um=0.5)
    assert [(s.slide_id, s.path, s.mpp_override_um) for s in specs] == [
        ("first", tmp_path / "x.svs", 0.25), ("second", tmp_path / "x.svs", 0.5)
    ]
    assert [r.slide_id for r in rejected] == ["third"] and "not a positive number" in str(rejected[0].error)
