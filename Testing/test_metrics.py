"""palnet.metrics: point-wise and distance-wise errors, tables, SDR, directory pairing."""
import importlib
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from palnet import Landmarks, PalnetError
from palnet import metrics
from palnet.metrics import (distancewise_error, distancewise_errors, evaluate_arrays,
                            evaluate_dirs, format_report, pointwise_errors)


class FakeProtocol:
    """Stands in for palnet.protocol.Protocol: labels, region_of, regions."""

    def __init__(self, regions):  # {region: [labels]}
        self._regions = dict(regions)
        self.labels = [lab for labs in self._regions.values() for lab in labs]

    @property
    def regions(self):
        return list(self._regions)

    def region_of(self, label):
        for region, labs in self._regions.items():
            if label in labs:
                return region
        raise KeyError(label)


def random_face(rng, n_scans=4, n_landmarks=6):
    return rng.normal(scale=30.0, size=(n_scans, n_landmarks, 3))


LABELS6 = ["a", "b", "c", "d", "e", "f"]


@pytest.fixture(autouse=True)
def no_default_protocol(monkeypatch):
    """Array tests must not depend on the shipped protocol: protocol=None means 'all other'."""
    monkeypatch.setitem(sys.modules, "palnet.protocol", None)


# --- array level --------------------------------------------------------------

def test_set_against_itself_is_zero():
    truth = random_face(np.random.default_rng(0))
    report = evaluate_arrays(truth.copy(), truth, LABELS6)
    assert report["pointwise_mm"] == 0.0
    assert report["distancewise_mm"] == 0.0
    assert report["sdr"] == {"2mm": 1.0, "3mm": 1.0, "4mm": 1.0}
    assert report["missing"] == 0
    assert report["n_scans"] == 4 and report["n_landmarks"] == 6


def test_rigid_shift_of_one_mm():
    truth = random_face(np.random.default_rng(1))
    pred = truth + np.array([0.6, 0.0, 0.8])  # |t| = 1 mm, the same for all landmarks
    report = evaluate_arrays(pred, truth, LABELS6)
    assert report["pointwise_mm"] == pytest.approx(1.0, abs=1e-12)
    assert report["distancewise_mm"] == pytest.approx(0.0, abs=1e-12)
    for row in report["per_landmark"].values():
        assert row["mean"] == pytest.approx(1.0) and row["std"] == pytest.approx(0.0, abs=1e-12)
    for scan in report["per_scan"]:
        assert scan["pointwise_mm"] == pytest.approx(1.0)
        assert scan["distancewise_mm"] == pytest.approx(0.0, abs=1e-12)


def test_distancewise_hand_computed():
    truth = np.array([[0.0, 0, 0], [3, 0, 0], [0, 4, 0]])
    pred = np.array([[0.0, 0, 0], [6, 0, 0], [0, 4, 0]])
    # pairs: (0,1) 6 vs 3 -> 3; (0,2) 4 vs 4 -> 0; (1,2) sqrt(52) vs 5
    expected = (3.0 + 0.0 + (np.sqrt(52.0) - 5.0)) / 3.0
    assert distancewise_error(pred, truth) == pytest.approx(expected)
    assert np.allclose(pointwise_errors(pred, truth), [0.0, 3.0, 0.0])
    report = evaluate_arrays(pred[None], truth[None], ["n", "l", "r"])
    assert report["pointwise_mm"] == pytest.approx(1.0)
    assert report["distancewise_mm"] == pytest.approx(expected)


def constructed_case():
    """2 scans, 4 landmarks, each moved along x by a chosen error."""
    truth = np.random.default_rng(2).normal(scale=20.0, size=(2, 4, 3))
    err = np.array([[1.0, 2.5, 3.5, 5.0],
                    [1.0, 2.0, 4.5, 3.0]])
    pred = truth.copy()
    pred[..., 0] += err
    return pred, truth, err


