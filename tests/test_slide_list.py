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


def test_csv_paths_are_relative_to_the_csv_and_a_row_mpp_wins_over_the_global_one(tmp_path):
    (tmp_path / "x.svs").write_bytes(b"x")
    csv = tmp_path / "list.csv"
    csv.write_text("path,slide_id,mpp\nx.svs,first,0.25\nx.svs,second,\nx.svs,third,-1\n")
    specs, rejected = list_slides(csv, mpp_override_um=0.5)
    assert [(s.slide_id, s.path, s.mpp_override_um) for s in specs] == [
        ("first", tmp_path / "x.svs", 0.25),
        ("second", tmp_path / "x.svs", 0.5),
    ]
    assert [r.slide_id for r in rejected] == ["third"] and "not a positive number" in str(rejected[0].error)


@pytest.mark.parametrize(
    "slide_id", ["zarr.json", "ZARR.JSON", "staging", "Slides", "done", "run.lock", "rejected-3-0123456789ab"]
)
def test_ids_that_are_the_stores_own_names_are_refused_per_row(tmp_path, slide_id):
    (tmp_path / "x.svs").write_bytes(b"x")
    csv = tmp_path / "list.csv"
    csv.write_text(f"path,slide_id\nx.svs,{slide_id}\nx.svs,good\n")
    specs, rejected = list_slides(csv)
    assert [s.slide_id for s in specs] == ["good"]
    assert [r.slide_id for r in rejected] == [slide_id] and "name the store uses for itself" in str(rejected[0].error)


def test_a_file_named_like_the_store_metadata_and_hidden_ids_are_refused(tmp_path):
    (tmp_path / "zarr.json.svs").write_bytes(b"x")
    (tmp_path / "fine.svs").write_bytes(b"x")
    specs, rejected = list_slides(tmp_path)
    assert [s.slide_id for s in specs] == ["fine"] and [r.slide_id for r in rejected] == ["zarr.json"]
    csv = tmp_path / "list.csv"
    csv.write_text("path,slide_id\nfine.svs,.hidden\n")
    assert "not allowed" in str(list_slides(csv)[1][0].error)


def test_ids_differing_only_in_case_are_refused_for_both_rows(tmp_path):
    (tmp_path / "x.svs").write_bytes(b"x")
    csv = tmp_path / "list.csv"
    csv.write_text("path,slide_id\nx.svs,Case-1\nx.svs,case-1\nx.svs,case-2\n")
    specs, rejected = list_slides(csv)
    assert [s.slide_id for s in specs] == ["case-2"]
    assert sorted(r.slide_id for r in rejected) == ["Case-1", "case-1"]
    assert all("compared without case" in str(r.error) for r in rejected)


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    (tmp_path / "x.svs").write_bytes(b"x")
    csv = tmp_path / "excel.csv"
    csv.write_bytes("\ufeffpath,slide_id\r\nx.svs,first\r\n".encode("utf-8"))
    specs, rejected = list_slides(csv)
    assert [s.slide_id for s in specs] == ["first"] and rejected == []


def test_a_header_only_csv_and_an_empty_folder_say_so(tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_text("path,slide_id,mpp\n")
    with pytest.raises(ValueError, match="header but no rows"):
        list_slides(csv)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no slide files"):
        list_slides(empty)


def test_broken_symbolic_links_are_reported_not_skipped(tmp_path):
    (tmp_path / "real.svs").write_bytes(b"x")
    (tmp_path / "gone.svs").symlink_to(tmp_path / "moved-away.svs")
    specs, rejected = list_slides(tmp_path)
    assert [s.slide_id for s in specs] == ["real"]
    assert [r.slide_id for r in rejected] == ["gone"]
    assert "broken symbolic link" in str(rejected[0].error) and "moved-away.svs" in str(rejected[0].error)


def test_mpp_override_fills_in_and_mpp_replace_replaces(tmp_path):
    (tmp_path / "x.svs").write_bytes(b"x")
    csv = tmp_path / "list.csv"
    csv.write_text("path,slide_id,mpp\nx.svs,a,0.3\nx.svs,b,\n")
    specs, _ = list_slides(csv, mpp_override_um=0.5, mpp_replace_um=0.25)
    assert [(s.mpp_override_um, s.mpp_replace_um) for s in specs] == [(0.3, 0.25), (0.5, 0.25)]


def test_one_slide_file_is_a_list_of_one(tmp_path):
    """``--slides scan.svs`` tiles that slide; it was read as a CSV and failed to decode."""
    slide = tmp_path / "TCGA-AA-3512-01Z-00-DX1.0a1b2c3d.svs"
    slide.write_bytes(b"\xff\xd8 not text")
    specs, rejected = list_slides(slide)
    assert [(s.path, s.slide_id) for s in specs] == [(slide, slide_id_from_path(slide))] and not rejected
