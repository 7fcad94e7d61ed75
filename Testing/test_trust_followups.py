"""Gaps closed after units and batch safety came in: each test sets up what a user meets.

A training configuration's error names its file; landmark files in other units than their
scan train and calibrate as their units say; ``palnet evaluate`` pairs the files that
``palnet predict`` mirrors into sub-folders; an interrupted write never leaves a file that
looks like landmarks; and the output folder's lock lives in its own module.
"""
import importlib.util
import json
import os
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from palnet import batch, folderlock
from palnet.batch import find_meshes, output_paths
from palnet.cli import main
from palnet.errors import PalnetError
from palnet.landmark_io import LANDMARK_FORMATS, atomic_write, landmark_format, read_landmarks, write_landmarks
from palnet.metrics import evaluate_dirs, format_report
from palnet.resources import sample_landmarks_path, sample_scan_path
from palnet.datatypes import Landmarks, Mesh

ROOT = Path(__file__).resolve().parent.parent


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def _landmarks(seed: int, units: str = "mm") -> Landmarks:
    rng = np.random.default_rng(seed)
    return Landmarks(["n", "prn", "sn", "ls", "li"], rng.normal(scale=30.0, size=(5, 3)), units=units)


# ---------------------------------------------------------------- palnet train --config

@pytest.mark.parametrize("extra", [[], ["--augment", "1"]], ids=["config", "config+augment"])
def test_a_bad_training_setting_names_the_config_file_and_key(tmp_path, capsys, extra):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"epochs": "lots"}))
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "m.npz"), "--config", str(cfg)] + extra) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(cfg) in line and "'epochs'" in line and "'lots'" in line, line
    cfg.write_text("{\"epochs\": ")
    assert main(["train", str(tmp_path), "-o", str(tmp_path / "m.npz"), "--config", str(cfg)] + extra) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(cfg) in line and "not valid JSON" in line, line


# ---------------------------------------------------------------- units of training and calibration pairs

def test_training_landmarks_are_read_in_the_units_their_file_states(tmp_path):
    """A scan in mm annotated in a file that states cm trains exactly like one annotated in mm."""
    from palnet.dataset import preprocess_pair
    from palnet.modelfile import load_model
    from palnet.resources import default_model_path
    template = np.asarray(load_model(default_model_path()).metadata["template"], dtype=np.float64)
    truth = read_landmarks(sample_landmarks_path(), "mm")
    write_landmarks(truth.in_units("cm"), tmp_path / "face_cm.mrk.json")
    assert read_landmarks(tmp_path / "face_cm.mrk.json").units == "cm"
    for copy in (0, 1):  # the scan itself, and an augmented copy (converted to mm before it is altered)
        in_mm = preprocess_pair(sample_scan_path(), sample_landmarks_path(), truth.labels, template, 1.5, copy=copy)
        in_cm = preprocess_pair(sample_scan_path(), tmp_path / "face_cm.mrk.json", truth.labels, template, 1.5,
                                copy=copy)
        np.testing.assert_allclose(in_cm[1], in_mm[1], atol=1e-6)
        np.testing.assert_array_equal(in_cm[0], in_mm[0])


