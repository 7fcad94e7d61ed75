"""The benchmark tools: the speed mode (`palnet predict` timed in a fresh process on one core), the
accuracy summary, robustness pairs, holes beside landmarks and repairs of answers out of order."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_speed_mode_times_a_fresh_prediction(tmp_path):
    from palnet.resources import sample_scan_path
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "--speed", str(sample_scan_path()),
                           "--repeats", "1", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "imports to landmarks written" in proc.stdout
    res = json.loads(out.read_text())
    assert res["repeats"] == 1 and res["torch_imported"] is False and len(res["runs"]) == 1
    assert res["runs"][0]["rc"] == 0 and res["median_seconds"] > 0 and res["peak_mib"] > 0


def test_robustness_pairs_compare_the_landmarks_both_placed():
    """A face-only variant lacks the ears the whole head shows: the pair is compared on the
    landmarks both have, and the flips ignore missing ones."""
    import numpy as np
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import bench_robust
    finally:
        sys.path.remove(str(ROOT / "tools"))
    nan = float("nan")

    def side(errors):
        return {"errors_mm": errors, "pointwise_mm": float(np.nanmean(errors)), "status": "ok",
                "flip_lr": False, "flip_ud": False}

    rows = [{"seed": 1, "units": "mm", "crop": "face", "reference": side([1.0, 2.0, 9.0]),
             "variant": side([1.5, 2.5, nan])},
            {"seed": 2, "units": "cm", "crop": "head", "reference": side([1.0, 1.0, 1.0]),
             "variant": side([1.0, 1.0, 1.0])}]
    s = bench_robust.summarise(rows)
    assert s["reference_mm"] == 1.25 and s["variant_mm"] == 1.5 and s["difference_mm"] == 0.25
    points = np.zeros((50, 3))
    labels = ["g", "me"] + ["x{}_R".format(i) for i in range(24)] + ["x{}_L".format(i) for i in range(24)]
    points[0], points[2:26, 0], points[26:, 0] = (0, 10, 0), -5.0, 5.0
    points[26] = nan  # one missing left point
    lateral, vertical = bench_robust._axes(points, labels)
    assert lateral[0] == 10.0 and vertical[1] == 10.0


def test_bench_tools_name_a_missing_or_empty_data_folder_in_one_line(tmp_path):
    """tools/bench_holes.py and bench_order.py find their scans alike; a folder that is not
    there, or holds no annotated scan, ends them with one line naming it (no traceback)."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import bench_holes
    finally:
        sys.path.remove(str(ROOT / "tools"))
    with pytest.raises(SystemExit, match="no such folder") as gone:
        bench_holes.annotated_folders(tmp_path / "nowhere", 5)
    assert str(tmp_path / "nowhere") in str(gone.value) and "\n" not in str(gone.value)
    with pytest.raises(SystemExit, match="no annotated scans"):
        bench_holes.annotated_folders(tmp_path, 5)


def test_holes_are_cut_beside_the_landmarks_and_summarised_with_and_without():
    """tools/bench_holes.py: each hole's edge passes the asked gap from its landmark (which keeps
    its surface), seeded alike on every call; the summary pairs errors with and without holes."""
    import numpy as np
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import bench_holes
    finally:
        sys.path.remove(str(ROOT / "tools"))
    g = np.linspace(-60.0, 60.0, 121)
    xx, yy = np.meshgrid(g, g)
    v = np.stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)], axis=1)  # a flat sheet, 1 mm grid
    n = len(g)
    q = (np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]).ravel()
    t = np.concatenate([np.stack([q, q + 1, q + n], 1), np.stack([q + 1, q + n + 1, q + n], 1)])
    lm = np.array([[-30.0, -30.0, 0.0], [30.0, 30.0, 0.0], [0.0, 0.0, 0.0], [30.0, -30.0, 0.0]])
    labels = ["a", "b", "t_R", "c"]  # an ear point gets no hole
    nv, nt, holes = bench_holes.cut_holes(v, t, lm, labels, np.random.default_rng(0), 4, (4.0, 6.0), (1.0, 2.0))
    again = bench_holes.cut_holes(v, t, lm, labels, np.random.default_rng(0), 4, (4.0, 6.0), (1.0, 2.0))
    assert holes == again[2] and len(nv) < len(v)
    assert sorted(i for i, _, _ in holes) == [0, 1, 3]
    from scipy.spatial import cKDTree
    removed = v[cKDTree(nv).query(v)[0] > 1e-9]
    for i, r, gap in holes:
        assert 4.0 <= r <= 6.0 and 1.0 <= gap <= 2.0
        assert np.linalg.norm(nv - lm[i], axis=1).min() < 1.0  # the landmark keeps its surface
        edge = np.linalg.norm(removed - lm[i], axis=1).min()  # the hole's nearest lost vertex
        assert gap - 1e-9 <= edge <= gap + 1.5  # on a 1 mm grid
    rows = [{"holes": [(0, 5.0, 1.0)],
             "plain": {"errors_mm": [1.0, 3.0], "confidence": [0.8, 0.5]},
             "holed": {"errors_mm": [3.0, None], "confidence": [0.4, 0.0]}}]
    s = bench_holes.summarise(rows)
    assert s["beside_a_hole"]["error_mm"] == [1.0, 3.0] and s["beside_a_hole"]["within_2mm"] == [1.0, 0.0]
    assert s["beside_a_hole"]["confidence"] == [0.8, 0.4]
    assert s["others"]["missing_when_holed"] == 1 and s["others"]["error_mm"] is None


