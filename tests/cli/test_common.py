"""The checks every verb makes before any work (medseg.cli.common, medseg.fsutil.check_output_dir)."""

from __future__ import annotations

import os

import pytest

from medseg.cli.common import check_input, check_output_dir, check_output_file
from medseg.errors import ConfigError


def test_output_folder_checks(tmp_path, monkeypatch):
    f = tmp_path / "file.txt"
    f.write_text("x")
    check_output_dir(tmp_path / "new" / "deeper")          # can be made: fine, nothing created
    assert not (tmp_path / "new").exists()
    with pytest.raises(ConfigError, match="is an existing file; give a folder") as exc:
        check_output_dir(f)
    assert exc.value.code == "output_is_file"
    with pytest.raises(ConfigError, match="is a file, so the folder cannot be made"):
        check_output_dir(f / "sub")
    # a folder we may not write (tests run as root, who may write anywhere: os.access stands in)
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    with pytest.raises(ConfigError, match="is not writable") as exc:
        check_output_dir(tmp_path / "out", "--output")
    assert exc.value.code == "not_writable" and "--output" in str(exc.value)


def test_output_file_and_input_checks(tmp_path):
    with pytest.raises(ConfigError, match="is a folder; give a file name"):
        check_output_file(tmp_path)
    check_output_file(tmp_path / "plan.yaml")
    with pytest.raises(ConfigError, match="--images .* does not exist"):
        check_input(tmp_path / "nope", "--images")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file; expected a folder"):
        check_input(tmp_path / "f", "--dataset", kind="folder")
    check_input(None, "--labels")