def _calibration_tool():
    spec = importlib.util.spec_from_file_location("calibrate_confidence_tool",
                                                  ROOT / "tools" / "calibrate_confidence.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_confidence_calibration_measures_errors_in_mm(tmp_path, monkeypatch):
    """A scan predicted in cm against a truth in mm: the errors the table learns from are in mm."""
    tool = _calibration_tool()
    truth = _landmarks(0, "mm")
    write_landmarks(truth, tmp_path / "s1.mrk.json")
    answer = truth.in_units("cm")
    answer.points[4] += [0.3, 0.0, 0.0]  # 3 mm off, the least sure: outside 2 mm
    saved = {}
    monkeypatch.setattr(tool, "load_model", lambda path: types.SimpleNamespace(
        metadata={"protocol": {"labels": truth.labels}}))
    monkeypatch.setattr(tool, "save_model", lambda path, model, half: saved.update(model.metadata))
    monkeypatch.setattr(tool, "find_scan_pairs", lambda data: [("s1", tmp_path / "s1.ply", tmp_path / "s1.mrk.json")])
    monkeypatch.setattr(tool, "read_mesh", lambda path: None)
    monkeypatch.setattr(tool, "predict", lambda mesh, model: types.SimpleNamespace(
        landmarks=answer, spread_mm=np.arange(1.0, 6.0)))
    monkeypatch.setattr("sys.argv", ["calibrate_confidence.py", "model.npz", str(tmp_path)])
    tool.main()
    table = saved["confidence"]
    assert table["n"] == 5 and table["p_within_2mm"] == [1.0, 1.0, 1.0, 1.0, 0.0]
    np.testing.assert_allclose(tool.errors_mm(types.SimpleNamespace(landmarks=answer), truth), [0, 0, 0, 0, 3],
                               atol=1e-9)


# ---------------------------------------------------------------- palnet evaluate on palnet predict's folders

def _data_set(data: Path, layout: str):
    """Meshes (empty files: only their names matter here) and their true landmarks, as users keep them."""
    if layout == "flat":
        scans = {"S01": "S01.ply", "S02": "S02.ply"}
        marks = {"S01": "S01.mrk.json", "S02": "S02.mrk.json"}
    elif layout == "synth":  # palnet synth: ID/scan.ply + ID/landmarks.mrk.json
        scans = {"S01": "S01/scan.ply", "S02": "S02/scan.ply"}
        marks = {"S01": "S01/landmarks.mrk.json", "S02": "S02/landmarks.mrk.json"}
    else:  # nested sub-folders with scans of the same name, one in a generic-name folder
        scans = {"a": "a/face.ply", "b": "b/face.ply", "c": "b/c/S05/scan.ply"}
        marks = {"a": "a/face.mrk.json", "b": "b/face/landmarks.mrk.json", "c": "b/c/S05/landmarks.mrk.json"}
    for seed, (k, name) in enumerate(scans.items()):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_bytes(b"")
        (data / marks[k]).parent.mkdir(parents=True, exist_ok=True)
        write_landmarks(_landmarks(seed), data / marks[k])
    return scans, marks


@pytest.mark.parametrize("layout", ["flat", "synth", "nested"])
def test_evaluate_pairs_predict_outputs_with_the_data_folder(tmp_path, layout, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    scans, marks = _data_set(data, layout)
    meshes = find_meshes([str(data)])
    offsets = {}
    for k, (mesh, target) in enumerate(zip(meshes, output_paths(meshes, [str(data)], out, "mrk.json"))):
        scan = next(s for s, name in scans.items() if data / name == mesh)
        truth = read_landmarks(data / marks[scan])
        offsets[scan] = float(k + 1)  # each scan its own error: pairing a scan with another's truth shows
        target.parent.mkdir(parents=True, exist_ok=True)
        write_landmarks(Landmarks(truth.labels, truth.points + [offsets[scan], 0, 0], units="mm").in_units("cm"),
                        target)
    batch.write_summary([], out / batch.SUMMARY_NAME)
    report = evaluate_dirs(out, data)
    assert report["n_scans"] == len(scans)
    assert report["unmatched_truth"] == [] and report["unmatched_pred"] == [] and report["ambiguous"] == []
    errors = sorted(round(s["pointwise_mm"], 6) for s in report["per_scan"])
    assert errors == sorted(offsets.values())
    assert main(["evaluate", "--pred", str(out), "--truth", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_scans"] == len(scans)


def test_predict_then_evaluate_with_same_named_scans_in_sub_folders(tmp_path, capsys):
    """The real commands: two scans named face in two folders, the second moved 60 mm."""
    from palnet.mesh_io import read_mesh, write_mesh
    data, out = tmp_path / "data", tmp_path / "out"
    face, truth = read_mesh(sample_scan_path()), read_landmarks(sample_landmarks_path())
    for name, shift in (("a", 0.0), ("b", 60.0)):
        (data / name).mkdir(parents=True)
        write_mesh(Mesh(face.vertices + [shift, 0, 0], face.triangles), data / name / "face.ply")
        write_landmarks(Landmarks(truth.labels, truth.points + [shift, 0, 0], units=truth.units),
                        data / name / "face.mrk.json")
    assert main(["predict", str(data), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(out), "--truth", str(data), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(s["scan"] for s in report["per_scan"]) == ["a/face", "b/face"]
    assert max(s["pointwise_mm"] for s in report["per_scan"]) < 5.0  # each against its own truth
    assert not report["unmatched_truth"] and not report["unmatched_pred"] and not report["ambiguous"]


def test_evaluate_falls_back_to_scan_names_and_reports_what_it_cannot_pair(tmp_path):
    truth, pred = tmp_path / "truth", tmp_path / "pred"
    true = {"S01": _landmarks(1), "S02": _landmarks(2), "face_a": _landmarks(3), "face_b": _landmarks(4)}
    for sub in ("S01", "study", "a", "b", "lost"):
        (truth / sub).mkdir(parents=True)
    write_landmarks(true["S01"], truth / "S01" / "landmarks.mrk.json")
    write_landmarks(true["S02"], truth / "study" / "S02.mrk.json")
    for sub in ("a", "b"):
        write_landmarks(true["face_" + sub], truth / sub / "face.mrk.json")
    write_landmarks(_landmarks(5), truth / "lost" / "S09.fcsv")
    pred.mkdir()
    write_landmarks(true["S01"], pred / "S01.mrk.json")  # ID/landmarks.mrk.json's prediction: ID.mrk.json
    write_landmarks(true["S02"], pred / "S02.csv")  # laid out differently: paired by its scan name
    write_landmarks(true["face_a"], pred / "face.txt")  # a/face or b/face? not guessed
    write_landmarks(_landmarks(6), pred / "extra.mrk.json")
    report = evaluate_dirs(pred, truth)
    assert sorted(s["scan"] for s in report["per_scan"]) == ["S01", "S02"]
    assert report["pointwise_mm"] == pytest.approx(0.0, abs=1e-9)
    assert report["unmatched_truth"] == ["lost/S09"] and report["unmatched_pred"] == ["extra"]
    assert report["ambiguous"] == [{"scan": "face", "truth": ["a/face.mrk.json", "b/face.mrk.json"],
                                    "pred": ["face.txt"]}]
    text = format_report(report)
    lines = [line for line in text.splitlines() if "face.txt" in line]
    assert len(lines) == 1 and "a/face.mrk.json" in lines[0] and "b/face.mrk.json" in lines[0]
    assert sum("lost/S09" in line for line in text.splitlines()) == 1
    # nothing at all to pair: one line naming both folders
    with pytest.raises(PalnetError) as info:
        evaluate_dirs(truth / "lost", pred)
    assert str(truth / "lost") in str(info.value) and str(pred) in str(info.value)


def test_predictions_written_inside_the_data_folder_are_not_taken_for_truth(tmp_path):
    data = tmp_path / "data"
    for name in ("S01", "S02"):
        (data / name).mkdir(parents=True)
        write_landmarks(_landmarks(int(name[-1])), data / name / "landmarks.mrk.json")
    (data / "out").mkdir()
    for name in ("S01", "S02"):
        shutil.copy(data / name / "landmarks.mrk.json", data / "out" / (name + ".mrk.json"))
    report = evaluate_dirs(data / "out", data)
    assert report["n_scans"] == 2 and report["unmatched_truth"] == [] and report["ambiguous"] == []


# ---------------------------------------------------------------- temporary files

@pytest.mark.parametrize("name", ["face.mrk.json", "face.json", "face.fcsv", "face.csv", "face.txt",
                                  batch.SUMMARY_NAME])
def test_a_write_cut_short_leaves_nothing_that_looks_like_landmarks(tmp_path, name):
    from palnet.mesh_io import find_landmark_files, find_scan_pairs
    (tmp_path / "face.ply").write_bytes(b"")
    seen = {}

    def killed(tmp):  # what a kill -9 during the write leaves: the temporary file, half written
        Path(tmp).write_text("{\"markups\": [")
        seen["name"] = os.path.basename(tmp)
        seen["found"] = find_landmark_files(tmp_path)
        seen["pairs"] = find_scan_pairs(tmp_path)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / name, killed)
    tmp = seen["name"]
    assert tmp.startswith("." + name + ".") and seen["found"] == [] and seen["pairs"] == []
    for shown in (tmp, tmp.lstrip(".")):  # hidden, and not a landmark file where hidden files show either
        with pytest.raises(PalnetError):
            landmark_format(shown)
    assert not list(tmp_path.glob(".*"))  # an ordinary error or interruption removes it


def test_other_writers_keep_their_extension_last(tmp_path):
    seen = []
    atomic_write(tmp_path / "face.ply", lambda tmp: (seen.append(tmp), Path(tmp).write_bytes(b"ply")))
    assert seen[0].endswith(".tmp.ply") and (tmp_path / "face.ply").read_bytes() == b"ply"
    assert set(LANDMARK_FORMATS) == {"mrk.json", "fcsv", "csv", "txt"}  # the cases above cover every format


# ---------------------------------------------------------------- the output folder's lock

def test_the_lock_lives_in_its_own_module(tmp_path):
    assert batch.LOCK_NAME == folderlock.LOCK_NAME == ".palnet.lock"
    lock = folderlock.take_lock(tmp_path)
    assert lock == tmp_path / folderlock.LOCK_NAME and lock.read_text() == "{}\n".format(os.getpid())
    with pytest.raises(PalnetError, match="this one"):
        folderlock.take_lock(tmp_path)
    folderlock.release_lock(lock)
    assert not lock.exists()
    assert not [n for n in ("_take_lock", "_lock_owner", "_remove_stale_lock", "_release_lock", "_pid_alive")
                if hasattr(batch, n)]