def test_the_accuracy_summary_names_the_scans_out_of_order_or_leaning_on_the_registration():
    import numpy as np
    from palnet.protocol import default_protocol
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import benchmark
    finally:
        sys.path.remove(str(ROOT / "tools"))
    protocol = default_protocol()
    labels = list(protocol.labels)
    truth = np.zeros((len(labels), 3))

    def row(scan, out_of_order, from_registration, from_others=()):
        return {"scan": scan, "truth": truth, "points": {"palnet": truth + 1.0}, "seconds": {"palnet": 1.0},
                "status": {"palnet": "ok"}, "errors": {}, "out_of_order": out_of_order,
                "from_registration": from_registration, "from_others": list(from_others)}

    rows = [row("a", [], []), row("b", ["ls", "sto"], ["ls", "sto", "li"]), row("c", [], ["os_L"]),
            row("d", ["li", "sl"], [], ["li"])]
    entry = benchmark.summarise(rows, ["palnet"], labels, protocol)["palnet"]
    assert entry["out_of_order"] == [{"scan": "b", "landmarks": ["ls", "sto"]}, {"scan": "d", "landmarks": ["li", "sl"]}]
    assert [f["scan"] for f in entry["from_registration"]] == ["b", "c"]
    text = benchmark.method_text("palnet", entry)
    assert "Out of anatomical order: 2 scan(s); b (ls, sto); d (li, sl)" in text
    assert "From the registration: 2 scan(s); b (ls, sto, li); c (os_L)" in text
    assert "Placed from the other landmarks: 1 scan(s); d (li)" in text


def test_snap_benchmark_decimates_and_averages_per_fraction_and_snap():
    """tools/bench_snap.py: the coarse copy has about the asked share of the triangles; the table
    averages each fraction's and snap's errors over the scans."""
    import numpy as np
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import bench_snap
    finally:
        sys.path.pop(0)
    from palnet.mesh_io import read_mesh
    from palnet.resources import sample_scan_path
    mesh = read_mesh(str(sample_scan_path()))
    coarse = bench_snap.decimated(mesh, 0.1)
    assert 0.07 * mesh.n_triangles < coarse.n_triangles < 0.13 * mesh.n_triangles
    assert bench_snap.median_edge(coarse) > 2.0 * bench_snap.median_edge(mesh)
    rows = [dict({"1/edge": 2.0, "0.5/edge": 4.0}, **{"{}/{}".format(f, s): k + (s == "nearest")
                                                     for f in ("1", "0.5") for s in bench_snap.SNAPS})
            for k in (1.0, 3.0)]
    table = bench_snap.summarise(rows, [1.0, 0.5])
    assert [t["median_edge_mm"] for t in table] == [2.0, 4.0]
    assert table[0]["surface"] == 2.0 and table[0]["nearest"] == 3.0
    assert np.isclose(table[1]["none"], 2.0)