def test_per_landmark_region_and_sdr():
    pred, truth, err = constructed_case()
    protocol = FakeProtocol({"B": ["l2"], "A": ["l0", "l1"], "C": ["unused"]})
    report = evaluate_arrays(pred, truth, ["l0", "l1", "l2", "l3"], protocol=protocol,
                             scan_ids=["s1", "s2"])
    means = [1.0, 2.25, 4.0, 4.0]
    assert report["pointwise_mm"] == pytest.approx(np.mean(means))
    # regions in the protocol's order, regions without landmarks left out, 'other' last
    assert list(report["per_region"]) == ["B", "A", "other"]
    assert report["per_region"]["A"] == pytest.approx(1.625)
    assert report["per_region"]["B"] == pytest.approx(4.0)
    assert report["per_region"]["other"] == pytest.approx(4.0)
    l3 = report["per_landmark"]["l3"]
    assert (l3["mean"], l3["median"], l3["max"]) == pytest.approx((4.0, 4.0, 5.0))
    assert l3["std"] == pytest.approx(1.0)  # population std of {5, 3}
    assert l3["region"] == "other" and report["per_landmark"]["l1"]["region"] == "A"
    # <= is inclusive: the error of exactly 2.0 and 3.0 count
    assert report["sdr"] == {"2mm": pytest.approx(3 / 8), "3mm": pytest.approx(5 / 8),
                             "4mm": pytest.approx(6 / 8)}
    assert [s["scan"] for s in report["per_scan"]] == ["s1", "s2"]
    assert report["per_scan"][0]["pointwise_mm"] == pytest.approx(err[0].mean())


def test_nan_prediction_is_missing_and_excluded():
    pred, truth, err = constructed_case()
    pred[0, 1] = np.nan
    report = evaluate_arrays(pred, truth, ["l0", "l1", "l2", "l3"])
    assert report["missing"] == 1
    assert report["n_predictions"] == 7
    row = report["per_landmark"]["l1"]
    assert row["missing"] == 1 and row["n"] == 1 and row["mean"] == pytest.approx(2.0)
    assert report["per_scan"][0]["missing"] == 1
    assert report["per_scan"][0]["pointwise_mm"] == pytest.approx(np.mean([1.0, 3.5, 5.0]))
    keep = [0, 2, 3]  # scan 0's distance-wise error uses only pairs without l1
    assert report["per_scan"][0]["distancewise_mm"] == pytest.approx(
        distancewise_error(pred[0, keep], truth[0, keep]))
    assert report["sdr"]["2mm"] == pytest.approx(3 / 7)  # missing ones are not predictions
    json.dumps(report, allow_nan=False)


def test_nan_truth_is_not_evaluated_and_all_missing_landmark_is_none():
    pred, truth, _ = constructed_case()
    truth[1, 0] = np.nan  # the truth has no l0 on scan 2: not a missing prediction
    pred[:, 3] = np.nan  # l3 never predicted
    report = evaluate_arrays(pred, truth, ["l0", "l1", "l2", "l3"])
    assert report["missing"] == 2
    assert report["per_landmark"]["l0"]["n"] == 1 and report["per_landmark"]["l0"]["missing"] == 0
    # ... but a prediction placed where the truth has none is counted apart, as "extra".
    assert report["extra"] == 1 and report["per_landmark"]["l0"]["extra"] == 1
    assert [row["extra"] for row in report["per_scan"]] == [0, 1]
    l3 = report["per_landmark"]["l3"]
    assert l3["mean"] is None and l3["max"] is None and l3["n"] == 0 and l3["missing"] == 2
    assert report["pointwise_mm"] == pytest.approx(np.mean([1.0, 2.25, 4.0]))
    json.dumps(report, allow_nan=False)
    text = format_report(report)
    assert "1 placed where the truth has none" in text
    assert [line.split()[-1] for line in text.splitlines() if line.startswith("l0 ")] == ["1"]


def test_a_landmark_left_out_on_both_sides_is_neither_missing_nor_extra():
    pred, truth, _ = constructed_case()
    pred[0, 2] = truth[0, 2] = np.nan  # an ear both the scan and its truth lack
    report = evaluate_arrays(pred, truth, ["l0", "l1", "l2", "l3"])
    assert report["missing"] == 0 and report["extra"] == 0
    assert "placed where" not in format_report(report)


