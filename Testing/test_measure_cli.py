"""`palnet measure`, `palnet predict --measure` and the measurement errors of `palnet evaluate`:
tables (wide and long), z-scores, files never overwritten unasked, bad files named, a cohort."""
import csv
import json
import shutil
import time

import numpy as np
import pytest

from palnet import Landmarks
from palnet.cli import main
from palnet.landmark_io import read_landmarks, write_landmarks
from palnet.measurements import load_definitions, measure
from palnet.measurements.files import MEASUREMENTS_NAME
from palnet.resources import sample_landmarks_path, sample_scan_path


def rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def one_line(text):
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines


@pytest.fixture
def cohort(tmp_path, sample):
    """Three faces in a folder (one in cm, one with confidence) and the sample scan beside the first."""
    mesh, face = sample
    rng = np.random.default_rng(0)
    folder = tmp_path / "faces"
    (folder / "b").mkdir(parents=True)
    write_landmarks(face, folder / "S01.mrk.json")
    shutil.copy(str(sample_scan_path()), str(folder / "S01.ply"))
    moved = Landmarks(face.labels, face.points + rng.normal(scale=1.0, size=face.points.shape), units="mm")
    write_landmarks(moved.in_units("cm"), folder / "b" / "S02.fcsv")
    conf = Landmarks(face.labels, face.points, np.full(len(face), 0.8), units="mm")
    write_landmarks(conf, folder / "b" / "S03.csv")
    return folder


def test_wide_table_one_row_per_face(tmp_path, cohort, capsys):
    out = tmp_path / "m.csv"
    assert main(["measure", str(cohort), "-o", str(out), "--scan", str(cohort), "-q"]) == 0
    table = rows(out)
    assert [r["face"] for r in table] == ["S01", "S02", "S03"]
    defs = load_definitions()
    header = list(table[0])
    assert header[:4] == ["face", "file", defs.ids[0], defs.ids[0] + "_se"] and len(header) == 2 + 2 * len(defs)
    direct = {m.id: m for m in measure(read_landmarks(cohort / "S01.mrk.json"), mesh=None, samples=0)}
    assert float(table[0]["en-en"]) == pytest.approx(direct["en-en"].value, abs=1e-4)
    assert table[0]["t-sn-t"] and not table[1]["t-sn-t"]  # S01 has its scan, S02 none
    s02 = {m.id: m for m in measure(read_landmarks(cohort / "b" / "S02.fcsv"), samples=0)}
    assert float(table[1]["zy-zy"]) == pytest.approx(s02["zy-zy"].value, abs=1e-4)  # read in cm, measured in mm
    assert table[0]["en-en_se"] == "" and float(table[2]["en-en_se"]) > 0  # only S03 has confidence
    out_text = capsys.readouterr().out
    assert "3 face(s) measured" in out_text and str(out) in out_text


def test_long_table_one_row_per_measurement(tmp_path, cohort):
    out = tmp_path / "long.csv"
    assert main(["measure", str(cohort / "S01.mrk.json"), "-o", str(out), "--long", "--scan",
                 str(cohort / "S01.ply"), "--sd", "1.0", "-q"]) == 0
    table = rows(out)
    defs = load_definitions()
    assert [r["measurement"] for r in table] == defs.ids
    first = table[0]
    assert list(first) == ["face", "file", "measurement", "name", "kind", "value", "units", "se", "z", "landmarks",
                           "reference", "note"]
    assert first["units"] == "mm" and first["landmarks"] == "en_R en_L" and first["reference"] == "en-en"
    arc = next(r for r in table if r["measurement"] == "t-pg-t")
    assert float(arc["value"]) > 200 and float(arc["se"]) > 0
    angle = next(r for r in table if r["measurement"] == "nasolabial_angle")
    assert angle["units"] == "deg" and float(angle["se"]) > 0


