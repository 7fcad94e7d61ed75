"""Units end to end: every landmark file states the units its numbers are in, readers honour
that (or refuse in one line), evaluate compares in mm, unit detection copes with close-ups,
and pictures of scans in metres look like those in millimetres."""
import json
import os

import numpy as np
import pytest

from palnet import PalnetError
from palnet.landmark_io import LANDMARK_FORMATS, read_landmarks, write_landmarks
from palnet.datatypes import Landmarks, Mesh


def one_line_error(excinfo, *parts):
    text = str(excinfo.value)
    assert "\n" not in text, text
    for part in parts:
        assert str(part) in text, (part, text)
    return text


@pytest.fixture(scope="module")
def ict(ict_path):
    from palnet.synth import load_ict
    return load_ict(ict_path)


@pytest.fixture(scope="module")
def scans(ict):
    """One synthetic head in mm, cm and m: (mesh, true landmarks) by unit."""
    from palnet.synth import generate_scan
    return {u: generate_scan(1003, ict, units=u)[:2] for u in ("mm", "cm", "m")}


POINTS = np.array([[12.5, -3.25, 80.0], [-40.0, 7.5, 66.125], [0.0, 55.5, 91.0]])


# ---------------------------------------------------------------- files say their units

@pytest.mark.parametrize("fmt", LANDMARK_FORMATS)
@pytest.mark.parametrize("units,factor", [("mm", 1.0), ("cm", 0.1), ("m", 0.001)])
def test_every_format_states_and_reads_back_its_units(tmp_path, fmt, units, factor):
    lm = Landmarks(["n", "prn", "pg"], POINTS * factor, units=units)
    path = write_landmarks(lm, tmp_path / ("a." + fmt))
    text = path.read_text()
    statement = {"mrk.json": '"coordinateUnits": "{}"', "fcsv": "# CoordinateUnits = {}\n",
                 "csv": ",{}\n", "txt": "# CoordinateUnits = {}\n"}[fmt].format(units)
    assert statement in text
    back = read_landmarks(path)
    assert back.units == units
    np.testing.assert_array_equal(back.points, lm.points)
    in_mm = read_landmarks(path, "mm")
    assert in_mm.units == "mm"
    np.testing.assert_allclose(in_mm.points, POINTS, rtol=1e-12)


def test_files_that_state_no_units_are_mm_and_um_becomes_mm(tmp_path):
    (tmp_path / "plain.txt").write_text("n\t(1, 2, 3)\n")
    assert read_landmarks(tmp_path / "plain.txt").units == "mm"
    doc = {"@schema": "x", "markups": [{"type": "Fiducial", "coordinateUnits": "um",
                                        "controlPoints": [{"label": "n", "position": [1500.0, -250.0, 80000.0]}]}]}
    (tmp_path / "um.mrk.json").write_text(json.dumps(doc))
    lm = read_landmarks(tmp_path / "um.mrk.json")
    assert lm.units == "mm"
    np.testing.assert_allclose(lm.points, [[1.5, -0.25, 80.0]])
    doc["markups"][0]["coordinateUnits"] = ["cm", "UCUM", "centimeter"]  # Slicer's coded form
    (tmp_path / "coded.mrk.json").write_text(json.dumps(doc))
    assert read_landmarks(tmp_path / "coded.mrk.json").units == "cm"
    assert read_landmarks(tmp_path / "coded.mrk.json", "m").points[0, 0] == pytest.approx(15.0)


def _mrk(units):
    return json.dumps({"@schema": "x", "markups": [{"type": "Fiducial", "coordinateUnits": units,
                                                     "controlPoints": [{"label": "n", "position": [1, 2, 3]}]}]})


UNKNOWN = {
    "inch.mrk.json": (_mrk("inch"), "'inch'"),
    "number.mrk.json": (_mrk(10), "10"),
    "coded.mrk.json": (_mrk(["[in_i]", "UCUM", "inch"]), "[in_i]"),
    "furlong.fcsv": ("# CoordinateUnits = furlong\n1,1,2,3,0,0,0,1,1,1,0,n,,\n", "'furlong'"),
    "feet.csv": ("label,x,y,z,units\nn,1,2,3,ft\n", "'ft'"),
    "yards.txt": ("# CoordinateUnits = yd\nn\t(1, 2, 3)\n", "'yd'"),
}


@pytest.mark.parametrize("name", sorted(UNKNOWN))
def test_unknown_units_are_refused_in_one_line(tmp_path, name):
    content, value = UNKNOWN[name]
    (tmp_path / name).write_text(content)
    with pytest.raises(PalnetError) as excinfo:
        read_landmarks(tmp_path / name)
    one_line_error(excinfo, name, value, "unknown coordinate units")


