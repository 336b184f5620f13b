"""Released weight files are read as plain tensor state dicts only: a malicious pickle executes nothing."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from videolavit.cli import main
from videolavit.convert.checkpoint import read_state_dict
from videolavit.errors import ReleaseFormatError


class _TouchOnLoad:
    """Unpickling this calls Path.touch(marker): what a hostile checkpoint would do with os.system instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _hostile(path: Path, marker: Path, zip_format: bool) -> Path:
    payload = {"encoder.in_proj.weight": torch.zeros(2, 2), "x": _TouchOnLoad(marker)}
    if zip_format:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch.save", "raw-pickle"])
def test_a_malicious_pickle_is_refused_by_name_and_runs_nothing(tmp_path, capsys, zip_format):
    release, marker = tmp_path / "release", tmp_path / "pwned"
    release.mkdir()
    _hostile(release / "motion_tokenizer.bin", marker, zip_format)
    rc = main(["import-official", str(release), "--out", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(release / "motion_tokenizer.bin") in err and "refused" in err
    assert not marker.exists()
    assert not (tmp_path / "out" / "motion_tokenizer").exists()
    (failed,) = json.loads((tmp_path / "out" / "import_report.json").read_text())["parts"]  # it stopped there
    assert failed["part"] == "motion_tokenizer" and failed["status"] == "failed" and "refused" in failed["detail"]


def test_the_crafted_file_really_is_hostile(tmp_path):
    """Guards the test above: an ordinary unpickler does run the payload (so 'no marker' means something)."""
    marker = tmp_path / "pwned"
    path = _hostile(tmp_path / "evil.bin", marker, zip_format=False)
    pickle.loads(path.read_bytes())
    assert marker.exists()


def test_nested_checkpoints_and_non_tensor_values_are_refused(tmp_path):
    nested = tmp_path / "nested.bin"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, nested)
    with pytest.raises(ReleaseFormatError, match=r"nested\.bin.*not a plain tensor state dict"):
        read_state_dict(nested)
    listed = tmp_path / "list.bin"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ReleaseFormatError, match=r"list\.bin.*holds a list"):
        read_state_dict(listed)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ReleaseFormatError, match=r"garbage\.bin"):
        read_state_dict(garbage)


def test_a_plain_state_dict_reads_back(tmp_path):
    path = tmp_path / "ok.bin"
    torch.save({"a": torch.arange(3.0), "b": torch.ones(2, 2, dtype=torch.bfloat16)}, path)
    state = read_state_dict(path)
    assert torch.equal(state["a"], torch.arange(3.0)) and state["b"].dtype == torch.bfloat16