def test_an_existing_table_is_kept_unless_overwrite(tmp_path, cohort, capsys):
    out = tmp_path / "m.csv"
    out.write_text("mine\n")
    assert main(["measure", str(cohort), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "exists; use --overwrite" in err and str(out) in err and len(one_line(err)) == 1
    assert out.read_text() == "mine\n"
    assert main(["measure", str(cohort), "-o", str(out), "-q", "--overwrite"]) == 0
    assert rows(out)[0]["face"] == "S01"
    assert main(["measure", str(cohort), "-o", str(tmp_path), "-q"]) == 2  # a folder is not a table
    inside = cohort / "table.csv"  # a table among the landmark files is not read as one of them
    assert main(["measure", str(cohort), "-o", str(inside), "-q"]) == 0
    assert main(["measure", str(cohort), "-o", str(inside), "-q", "--overwrite"]) == 0
    assert [r["face"] for r in rows(inside)] == ["S01", "S02", "S03"]


def test_a_bad_file_is_named_and_the_rest_are_measured(tmp_path, cohort, capsys):
    bad = cohort / "b" / "S04.mrk.json"
    bad.write_text("{not json")
    out = tmp_path / "m.csv"
    assert main(["measure", str(cohort), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    named = [line for line in err.splitlines() if str(bad) in line]
    assert len(named) == 1 and "not valid JSON" in named[0]
    assert [r["face"] for r in rows(out)] == ["S01", "S02", "S03"]
    assert main(["measure", str(bad), "-o", str(tmp_path / "none.csv"), "-q"]) == 1
    assert not (tmp_path / "none.csv").exists()
    assert main(["measure", str(tmp_path / "empty_folder_missing"), "-o", str(tmp_path / "x.csv"), "-q"]) == 1


def test_bad_definitions_and_arguments_stop_before_anything(tmp_path, cohort, capsys):
    defs = tmp_path / "mine.json"
    defs.write_text(json.dumps({"format": "palnet-measurements", "measurements": [{"id": "a", "kind": "area"}]}))
    out = tmp_path / "m.csv"
    assert main(["measure", str(cohort), "-o", str(out), "--definitions", str(defs), "-q"]) == 2
    err = capsys.readouterr().err
    assert one_line(err) == ["palnet measure: error: {}: measurement 'a': unknown kind 'area' (use distance, "
                             "projected, angle, ratio, arc, asymmetry)".format(defs)]
    assert not out.exists()
    assert main(["measure", str(cohort), "-o", str(out), "--group", "x", "-q"]) == 2
    assert main(["measure", str(cohort), "-o", str(out), "--scan", str(cohort / "S01.ply"), "-q"]) == 2  # one scan, 3 files
    assert "give a folder of scans" in capsys.readouterr().err


def test_missing_landmarks_leave_only_their_cells_empty(tmp_path, sample):
    _, face = sample
    folder = tmp_path / "faces"
    folder.mkdir()
    write_landmarks(face.select([lab for lab in face.labels if lab != "al_L"]), folder / "absent.mrk.json")
    points = face.points.copy()
    points[face.labels.index("al_L")] = np.nan  # a landmark the scan does not show
    try:
        write_landmarks(Landmarks(face.labels, points), folder / "nan.mrk.json")
    except Exception:  # a writer that cannot mark a landmark missing: the absent label is enough
        pass
    out = tmp_path / "long.csv"
    assert main(["measure", str(folder), "-o", str(out), "--long", "-q"]) == 0
    table = rows(out)
    for name in {r["face"] for r in table}:
        mine = {r["measurement"]: r for r in table if r["face"] == name}
        assert mine["al-al"]["value"] == "" and "missing landmark al_L" in mine["al-al"]["note"]
        assert mine["nasal_index"]["value"] == "" and mine["al-al"]["se"] == ""
        assert mine["ac-ac"]["value"] and mine["en-en"]["value"] and mine["nasolabial_angle"]["value"]


def test_norms_give_z_columns(tmp_path, cohort, capsys):
    norms = tmp_path / "norms.csv"
    norms.write_text("measurement,group,mean,sd\nen-en,f,30,3\nen-en,m,32,3\nex-ex,f,90,5\n")
    out = tmp_path / "m.csv"
    assert main(["measure", str(cohort), "-o", str(out), "--norms", str(norms), "-q"]) == 2
    assert "choose one (--group)" in capsys.readouterr().err
    assert main(["measure", str(cohort), "-o", str(out), "--norms", str(norms), "--group", "f", "-q"]) == 0
    row = rows(out)[0]
    assert float(row["en-en_z"]) == pytest.approx((float(row["en-en"]) - 30) / 3, abs=1e-3)
    assert float(row["ex-ex_z"]) == pytest.approx((float(row["ex-ex"]) - 90) / 5, abs=1e-3)
    assert row["zy-zy_z"] == ""


def test_predict_measure_writes_the_table_beside_the_landmarks(tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(str(sample_scan_path()), str(scans / "face.ply"))
    out = tmp_path / "out"
    assert main(["predict", str(scans), "-o", str(out), "-q", "--measure"]) == 0
    table = rows(out / MEASUREMENTS_NAME)
    assert [r["face"] for r in table] == ["face"]
    assert float(table[0]["t-sn-t"]) > 200  # the scan was there: arcs measured
    assert float(table[0]["en-en_se"]) > 0  # predicted landmarks carry confidence
    assert "measurements of 1 scan(s)" in capsys.readouterr().out
    before = (out / MEASUREMENTS_NAME).read_bytes()
    assert main(["predict", str(scans), "-o", str(out), "-q", "--measure"]) == 0  # scan skipped, table kept
    assert "exists, kept (use --overwrite" in capsys.readouterr().out
    assert (out / MEASUREMENTS_NAME).read_bytes() == before
    # The table is no landmark file for evaluate or measure.
    truth = tmp_path / "truth"
    truth.mkdir()
    shutil.copy(str(sample_landmarks_path()), str(truth / "face.mrk.json"))
    assert main(["evaluate", "--pred", str(out), "--truth", str(truth), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_scans"] == 1 and report["measurements"]["en-en"]["n"] == 1
    assert main(["measure", str(out), "-o", str(tmp_path / "again.csv"), "-q"]) == 0


def test_evaluate_reports_each_measurement_error(tmp_path, sample, capsys):
    _, face = sample
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    shifted = face.points.copy()
    shifted[face.labels.index("en_L")] += [2.0, 0.0, 0.0]  # along x: en-en changes by about 2 mm
    write_landmarks(face, truth / "S01.mrk.json")
    write_landmarks(Landmarks(face.labels, shifted), pred / "S01.mrk.json")
    write_landmarks(face, truth / "S02.mrk.json")
    write_landmarks(face, pred / "S02.mrk.json")
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    d = face.as_dict()
    change = abs(np.linalg.norm(d["en_L"] + [2.0, 0, 0] - d["en_R"]) - np.linalg.norm(d["en_L"] - d["en_R"]))
    row = report["measurements"]["en-en"]
    assert row["n"] == 2 and row["mean_abs"] == pytest.approx(change / 2) and row["max_abs"] == pytest.approx(change)
    assert row["units"] == "mm" and report["measurements"]["al-al"]["mean_abs"] == 0.0
    assert report["measurements"]["t-sn-t"]["n"] == 0 and report["measurements"]["t-sn-t"]["mean_abs"] is None
    assert report["measurements"]["nasolabial_angle"]["units"] == "deg"
    assert main(["evaluate", "--pred", str(pred), "--truth", str(truth)]) == 0
    text = capsys.readouterr().out
    assert "Measurement" in text and "Mean abs" in text and "\nen-en " in text
    # The landmark tables come first and unchanged: the measurements are added after them.
    assert text.index("Landmark ") < text.index("Measurement")


def test_a_cohort_of_1000_files(tmp_path, sample, capsys):
    _, face = sample
    rng = np.random.default_rng(0)
    folder = tmp_path / "cohort"
    folder.mkdir()
    for i in range(1000):
        lm = Landmarks(face.labels, face.points + rng.normal(scale=1.5, size=face.points.shape),
                       rng.uniform(0.3, 0.95, len(face)), units="mm")
        write_landmarks(lm, folder / "F{:04d}.mrk.json".format(i))
    out = tmp_path / "cohort.csv"
    t0 = time.perf_counter()
    assert main(["measure", str(folder), "-o", str(out), "-q"]) == 0
    seconds = time.perf_counter() - t0
    table = rows(out)
    assert len(table) == 1000 and all(r["en-en_se"] for r in table)
    assert seconds < 90, seconds  # about 5 s on one core of a quiet machine; generous for a busy one