def test_everything_missing_gives_none_not_nan():
    truth = random_face(np.random.default_rng(3), 2, 3)
    report = evaluate_arrays(np.full_like(truth, np.nan), truth, ["x", "y", "z"])
    assert report["pointwise_mm"] is None and report["distancewise_mm"] is None
    assert report["sdr"]["2mm"] is None and report["missing"] == 6
    json.dumps(report, allow_nan=False)
    assert "-" in format_report(report)


def test_batched_equals_per_scan_loops():
    rng = np.random.default_rng(4)
    truth = random_face(rng, 5, 7)
    pred = truth + rng.normal(scale=2.0, size=truth.shape)
    pw = pointwise_errors(pred, truth)
    assert pw.shape == (5, 7)
    dw = distancewise_errors(pred, truth)
    assert dw.shape == (5,)
    for s in range(5):
        assert np.allclose(pw[s], pointwise_errors(pred[s], truth[s]))
        assert dw[s] == pytest.approx(distancewise_error(pred[s], truth[s]))
        assert dw[s] == pytest.approx(np.mean(np.abs(pdist(pred[s]) - pdist(truth[s]))))
    report = evaluate_arrays(pred, truth, list("abcdefg"))
    assert report["distancewise_mm"] == pytest.approx(dw.mean())
    assert report["pointwise_mm"] == pytest.approx(pw.mean(axis=0).mean())


def test_bad_shapes_raise():
    a = np.zeros((2, 3, 3))
    with pytest.raises(ValueError):
        pointwise_errors(a, np.zeros((2, 4, 3)))
    with pytest.raises(ValueError):
        distancewise_error(a, a)  # stacked given to the single-scan function
    with pytest.raises(ValueError):
        evaluate_arrays(a, a, ["only", "two"])


def test_default_protocol_is_used_when_none_given(monkeypatch):
    fake = types.ModuleType("palnet.protocol")
    fake.default_protocol = lambda: FakeProtocol({"nose": ["prn"]})
    monkeypatch.setitem(sys.modules, "palnet.protocol", fake)
    truth = np.zeros((1, 2, 3))
    truth[0, 1] = [10, 0, 0]
    report = evaluate_arrays(truth, truth, ["prn", "custom"])
    assert list(report["per_region"]) == ["nose", "other"]


def test_without_protocol_module_everything_is_other():
    truth = random_face(np.random.default_rng(5), 1, 6)
    report = evaluate_arrays(truth, truth, LABELS6)
    assert list(report["per_region"]) == ["other"]


def test_format_report_tables():
    pred, truth, _ = constructed_case()
    protocol = FakeProtocol({"A": ["l0", "a-rather-long-landmark-name"]})
    report = evaluate_arrays(pred, truth, ["l0", "a-rather-long-landmark-name", "l2", "l3"],
                             protocol=protocol)
    text = format_report(report)
    assert "Point-wise error" in text and "Distance-wise error" in text
    assert "{:.3f}".format(report["pointwise_mm"]) in text
    assert "2mm 37.5%" in text
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Landmark"))
    table = lines[start:start + 5]
    assert len({len(line) for line in table}) == 1  # fixed-width columns
    assert any(line.startswith("A ") and " 2 " in line for line in lines)


# --- directory level with a stand-in io module (tests pairing, not file formats) ----

def _fake_io():
    io = types.ModuleType("palnet.mesh_io")
    ext = ".lm.json"

    def read_landmarks(path):
        try:
            d = json.loads(Path(path).read_text())
            return Landmarks(d["labels"], np.array(d["points"], dtype=float).reshape(-1, 3),
                             units=d.get("units", "mm"))
        except (ValueError, KeyError) as e:
            raise PalnetError("not a landmark file ({})".format(e), path)

    def find_landmark_files(directory):
        return sorted(str(p) for p in Path(directory).rglob("*" + ext))

    def scan_id_for(path):
        stem = Path(path).name[:-len(ext)]
        return Path(path).parent.name if stem == "landmarks" else stem

    io.read_landmarks, io.find_landmark_files, io.scan_id_for = read_landmarks, find_landmark_files, scan_id_for
    return io


