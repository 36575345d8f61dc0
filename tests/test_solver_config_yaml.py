"""A malformed solvers/configs/<name>.yaml is one SolverError naming the file, the line and the fix.

The real configs are never touched: CONFIG_DIR is pointed at a copy in a tmp folder.
"""
from __future__ import annotations

import shutil

import pytest

import solvers
from solvers import base
from solvers.base import SolverError, load_config


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    copy = tmp_path / "configs"
    shutil.copytree(base.CONFIG_DIR, copy)
    monkeypatch.setattr(base, "CONFIG_DIR", copy)
    return copy


def test_broken_yaml_names_file_line_and_fix(config_dir):
    (config_dir / "dps.yaml").write_text("params:\n  zeta:\n    value: [1.0, 2.0\n    source: x\n")
    with pytest.raises(SolverError) as err:
        load_config("dps")
    msg = str(err.value)
    assert msg.startswith(f"{config_dir / 'dps.yaml'}: not valid YAML (line 4, column 11): ")
    assert msg.endswith(f"; fix the file or `git checkout {config_dir / 'dps.yaml'}` it") and "\n" not in msg
    assert "expected ',' or ']'" in msg and "while parsing a flow sequence" in msg


def test_broken_yaml_reaches_solvers_get(config_dir):
    (config_dir / "spgd.yaml").write_text("params:\n\tlr: 1\n")  # a tab cannot start a token
    from priors.gaussian import embedded
    with pytest.raises(SolverError, match=r"spgd.yaml: not valid YAML \(line 2, column 1\): found character "
                                          r"'\\t' that cannot start any token"):
        solvers.get("spgd", embedded(image_size=8))


def test_a_config_that_is_not_a_mapping(config_dir):
    (config_dir / "dps.yaml").write_text("- just\n- a list\n")
    with pytest.raises(SolverError, match=r"dps.yaml: expected a mapping with 'params'.*got a list"):
        load_config("dps")


def test_shipped_configs_are_shown_relative_to_the_repository():
    assert load_config("dps")["params"]  # the real file parses
    assert base._shown_path(base.CONFIG_DIR / "dps.yaml") == "solvers/configs/dps.yaml"
