"""What an installed wheel needs at run time lives in the packages, not in tests/."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_demo_samples_are_package_data_equal_to_the_test_slides():
    from flows.demo_flow import CMU_SAMPLE, SAMPLE_SLIDES  # here, not at collection: it loads torch and Prefect

    assert SAMPLE_SLIDES.is_relative_to(REPO / "flows") and CMU_SAMPLE.parent == SAMPLE_SLIDES
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "samples/*" in package_data["flows"]
    for name in ("CMU-1-Small-Region.svs", "OS-1-detail.ome.tif"):
        assert (SAMPLE_SLIDES / name).read_bytes() == (REPO / "tests" / "data" / "slides" / name).read_bytes()
    assert (SAMPLE_SLIDES / "LICENSES.md").is_file()