def _write(path, labels, points, units="mm"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"labels": labels, "points": np.asarray(points).tolist(), "units": units}))


@pytest.fixture
def fake_io(monkeypatch):
    monkeypatch.setitem(sys.modules, "palnet.mesh_io", _fake_io())


TRI = np.array([[0.0, 0, 0], [3, 0, 0], [0, 4, 0]])


def test_dirs_pairing_units_and_missing(tmp_path, fake_io):
    truth_dir, pred_dir = tmp_path / "truth", tmp_path / "pred"
    _write(truth_dir / "s1.lm.json", ["n", "l", "r"], TRI)
    _write(truth_dir / "sub" / "s2" / "landmarks.lm.json", ["n", "l", "r"], TRI)  # id from folder
    _write(truth_dir / "only_truth.lm.json", ["n"], TRI[:1])
    # s1 predicted in cm, 1 mm off in x; an extra label the truth lacks is ignored
    _write(pred_dir / "s1.lm.json", ["r", "n", "l", "extra"],
           (np.vstack([TRI[[2, 0, 1]], [[9, 9, 9]]]) + [1.0, 0, 0]) / 10.0, units="cm")
    _write(pred_dir / "s2.lm.json", ["n", "l"], TRI[:2])  # 'r' missing
    _write(pred_dir / "only_pred.lm.json", ["n"], TRI[:1])
    report = evaluate_dirs(str(pred_dir), str(truth_dir))
    assert report["n_scans"] == 2 and report["n_landmarks"] == 3
    assert list(report["per_landmark"]) == ["n", "l", "r"]
    assert [s["scan"] for s in report["per_scan"]] == ["s1", "s2"]
    assert report["per_scan"][0]["pointwise_mm"] == pytest.approx(1.0)
    assert report["per_scan"][0]["distancewise_mm"] == pytest.approx(0.0, abs=1e-12)
    assert report["per_scan"][1]["pointwise_mm"] == pytest.approx(0.0)
    assert report["missing"] == 1 and report["per_landmark"]["r"]["missing"] == 1
    assert report["unmatched_truth"] == ["only_truth"]
    assert report["unmatched_pred"] == ["only_pred"]
    json.dumps(report, allow_nan=False)
    text = format_report(report)
    assert "only_truth" in text and "only_pred" in text


def test_dirs_judge_each_scan_on_the_labels_its_truth_names(tmp_path, fake_io):
    """Two real scans annotated with different short lists: a label only the other scan's
    truth names is not counted as placed where this one's truth has none."""
    _write(tmp_path / "t" / "a.lm.json", ["n", "l", "r"], TRI)
    _write(tmp_path / "t" / "b.lm.json", ["n", "l"], TRI[:2])  # r not annotated on b
    for sid in ("a", "b"):
        _write(tmp_path / "p" / (sid + ".lm.json"), ["n", "l", "r"], TRI + [0.5, 0, 0])
    report = evaluate_dirs(tmp_path / "p", tmp_path / "t")
    assert report["extra"] == 0 and report["missing"] == 0
    assert report["per_landmark"]["r"]["n"] == 1 and report["per_landmark"]["n"]["n"] == 2
    assert report["pointwise_mm"] == pytest.approx(0.5)


def test_dirs_labels_follow_protocol_order(tmp_path, fake_io):
    _write(tmp_path / "t" / "a.lm.json", ["mine", "prn", "sn"], TRI)
    _write(tmp_path / "p" / "a.lm.json", ["mine", "prn", "sn"], TRI)
    report = evaluate_dirs(tmp_path / "p", tmp_path / "t",
                           protocol=FakeProtocol({"nose": ["sn", "prn"]}))
    assert list(report["per_landmark"]) == ["sn", "prn", "mine"]
    assert report["per_region"] == {"nose": 0.0, "other": 0.0}


