"""bench/results_folder.py: a results folder that cannot be written is one line naming it and the fix."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.results_folder import check_results_dir

FIX = "choose another with --results DIR or RESTOREBENCH_RESULTS"


def test_creates_and_probes_a_writable_folder(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_results_dir(target) == target and target.is_dir()
    assert list(target.iterdir()) == []  # the probe file is removed
    assert check_results_dir(target) == target  # existing folder


def test_missing_folder_without_create(tmp_path):
    assert check_results_dir(tmp_path / "absent", create=False) == tmp_path / "absent"
    assert not (tmp_path / "absent").exists()


def test_path_is_a_file(tmp_path):
    f = tmp_path / "results"
    f.write_text("x")
    with pytest.raises(BenchError) as err:
        check_results_dir(f)
    assert str(err.value) == f"results folder {f} is not writable (it is a file, not a folder): {FIX}"


def test_parent_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "sub"
    with pytest.raises(BenchError) as err:
        check_results_dir(target)
    assert str(err.value) == f"results folder {target} is not writable (a parent of it is a file): {FIX}"


def test_permission_denied(tmp_path, monkeypatch):
    real_open = os.open

    def denied(path, *args, **kwargs):
        if ".write-probe-" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(BenchError) as err:
        check_results_dir(tmp_path)
    assert str(err.value) == f"results folder {tmp_path} is not writable (Permission denied): {FIX}"


def test_folder_that_cannot_be_created(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(BenchError, match=r"is not writable \(Permission denied\): choose another"):
        check_results_dir(tmp_path / "new")
