"""`vcorr export`: server archive layouts, shards merged, incomplete predictions refused."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vcorr.cli import main
from vcorr.errors import VcorrError
from vcorr.evaluation.records import record_path
from vcorr.report.submission import export_submission
from vcorr.io import read_index_png, write_index_png


def make_predictions(folder: Path, benchmark: str, sequences: dict[str, list[str]], all_sequences, shard=None) -> None:
    """A propagation output as `vcorr propagate` leaves it: PNGs plus the run's record."""
    for sequence, frames in sequences.items():
        for index, frame in enumerate(frames):
            write_index_png(folder / sequence / f"{frame}.png", np.full((4, 6), index % 3, np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": benchmark, "sequences": sequences, "benchmark_sequences": list(all_sequences)}
    record_path(folder, shard).write_text(json.dumps(record))


def test_youtube_vos_archive_has_annotations_at_the_root(tmp_path):
    sequences = {"0a1b": ["00000", "00005"], "ffee": ["00010"]}
    make_predictions(tmp_path / "pred", "ytvos18", sequences, sequences)
    # A frame the server does not want (not in the record) stays out of the archive.
    write_index_png(tmp_path / "pred" / "0a1b" / "00001.png", np.zeros((4, 6), np.uint8))
    summary = export_submission("ytvos18", [tmp_path / "pred"], tmp_path / "sub.zip")
    assert summary == {"sequences": 2, "frames": 3}
    with zipfile.ZipFile(tmp_path / "sub.zip") as archive:
        assert sorted(archive.namelist()) == [
            "Annotations/0a1b/00000.png", "Annotations/0a1b/00005.png", "Annotations/ffee/00010.png",
        ]
        archive.extractall(tmp_path / "unzipped")
    assert read_index_png(tmp_path / "unzipped" / "Annotations" / "0a1b" / "00005.png").max() == 1


def test_davis_test_dev_archive_has_sequences_at_the_root_and_merges_shards(tmp_path):
    everything = ["aerobatics", "bike-trial", "burnout"]
    make_predictions(tmp_path / "s0", "davis17dev", {"aerobatics": ["00000", "00001"]}, everything, (0, 2))
    make_predictions(tmp_path / "s1", "davis17dev", {"bike-trial": ["00000"], "burnout": ["00000"]}, everything, (1, 2))
    assert main(["export", "--benchmark", "davis17dev", "--predictions", str(tmp_path / "s0"), str(tmp_path / "s1"),
                 "--out", str(tmp_path / "dev.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "dev.zip") as archive:
        assert sorted(archive.namelist()) == [
            "aerobatics/00000.png", "aerobatics/00001.png", "bike-trial/00000.png", "burnout/00000.png",
        ]


def test_a_missing_shard_or_frame_is_refused_and_no_archive_written(tmp_path, capsys):
    everything = ["a", "b"]
    make_predictions(tmp_path / "s0", "davis17dev", {"a": ["00000"]}, everything, (0, 2))
    out = tmp_path / "dev.zip"
    assert main(["export", "--benchmark", "davis17dev", "--predictions", str(tmp_path / "s0"), "--out", str(out)]) == 2
    assert "cover 1 of the 2 sequences" in capsys.readouterr().err and not out.exists()

    make_predictions(tmp_path / "s1", "davis17dev", {"b": ["00000", "00001"]}, everything, (1, 2))
    (tmp_path / "s1" / "b" / "00001.png").unlink()
    with pytest.raises(VcorrError, match=r"s1: 1 sequence\(s\) incomplete, e\.g\. .*/b lacks 1 frame\(s\) such as 00001\.png"):
        export_submission("davis17dev", [tmp_path / "s0", tmp_path / "s1"], out)
    assert not out.exists() and not list(tmp_path.glob(".dev.zip*"))


def test_empty_or_foreign_folders_are_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VcorrError, match=r"empty: no \.vcorr-propagate\*\.json record"):
        export_submission("ytvos19", [tmp_path / "empty"], tmp_path / "x.zip")
    with pytest.raises(VcorrError, match=r"absent: predictions folder missing"):
        export_submission("ytvos19", [tmp_path / "absent"], tmp_path / "x.zip")
    make_predictions(tmp_path / "davis", "davis17dev", {"a": ["00000"]}, ["a"])
    with pytest.raises(VcorrError, match=r"predictions for benchmark 'davis17dev', not 'ytvos19'"):
        export_submission("ytvos19", [tmp_path / "davis"], tmp_path / "x.zip")
    make_predictions(tmp_path / "none", "ytvos19", {}, [])
    with pytest.raises(VcorrError, match=r"no predicted frames to export"):
        export_submission("ytvos19", [tmp_path / "none"], tmp_path / "x.zip")
    with pytest.raises(VcorrError, match=r"'davis17' is not scored by a server"):
        export_submission("davis17", [tmp_path / "davis"], tmp_path / "x.zip")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / ".vcorr-propagate.json").write_text("{")
    with pytest.raises(VcorrError, match=r"bad/\.vcorr-propagate\.json: not a vcorr propagation record"):
        export_submission("ytvos19", [tmp_path / "bad"], tmp_path / "x.zip")