def test_dirs_no_match_names_both_directories(tmp_path, fake_io):
    _write(tmp_path / "t" / "a.lm.json", ["n"], TRI[:1])
    _write(tmp_path / "p" / "b.lm.json", ["n"], TRI[:1])
    with pytest.raises(PalnetError) as info:
        evaluate_dirs(tmp_path / "p", tmp_path / "t")
    assert str(tmp_path / "p") in str(info.value) and str(tmp_path / "t") in str(info.value)


def test_dirs_bad_file_is_named(tmp_path, fake_io):
    _write(tmp_path / "t" / "a.lm.json", ["n"], TRI[:1])
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "a.lm.json").write_text("{not json")
    with pytest.raises(PalnetError) as info:
        evaluate_dirs(tmp_path / "p", tmp_path / "t")
    assert str(tmp_path / "p" / "a.lm.json") in str(info.value)


def test_dirs_empty_missing_and_duplicate(tmp_path, fake_io):
    (tmp_path / "t").mkdir()
    (tmp_path / "p").mkdir()
    with pytest.raises(PalnetError, match="no landmark files"):
        evaluate_dirs(tmp_path / "p", tmp_path / "t")
    with pytest.raises(PalnetError, match="not a directory"):
        evaluate_dirs(tmp_path / "nowhere", tmp_path / "t")
    _write(tmp_path / "t" / "a.lm.json", ["n"], TRI[:1])
    _write(tmp_path / "t" / "x" / "a.lm.json", ["n"], TRI[:1])
    _write(tmp_path / "p" / "a.lm.json", ["n"], TRI[:1])
    # two scans named a in different folders: the prediction is the one at the same place
    report = evaluate_dirs(tmp_path / "p", tmp_path / "t")
    assert [s["scan"] for s in report["per_scan"]] == ["a"] and report["unmatched_truth"] == ["x/a"]
    # two files for one scan (x/a), in different folders: left out and reported, not guessed
    _write(tmp_path / "t" / "x" / "a" / "landmarks.lm.json", ["n"], TRI[:1])
    report = evaluate_dirs(tmp_path / "p", tmp_path / "t")
    assert [s["scan"] for s in report["per_scan"]] == ["a"] and report["unmatched_truth"] == []
    assert report["ambiguous"] == [{"scan": "a", "truth": ["x/a.lm.json", "x/a/landmarks.lm.json"], "pred": []}]


# --- directory level with the real io module (Slicer .mrk.json files) ---------------

def _write_mrk(path, labels, points, units="mm"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                   "Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": [{
            "type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": units,
            "controlPoints": [{"id": str(i + 1), "label": lab, "position": list(map(float, p))}
                              for i, (lab, p) in enumerate(zip(labels, points))],
        }],
    }
    path.write_text(json.dumps(doc))


def test_dirs_with_real_io(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "palnet.mesh_io", raising=False)
    try:
        importlib.import_module("palnet.mesh_io")
    except ImportError:
        pytest.skip("palnet.mesh_io not written yet")
    _write_mrk(tmp_path / "t" / "s1.mrk.json", ["n", "l", "r"], TRI)
    _write_mrk(tmp_path / "t" / "s2.mrk.json", ["n", "l", "r"], TRI)
    _write_mrk(tmp_path / "p" / "s1.mrk.json", ["n", "l", "r"], TRI + [0.0, 1.0, 0.0])
    _write_mrk(tmp_path / "p" / "s2.mrk.json", ["n", "l"], TRI[:2])
    # the same scan in another format beside it: the .mrk.json is preferred, as in palnet.mesh_io
    (tmp_path / "p" / "s2.csv").write_text("not,a,landmark,file,at,all\n")
    (tmp_path / "p" / "summary.csv").write_text("scan,status\ns1,ok\n")  # unmatched, never read
    report = evaluate_dirs(os.fspath(tmp_path / "p"), os.fspath(tmp_path / "t"))
    assert report["n_scans"] == 2 and report["missing"] == 1
    assert report["per_scan"][0]["pointwise_mm"] == pytest.approx(1.0)
    assert report["distancewise_mm"] == pytest.approx(0.0, abs=1e-9)
    assert report["unmatched_pred"] == ["summary"]
