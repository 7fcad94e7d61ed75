"""The measurement tools: the benchmark's tables and the pictures, on the sample face."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from palnet import Landmarks
from palnet.landmark_io import read_landmarks, write_landmarks
from palnet.measurements import load_definitions
from palnet.resources import sample_landmarks_path, sample_scan_path

ROOT = Path(__file__).resolve().parent.parent


def run(*args, timeout=600):
    proc = subprocess.run([sys.executable] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_bench_lists_the_definitions_as_in_the_docs():
    out = run(ROOT / "tools" / "bench_measurements.py", "list")
    rows = [line for line in out.splitlines() if line.startswith("| `")]
    assert len(rows) == len(load_definitions())
    doc = (ROOT / "docs" / "measurements.md").read_text(encoding="utf-8")
    assert all(row in doc for row in rows), "docs/measurements.md is stale: python tools/bench_measurements.py list"


def test_bench_errors_on_a_tiny_set(tmp_path):
    truth, pred = tmp_path / "data", tmp_path / "pred"
    (truth / "S01").mkdir(parents=True)
    pred.mkdir()
    shutil.copy(str(sample_scan_path()), str(truth / "S01" / "scan.ply"))
    shutil.copy(str(sample_landmarks_path()), str(truth / "S01" / "landmarks.mrk.json"))
    face = read_landmarks(sample_landmarks_path())
    moved = face.points + np.random.default_rng(0).normal(scale=0.5, size=face.points.shape)
    write_landmarks(Landmarks(face.labels, moved, np.full(len(face), 0.8)), pred / "S01.mrk.json")
    report = tmp_path / "r.json"
    out = run(ROOT / "tools" / "bench_measurements.py", "errors", "--pred", pred, "--truth", truth, "--out", report,
              "--samples", "20")
    got = json.loads(report.read_text())
    assert got["n_scans"] == 1 and got["measurements"]["t-sn-t"]["n"] == 1
    assert got["measurements"]["en-en"]["mean_abs"] < 2.0 and got["measurements"]["en-en"]["mean_se"] > 0
    assert "en-en" in out and "t-pg-t" in out


def test_pictures_of_the_measurements(tmp_path):
    defs = json.loads((ROOT / "PALNetLandmarks" / "Resources" / "Protocols" / "palnet50_measurements.json").read_text())
    keep = {"en-en", "nasolabial_angle", "sn-prn_z", "t-sn-t", "asymmetry_total"}
    defs["measurements"] = [m for m in defs["measurements"] if m["id"] in keep]
    small = tmp_path / "few.json"
    small.write_text(json.dumps(defs))
    out = run(ROOT / "tools" / "draw_measurements.py", tmp_path / "pics", "--definitions", small, "--size", "160")
    made = sorted(p.name for p in (tmp_path / "pics").glob("*.png"))
    assert made == ["angles.png", "arcs.png", "asymmetry.png", "nose.png", "widths.png"], (made, out)
    assert all((tmp_path / "pics" / name).read_bytes()[:4] == b"\x89PNG" for name in made)