def test_a_three_js_model_is_read_with_its_quads_split(tmp_path):
    """tools/real_scans.py reads the Lee Perry-Smith head from a three.js JSON model (format 2):
    each face a bit mask (1 quad, 2 material, 4 face uv, 8 vertex uvs, 16 face normal, 32 vertex
    normals, 64 face colour, 128 vertex colours), its corners, then what the mask announces."""
    sys.path.insert(0, str(ROOT / "tools"))
    import real_scans
    model = {"vertices": [0, 0, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 2, 2, 0], "uvs": [[0, 0, 1, 1]],
             "faces": [1, 0, 1, 2, 3,
                       2 | 8 | 32, 1, 2, 4, 0, 0, 1, 0, 5, 6, 7,
                       1 | 16 | 64, 0, 1, 4, 3, 9, 9]}
    path = tmp_path / "head.js"
    path.write_text("var model = {};\n\npostMessage( model );\n".format(json.dumps(model)), encoding="utf-8")
    vertices, triangles = real_scans.three_js_model(path, mm_per_unit=50.0)
    assert vertices.shape == (5, 3) and vertices.max() == 100.0
    assert triangles.tolist() == [[0, 1, 2], [0, 2, 3], [1, 2, 4], [0, 1, 4], [0, 4, 3]]


def test_order_benchmark_makes_each_mistake_and_compares_the_repairs(model):
    """tools/bench_order.py: each mistake but the lips moved down together (on some faces only)
    breaks the anatomical order of an answer in order; the earlier rule (the registration for
    every landmark involved) and today's repairs all restore it."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import bench_order
    finally:
        sys.path.remove(str(ROOT / "tools"))
    import numpy as np
    from palnet import pipeline
    from palnet.anatomy import out_of_order
    labels = list(model.metadata["protocol"]["labels"])
    mean = pipeline.model_arrays(model)[1]
    missing = np.zeros(len(labels), dtype=bool)
    fill = pipeline.order_fill(model, missing)
    assert out_of_order(labels, mean) == []
    for name in bench_order.MISTAKES:
        wrong = bench_order.make_mistake(name, labels, mean)
        assert bool(out_of_order(labels, wrong)) == (name != "lips_down"), name
        fixed = bench_order.repairs(labels, wrong, mean, missing, fill)
        assert set(fixed) == set(bench_order.REPAIRS)
        assert np.array_equal(fixed["none"], wrong)
        for repair in bench_order.REPAIRS[1:]:
            assert out_of_order(labels, fixed[repair]) == [], (name, repair)
    rows = [{"scan": "a", "broke": False, "no mistake": {k: 1.0 for k in bench_order.REPAIRS},
             "ls_on_li": {k: 2.0 for k in bench_order.REPAIRS}},
            {"scan": "b", "broke": True, "as predicted": {k: 3.0 for k in bench_order.REPAIRS}}]
    table = bench_order.summarise(rows)
    assert table["as predicted"]["n"] == 1 and table["ls_on_li"]["prior, fewest"] == 2.0
    assert "sto_on_li" not in table


MENPO_GROUPS = (("chin", 17), ("leye", 6), ("reye", 6), ("leyebrow", 5), ("nose", 9), ("reyebrow", 5), ("mouth", 20))


def menpo_ljson(groups=MENPO_GROUPS, z: float = 1.0) -> str:
    """A menpo .ljson text of iBUG 300-W points in menpo's group order, point i at (i, 0, z)."""
    labels, start = [], 0
    for name, n in groups:
        labels.append({"label": name, "mask": list(range(start, start + n))})
        start += n
    points = [[float(i), 0.0, z] for i in range(sum(n for _, n in MENPO_GROUPS))]
    return json.dumps({"groups": {"LJSON": {"labels": labels, "landmarks": {"points": points}}}})


def test_ibug_points_of_a_menpo_file_become_our_landmarks(tmp_path):
    """tools/real_scans.py: the iBUG 300-W points that mark one of our landmarks, by group and
    place in the group (menpo's .ljson order), stomion between the two inner-lip midpoints; a file
    of another shape is one PalnetError naming it."""
    import numpy as np
    import pytest
    from palnet.errors import PalnetError
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import real_scans
    finally:
        sys.path.remove(str(ROOT / "tools"))
    path = tmp_path / "face.ljson"
    path.write_text(menpo_ljson())
    lms = real_scans.ljson_landmarks(path)
    got = dict(zip(lms.labels, lms.points[:, 0]))
    assert lms.units == "mm" and len(lms.labels) == 13
    assert (got["ex_R"], got["en_R"], got["en_L"], got["ex_L"]) == (17, 20, 23, 26)
    assert (got["prn"], got["sn"], got["ch_R"], got["ls"], got["ch_L"], got["li"]) == (37, 40, 48, 51, 54, 57)
    assert got["sto"] == 64.0 and np.all(lms.points[:, 2] == 1.0)
    path.write_text(menpo_ljson(MENPO_GROUPS[:2]))
    with pytest.raises(PalnetError, match="face.ljson"):
        real_scans.ljson_landmarks(path)


