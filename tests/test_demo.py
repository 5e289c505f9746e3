"""The end-to-end demo: shipped slides and a synthetic PLISM study through every flow to one report."""

from __future__ import annotations

import re

import pytest

from tests.flow_helpers import run_cli


@pytest.mark.slow
def test_the_demo_runs_the_whole_pipeline_to_a_report_with_every_section(tmp_path, prefect_api):
    out = tmp_path / "demo"
    process = run_cli("--out", str(out), api_url=prefect_api, module="flows.demo")
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, output[-5000:]
    page_path = out / "report" / "index.html"
    assert f"open {page_path}" in output
    page = page_path.read_text()
    for section in ("Summary", "Figures", "All statistics", "QC pictures of the registration and tiling stages"):
        assert f"<h2>{section}" in page
    for picture in re.findall(r'src="([^"]+)"', page):
        assert (out / "report" / picture).is_file(), picture
    assert "qc/GIVH_AT2.png" in page and "qc/CMU-1-Small-Region.png" in page  # registration and tiling QC
    assert "tiny-student" in page and "tiny-teacher" in page
    assert sorted(p.name for p in (out / "embeddings").iterdir()) == [
        "plism-tiny-student.zarr",
        "plism-tiny-teacher.zarr",
        "tiles-tiny-student.zarr",
        "tiles-tiny-teacher.zarr",
    ]
