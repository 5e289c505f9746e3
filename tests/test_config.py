"""Tiling parameters load from YAML, take command-line overrides, and reject nonsense."""

from __future__ import annotations

import pydantic
import pytest

from tiling.config import TilingConfig


def test_yaml_sets_nested_fields_and_keeps_paper_defaults(tmp_path):
    path = tmp_path / "tiling.yaml"
    path.write_text("tile_size_px: 256\ntissue:\n  suppress_pen: false\nqc:\n  min_tissue_fraction: 0.5\n")
    config = TilingConfig.from_yaml(path)
    assert (config.tile_size_px, config.tissue.suppress_pen, config.qc.min_tissue_fraction) == (256, False, 0.5)
    assert config.target_mpp_um == 0.5 and config.tissue.mask_mpp_um == 8.0


def test_overrides_replace_only_given_values():
    config = TilingConfig().with_overrides(target_mpp_um=0.25, threads=None)
    assert (config.target_mpp_um, config.threads) == (0.25, 2)


@pytest.mark.parametrize("field", [{"tile_size_px": 0}, {"jpeg_subsampling": "411"}, {"tilesize": 224}])
def test_invalid_or_unknown_fields_are_refused(field):
    with pytest.raises(pydantic.ValidationError):
        TilingConfig(**field)


def test_a_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "tiling.yaml"
    path.write_text("tile_size_px: 256\n  qc: [unclosed\n")
    with pytest.raises(ValueError, match="tiling.yaml: not valid YAML"):
        TilingConfig.from_yaml(path)