def test_a_truth_file_with_some_landmarks_is_judged_on_those(tmp_path):
    """tools/benchmark.py: a scan annotated with a few of the protocol's landmarks is scored on
    those; the ones its file does not name are neither errors nor placed where the truth has
    none, while one the file marks missing still is. A file naming none of them is an error."""
    import numpy as np
    import pytest
    from palnet.datatypes import Landmarks
    from palnet.errors import PalnetError
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import benchmark
    finally:
        sys.path.remove(str(ROOT / "tools"))
    labels = ["a", "b", "c", "d"]
    nan = float("nan")
    truth = Landmarks(["b", "a", "d"], np.array([[0.0, 0, 0], [1, 0, 0], [nan, nan, nan]]), units="cm")
    points, named = benchmark.annotated_truth(truth, labels, "t.mrk.json")
    assert named.tolist() == [True, True, False, True]
    assert points[0].tolist() == [10.0, 0, 0] and points[1].tolist() == [0, 0, 0] and np.isnan(points[2:]).all()
    with pytest.raises(PalnetError, match="t.mrk.json"):
        benchmark.annotated_truth(Landmarks(["x"], np.zeros((1, 3))), labels, "t.mrk.json")
    pred = np.array([[12.0, 0, 0], [0, 1, 0], [5, 5, 5], [7, 7, 7]])
    results = [{"scan": "s", "truth": points, "annotated": named, "points": {"palnet": pred},
                "seconds": {"palnet": 1.0}, "status": {"palnet": "ok"}, "errors": {}}]
    report = benchmark.summarise(results, ["palnet"], labels, None)["palnet"]["report"]
    assert report["pointwise_mm"] == pytest.approx(1.5)
    assert set(report["per_landmark"]) == {"a", "b", "d"}
    assert report["per_landmark"]["d"]["extra"] == 1 and report["extra"] == 1


def test_a_scan_annotated_with_some_landmarks_is_benchmarked_and_drawn(tmp_path):
    """tools/benchmark.py --data on a scan whose truth names five landmarks: the report judges
    those five, and --png draws the answer beside the truth."""
    import shutil
    from palnet.landmark_io import read_landmarks, write_landmarks
    from palnet.resources import sample_landmarks_path, sample_scan_path
    scan = tmp_path / "data" / "face"
    scan.mkdir(parents=True)
    shutil.copy(str(sample_scan_path()), str(scan / "scan.ply"))
    some = ["prn", "sn", "ls", "en_R", "ch_L"]
    write_landmarks(read_landmarks(sample_landmarks_path()).select(some), scan / "landmarks.mrk.json")
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "--data", str(tmp_path / "data"),
                           "--jobs", "1", "--png", str(tmp_path / "png"), "--out", str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())["methods"]["palnet"]["report"]
    assert sorted(report["per_landmark"]) == sorted(some) and report["extra"] == 0
    assert report["pointwise_mm"] < 3.0
    assert (tmp_path / "png" / "face.png").stat().st_size > 10000


def test_real_scans_go_on_when_one_cannot_be_fetched(tmp_path, monkeypatch, capsys):
    """tools/real_scans.py: a scan that cannot be downloaded is named in one line and the
    others are still made (here the menpo3d files are served from disk, the rest fail)."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import real_scans
    finally:
        sys.path.remove(str(ROOT / "tools"))
    from palnet.resources import sample_scan_path

    ljson = menpo_ljson(z=0.0)

    def fake_download(url, path):
        if url.startswith(real_scans.MENPO3D):
            path.write_bytes(Path(sample_scan_path()).read_bytes() if url.endswith(".obj") else ljson.encode())
            return path
        raise OSError("no network")

    monkeypatch.setattr(real_scans, "download", fake_download)
    assert real_scans.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in err] == ["fran_cut", "headsq", "lee_perry_smith"]
    assert all("no network" in line for line in err)
    assert (tmp_path / "labelled" / "james" / "landmarks.mrk.json").exists()