def test_mixed_units_and_unknown_wanted_units_are_refused(tmp_path):
    (tmp_path / "mixed.csv").write_text("label,x,y,z,units\nn,1,2,3,cm\nprn,1,2,4,mm\n")
    with pytest.raises(PalnetError) as excinfo:
        read_landmarks(tmp_path / "mixed.csv")
    one_line_error(excinfo, "mixed.csv", "line 3", "'mm'", "'cm'")
    (tmp_path / "ok.txt").write_text("n\t(1, 2, 3)\n")
    with pytest.raises(PalnetError) as excinfo:
        read_landmarks(tmp_path / "ok.txt", "inch")
    one_line_error(excinfo, "ok.txt", "'inch'")
    with pytest.raises(PalnetError) as excinfo:
        write_landmarks(Landmarks(["n"], [[1, 2, 3]], units="inch"), tmp_path / "out.mrk.json")
    one_line_error(excinfo, "out.mrk.json", "'inch'")
    assert not (tmp_path / "out.mrk.json").exists()


def test_json_nested_100k_deep_is_one_line(tmp_path):
    path = tmp_path / "deep.mrk.json"
    path.write_text('{"markups": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(PalnetError) as excinfo:
        read_landmarks(path)
    one_line_error(excinfo, "deep.mrk.json", "nested too deeply")


# ---------------------------------------------------------------- synth, predict, evaluate

def test_synth_labels_cm_and_m_scans_honestly(tmp_path, ict, scans):
    from palnet.synth import write_scan
    for units in ("cm", "m"):
        folder = write_scan(tmp_path / units, 1003, ict, "realistic", units)
        doc = json.loads((folder / "landmarks.mrk.json").read_text())
        assert doc["markups"][0]["coordinateUnits"] == units
        lm = read_landmarks(folder / "landmarks.mrk.json", "mm")
        np.testing.assert_allclose(lm.points, scans["mm"][1].points, atol=1e-9)


def test_prediction_on_a_cm_scan_is_written_in_cm_and_says_so(tmp_path, scans):
    from palnet.modelfile import load_model
    from palnet.pipeline import predict
    from palnet.resources import default_model_path
    mesh, truth = scans["cm"]
    pred = predict(mesh, load_model(default_model_path()))
    assert pred.units == "cm"
    path = write_landmarks(pred.landmarks, tmp_path / "p.mrk.json")
    assert json.loads(path.read_text())["markups"][0]["coordinateUnits"] == "cm"
    back = read_landmarks(path, "mm")
    err = np.linalg.norm(back.points - truth.select(back.labels).in_units("mm").points, axis=1).mean()
    assert 0.5 < err < 4.0, err  # mm, as the network places this head; not 10 times less


def _evaluate(tmp_path, pred, truth):
    from palnet.metrics import evaluate_dirs
    for side, lm in (("pred", pred), ("truth", truth)):
        (tmp_path / side).mkdir(exist_ok=True)
        write_landmarks(lm, tmp_path / side / "s1.mrk.json")
    return evaluate_dirs(tmp_path / "pred", tmp_path / "truth")


def test_evaluate_compares_in_mm_whatever_units_the_files_state(tmp_path, scans):
    truth_cm = scans["cm"][1]
    offset_mm = np.array([1.0, -1.0, 1.0]) * 1.7 / np.sqrt(3)  # every landmark 1.7 mm off
    pred_cm = Landmarks(truth_cm.labels, truth_cm.points + offset_mm / 10.0, units="cm")
    report = _evaluate(tmp_path, pred_cm, truth_cm)
    assert report["units"] == "mm" and report["pointwise_mm"] == pytest.approx(1.7, abs=1e-9)
    assert report["size_mismatch"] == []
    # the truth honestly in cm, the prediction in mm: the same 1.7 mm
    pred_mm = pred_cm.in_units("mm")
    report = _evaluate(tmp_path, pred_mm, truth_cm)
    assert report["pointwise_mm"] == pytest.approx(1.7, abs=1e-9)


def test_evaluate_names_scans_whose_files_state_the_wrong_units(tmp_path, scans):
    from palnet.metrics import format_report
    truth_cm = scans["cm"][1]
    mislabelled = Landmarks(truth_cm.labels, truth_cm.points, units="mm")  # numbers in cm, file says mm
    report = _evaluate(tmp_path, mislabelled, truth_cm)
    assert report["size_mismatch"] == [{"scan": "s1", "ratio": 0.1, "pred_units": "mm", "truth_units": "cm"}]
    text = format_report(report)
    assert "check the units their files state: s1 (0.1x, predicted mm, true cm)" in text


# ---------------------------------------------------------------- Slicer reads them

@pytest.mark.parametrize("fmt", ["mrk.json", "fcsv"])
def test_cm_files_load_in_slicer_onto_their_cm_mesh(mrml_scene, tmp_path, scans, fmt):
    """Slicer takes both the mesh file's and the landmark file's numbers as they are: the
    points of a cm scan land on it (its schema lists mm and um; it loads other units too)."""
    from palnet.mesh_io import write_mesh
    from vtkmodules.util import numpy_support
    mesh, truth = scans["cm"]
    write_mesh(mesh, tmp_path / "scan.ply")
    model = mrml_scene.AddNewNodeByClass("vtkMRMLModelNode")
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLModelStorageNode")
    storage.SetFileName(str(tmp_path / "scan.ply"))
    model.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(model)
    surface = numpy_support.vtk_to_numpy(model.GetPolyData().GetPoints().GetData()).astype(np.float64)
    write_landmarks(truth, tmp_path / ("lm." + fmt))
    node = mrml_scene.GetNodeByID(mrml_scene.markups_logic.LoadMarkups(str(tmp_path / ("lm." + fmt))))
    assert node.GetNumberOfControlPoints() == len(truth)
    ras = np.array([node.GetNthControlPointPositionWorld(i) for i in range(len(truth))])
    np.testing.assert_allclose(ras * [-1, -1, 1], truth.points, atol=1e-5)
    from scipy.spatial import cKDTree
    assert cKDTree(surface).query(ras)[0].max() < 0.2  # cm: within 2 mm of a vertex, on the surface


# ---------------------------------------------------------------- unit detection

def _close_up(mesh_or_vertices, centre, size):
    v = getattr(mesh_or_vertices, "vertices", mesh_or_vertices)
    return v[np.all(np.abs(v - centre) < size / 2.0, axis=1)]


def test_a_45_mm_close_up_is_mm_and_faces_heads_shoulders_keep_their_units(ict):
    from palnet.align import detect_units
    from palnet.mesh_io import read_mesh
    from palnet.resources import sample_landmarks_path, sample_scan_path
    from palnet.synth import generate_scan
    face, marks = read_mesh(sample_scan_path()), read_landmarks(sample_landmarks_path())
    for label in ("prn", "sto", "n"):
        close = _close_up(face, marks.points[marks.labels.index(label)], 45.0)
        assert np.ptp(close, axis=0).max() < 46.0
        for units, factor in (("mm", 1.0), ("cm", 0.1), ("m", 0.001)):
            assert detect_units(close * factor) == units, (label, units)
    for seed, crop in ((1300, "face"), (1301, "head"), (1302, "shoulders"), (1303, "random")):
        scan = generate_scan(seed, ict, pose="any", crop=crop, spikes=0.02 if crop == "shoulders" else 0.0)[0]
        for units, factor in (("mm", 1.0), ("cm", 0.1), ("m", 0.001)):
            assert detect_units(scan.vertices * factor) == units, (seed, crop, units)


def test_readme_documents_the_detection_ranges():
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    section = text[text.index("## Coordinates and units"):]
    section = section[:section.index("\n## ", 3)]
    for fact in ("5-300 mm", "5 mm", "80 mm", "--units"):
        assert fact in section, fact


# ---------------------------------------------------------------- pictures

def test_a_scan_in_metres_is_drawn_like_the_same_scan_in_mm(tmp_path, scans):
    from palnet.render import RenderOptions, _read_png, render_landmarks
    pictures = {}
    options = RenderOptions(views=("front",), size=(240, 240), colors=[(1.0, 0.0, 0.0)], labels=False,
                            up=(0, 0, 1), front=(0, -1, 0))
    for units in ("mm", "m"):
        mesh, truth = scans[units]
        out = render_landmarks(Mesh(mesh.vertices, mesh.triangles, units), truth, tmp_path / (units + ".png"),
                               options)
        pictures[units] = _read_png(out).astype(int)
    red = {u: ((p[..., 0] > 150) & (p[..., 1] < 80) & (p[..., 2] < 80)).sum() for u, p in pictures.items()}
    assert red["mm"] > 100, red  # landmark spheres are drawn
    assert abs(red["m"] - red["mm"]) <= 0.05 * red["mm"], red
    assert np.abs(pictures["m"] - pictures["mm"]).mean() < 1.0
