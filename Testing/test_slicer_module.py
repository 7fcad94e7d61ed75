"""The PALNetLandmarks Slicer module's logic against a real MRML scene (slicer-core).

Only ``qt`` (PyQt5 under that name), ``slicer.ScriptedLoadableModule`` and
``slicer.parameterNodeWrapper`` are stubbed (Testing/slicer_stubs), for this file only; model,
markups, transform, table and plot nodes, storage nodes and the markups logic are Slicer's own
code. The tests build a tiny random model and a face surface from the shipped face template, so
they need neither the default model nor the ICT-FaceKit file. The panel itself is tested in
test_slicer_widget.py.
"""
import ast
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import time
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from palnet.engine import NetworkConfig, expected_weight_shapes  # noqa: E402
from palnet.mesh_io import mesh_to_polydata, write_mesh  # noqa: E402
from palnet.landmark_io import read_landmarks, split_description  # noqa: E402
from palnet.modelfile import Model, save_model  # noqa: E402
from palnet.progress import event_line  # noqa: E402
from palnet.protocol import Protocol, default_protocol  # noqa: E402
from palnet.resources import default_model_path, face_template_path, sample_landmarks_path, sample_scan_path  # noqa
from palnet.datatypes import Mesh  # noqa: E402
from palnet.train import epoch_line  # noqa: E402

TESTING = Path(__file__).resolve().parent
REPO = TESTING.parent
MODULE_DIR = REPO / "PALNetLandmarks"
MODULE_FILE = MODULE_DIR / "PALNetLandmarks.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "PALNetLandmarks.ui"
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def plm(slicer_module_coverage):
    """The PALNetLandmarks module, imported with the stubs in place; everything restored afterwards."""
    pytest.importorskip("PyQt5", reason="the Qt binding of the test extras (child processes are QProcess)")
    spec = importlib.util.spec_from_file_location("palnet_test_slicer_stubs", TESTING / "slicer_stubs" / "__init__.py")
    stubs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stubs)
    stubs.application()
    saved_path = list(sys.path)
    with stubs.installed(), slicer_module_coverage():
        sys.path.insert(0, str(MODULE_DIR))
        try:
            yield importlib.import_module("PALNetLandmarks")
        finally:
            sys.path[:] = saved_path
            for name in [n for n in sys.modules if n == "PALNetLandmarks" or n.startswith("PALNetLandmarksLib")]:
                sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def face():
    """A face surface in the canonical frame (mm): the shipped template points, triangulated."""
    from scipy.spatial import Delaunay
    with np.load(face_template_path(), allow_pickle=False) as d:
        points = d["points"].astype(np.float64)
    tri = Delaunay(points[:, :2]).simplices
    longest = np.linalg.norm(points[tri] - points[np.roll(tri, 1, axis=1)], axis=2).max(axis=1)
    return Mesh(points, tri[longest < 12.0])


def tiny_model(face, labels=None, protocol=None, seed=0):
    """A random, small network with the metadata palnet.train writes."""
    protocol = protocol or default_protocol()
    labels = labels or protocol.labels
    config = NetworkConfig(n_landmarks=len(labels), patch_size=100, widths=(8, 16), pools=(5, 5), fc=32)
    rng = np.random.default_rng(seed)
    weights = {k: rng.normal(scale=0.05, size=s) for k, s in expected_weight_shapes(config).items()}
    on_face = rng.choice(face.n_vertices, len(labels), replace=False)
    metadata = {"protocol": dict(protocol.to_dict(), labels=list(labels)), "units": "mm",
                "template": face.vertices.tolist(), "mean_landmarks": face.vertices[on_face].tolist(),
                "patch": {"spacing_mm": 1.0, "scale_mm": 20.0}, "refine_steps": 1,
                "accuracy": {"validation": {"pointwise_mm": 1.5, "distancewise_mm": 1.2}, "n": 3}}
    return Model(weights, config, metadata)


@pytest.fixture(scope="module")
def model_path(face, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.npz"
    save_model(path, tiny_model(face))
    return str(path)


def pose_matrix(degrees=(25.0, -40.0, 70.0), shift=(31.5, -12.25, 140.0)):
    from scipy.spatial.transform import Rotation
    m = np.eye(4)
    m[:3, :3] = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    m[:3, 3] = shift
    return m


def model_node_from_mesh(scene, mesh, name="face"):
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    node.SetAndObservePolyData(mesh_to_polydata(mesh))
    node.CreateDefaultDisplayNodes()
    return node


def load_model_file(scene, path):
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", Path(path).stem)
    storage = scene.AddNewNodeByClass("vtkMRMLModelStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(node), "Slicer could not read {}".format(path)
    assert storage.GetCoordinateSystem() == slicer.vtkMRMLStorageNode.CoordinateSystemLPS
    return node


def world_surface(model_node):
    """The model's surface in world coordinates, computed with VTK directly (not with the module)."""
    import vtk
    polydata = model_node.GetPolyData()
    transform_node = model_node.GetParentTransformNode()
    if transform_node is None:
        return polydata
    matrix = vtk.vtkMatrix4x4()
    transform_node.GetMatrixTransformToWorld(matrix)
    transform = vtk.vtkTransform()
    transform.SetMatrix(matrix)
    f = vtk.vtkTransformPolyDataFilter()
    f.SetTransform(transform)
    f.SetInputData(polydata)
    f.Update()
    return f.GetOutput()


def distances_to_surface(points, polydata):
    import vtk
    locator = vtk.vtkCellLocator()
    locator.SetDataSet(polydata)
    locator.BuildLocator()
    out = []
    for p in points:
        closest, cell, sub, d2 = [0.0, 0.0, 0.0], vtk.reference(0), vtk.reference(0), vtk.reference(0.0)
        locator.FindClosestPoint(list(p), closest, cell, sub, d2)
        out.append(np.sqrt(float(d2)))
    return np.array(out)


def point_list(node):
    n = node.GetNumberOfControlPoints()
    world = np.zeros((n, 3))
    for i in range(n):
        node.GetNthControlPointPositionWorld(i, world[i])
    return ([node.GetNthControlPointLabel(i) for i in range(n)],
            [node.GetNthControlPointDescription(i) for i in range(n)], world,
            [bool(node.GetNthControlPointLocked(i)) for i in range(n)])


def fiducial_nodes(scene):
    return [scene.GetNthNodeByClass(i, "vtkMRMLMarkupsFiducialNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode"))]


# ---------------------------------------------------------------- process

def test_model_read_from_file_gets_landmarks_on_its_surface(plm, mrml_scene, face, model_path, tmp_path):
    scan_lps = face.transformed(pose_matrix())
    write_mesh(scan_lps, tmp_path / "scan.ply")
    model_node = load_model_file(mrml_scene, tmp_path / "scan.ply")
    # The file is LPS; the scene shows it in RAS.
    ras = slicer.util.arrayFromModelPoints(model_node)
    np.testing.assert_allclose(ras * LPS_TO_RAS, scan_lps.vertices, atol=1e-3)

    logic = plm.PALNetLandmarksLogic()
    node = logic.process(model_node, modelPath=model_path)  # the default snap, as the command line's
    labels, descriptions, world, locked = point_list(node)
    protocol = default_protocol()
    assert labels == protocol.labels
    # each description is "<full name>; confidence <c>", as palnet writes into files
    assert [split_description(d)[0] for d in descriptions] == [protocol.definition(lab).name for lab in labels]
    assert all(0.0 <= split_description(d)[1] <= 1.0 for d in descriptions)
    assert not any(locked)
    assert distances_to_surface(world, world_surface(model_node)).max() < 0.01
    assert logic.lastPrediction.status == "ok"
    assert logic.lastSeconds > 0 and node.GetAttribute("PALNet.status") == "ok"

    # The command line's landmark file for the same mesh file lands on the same points in Slicer.
    from palnet.batch import predict_files
    from palnet.modelfile import load_model
    rows = predict_files([str(tmp_path / "scan.ply")], tmp_path / "cli", load_model(model_path))
    cli_ras = read_landmarks(rows[0].output).points * LPS_TO_RAS
    assert np.abs(cli_ras - world).max() < 1e-4


def test_parent_transform_is_applied_and_node_left_alone(plm, mrml_scene, face, model_path):
    logic = plm.PALNetLandmarksLogic()
    plain = model_node_from_mesh(mrml_scene, face, "plain")
    reference = point_list(logic.process(plain, modelPath=model_path))[2]

    moved = model_node_from_mesh(mrml_scene, face, "moved")
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = pose_matrix((10.0, 55.0, -30.0), (-70.0, 25.0, 300.0))
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(m))
    moved.SetAndObserveTransformNodeID(transform.GetID())
    before = slicer.util.arrayFromModelPoints(moved).copy()

    node = logic.process(moved, modelPath=model_path)
    world = point_list(node)[2]
    assert distances_to_surface(world, world_surface(moved)).max() < 0.01
    # The same landmarks as without the transform, moved with it (the answer moves with any rigid motion).
    expected = reference @ m[:3, :3].T + m[:3, 3]
    assert np.linalg.norm(world - expected, axis=1).max() < 0.05
    # The transform is applied to a copy: the node keeps its points and its transform.
    np.testing.assert_array_equal(slicer.util.arrayFromModelPoints(moved), before)
    assert moved.GetTransformNodeID() == transform.GetID()

    # A point list that is itself under a transform still gets world positions on the surface.
    under = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "under transform")
    other = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    other.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(pose_matrix((0, 0, 90), (5, 6, 7))))
    under.SetAndObserveTransformNodeID(other.GetID())
    logic.process(moved, under, modelPath=model_path)
    np.testing.assert_allclose(point_list(under)[2], world, atol=1e-6)


def test_nonlinear_parent_transform_is_applied(plm, mrml_scene, face, model_path):
    import vtk
    source, target = vtk.vtkPoints(), vtk.vtkPoints()
    rng = np.random.default_rng(2)
    anchors = face.vertices[rng.choice(face.n_vertices, 8, replace=False)]
    for p in anchors:
        source.InsertNextPoint(*p)
        target.InsertNextPoint(*(p + rng.normal(0, 4.0, 3) + [10.0, -5.0, 20.0]))
    warp = vtk.vtkThinPlateSplineTransform()
    warp.SetSourceLandmarks(source)
    warp.SetTargetLandmarks(target)
    warp.SetBasisToR()
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    transform.SetAndObserveTransformToParent(warp)
    node = model_node_from_mesh(mrml_scene, face)
    node.SetAndObserveTransformNodeID(transform.GetID())

    world = point_list(plm.PALNetLandmarksLogic().process(node, modelPath=model_path))[2]
    warped = np.array([warp.TransformPoint(*p) for p in face.vertices])  # computed here, point by point
    surface = mesh_to_polydata(Mesh(warped, face.triangles))
    assert np.abs(warped - face.vertices).max() > 5.0  # the warp really moves the surface
    assert distances_to_surface(world, surface).max() < 0.01


def test_point_list_saves_and_reloads_identical(plm, mrml_scene, face, model_path, tmp_path):
    logic = plm.PALNetLandmarksLogic()
    model_node = model_node_from_mesh(mrml_scene, face.transformed(pose_matrix()))
    node = logic.process(model_node, modelPath=model_path, snap="surface", lockPoints=True)
    labels, descriptions, world, locked = point_list(node)
    assert all(locked)

    path = tmp_path / "landmarks.mrk.json"
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode")
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    back = mrml_scene.GetNodeByID(mrml_scene.markups_logic.LoadMarkups(str(path)))
    back_labels, back_descriptions, back_world, back_locked = point_list(back)
    assert back_labels == labels and back_descriptions == descriptions and back_locked == locked
    np.testing.assert_allclose(back_world, world, atol=1e-6)
    # palnet reads Slicer's file (LPS) back to the same points.
    lm = read_landmarks(path)
    assert lm.labels == labels
    np.testing.assert_allclose(lm.points * LPS_TO_RAS, world, atol=1e-6)


def test_given_list_is_refilled_and_others_untouched(plm, mrml_scene, face, model_path):
    logic = plm.PALNetLandmarksLogic()
    model_node = model_node_from_mesh(mrml_scene, face)
    mine = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "mine")
    for i in range(3):
        mine.AddControlPoint(float(i), 2.0, 3.0, "old{}".format(i))
    keep = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "keep")
    keep.AddControlPoint(1.0, 2.0, 3.0, "K1")
    keep.AddControlPoint(-4.0, 5.5, 6.0, "K2")
    keep_before = point_list(keep)
    n_lists = len(fiducial_nodes(mrml_scene))

    result = logic.process(model_node, mine, modelPath=model_path)
    assert result is mine
    assert point_list(mine)[0] == default_protocol().labels
    assert len(fiducial_nodes(mrml_scene)) == n_lists
    after = point_list(keep)
    assert after[:2] == keep_before[:2] and after[3] == keep_before[3]
    np.testing.assert_array_equal(after[2], keep_before[2])

    # Without an output node every call creates a new list and leaves earlier ones alone.
    first = logic.process(model_node, modelPath=model_path)
    first_points = point_list(first)[2].copy()
    second = logic.process(model_node, modelPath=model_path)
    assert second.GetID() != first.GetID() and second.GetID() != mine.GetID()
    assert len(fiducial_nodes(mrml_scene)) == n_lists + 2
    np.testing.assert_array_equal(point_list(first)[2], first_points)


def test_point_size_follows_the_scan_and_units(plm, mrml_scene, face, model_path):
    logic = plm.PALNetLandmarksLogic()
    for scale, units in ((1.0, "mm"), (0.001, "m")):
        mesh = Mesh(face.vertices * scale, face.triangles)
        node = logic.process(model_node_from_mesh(mrml_scene, mesh), modelPath=model_path)
        display = node.GetDisplayNode()
        diagonal = np.linalg.norm(mesh.vertices.max(0) - mesh.vertices.min(0))
        assert not display.GetUseGlyphScale()
        assert display.GetGlyphSize() == pytest.approx(0.015 * diagonal)
        assert logic.lastPrediction.units == units
        assert distances_to_surface(point_list(node)[2], mesh_to_polydata(mesh)).max() < 0.01 * scale


def test_custom_protocol_drives_the_labels(plm, mrml_scene, face, tmp_path):
    labels = ["nose_tip", "eye_R", "eye_L", "chin", "mouth_R", "mouth_L"]
    protocol = Protocol.from_labels(labels, name="mine")
    path = tmp_path / "custom.npz"
    save_model(path, tiny_model(face, labels, protocol, seed=3))
    logic = plm.PALNetLandmarksLogic()
    node = logic.process(model_node_from_mesh(mrml_scene, face), modelPath=str(path))
    assert point_list(node)[0] == labels
    assert [r["label"] for r in logic.lastResultRows()] == labels
    info = logic.modelInfo(str(path))
    assert info["protocol"] == "mine" and info["landmarks"] == 6 and info["patchSize"] == 100


def test_results_rows_and_model_info(plm, mrml_scene, face, model_path, tmp_path):
    logic = plm.PALNetLandmarksLogic()
    assert logic.lastResultRows() == []
    logic.process(model_node_from_mesh(mrml_scene, face), modelPath=model_path)
    rows = logic.lastResultRows()
    protocol = default_protocol()
    assert len(rows) == 50
    assert rows[3]["label"] == "prn" and rows[3]["name"] == protocol.definition("prn").name
    assert rows[3]["definition"] == protocol.definition("prn").definition
    assert rows[3]["color"] == protocol.color_of("prn") and 0.0 <= rows[3]["confidence"] <= 1.0
    info = logic.modelInfo(model_path)
    assert info["landmarks"] == 50 and info["patchSize"] == 100 and "1.50 mm point-wise" in info["accuracy"]
    assert info["accuracy"].endswith("(validation)")
    cross = tiny_model(face)
    cross.metadata["accuracy"]["out_of_fold"] = True  # as palnet train --folds saves it
    save_model(tmp_path / "cv.npz", cross)
    assert logic.modelInfo(tmp_path / "cv.npz")["accuracy"].endswith("(cross-validation)")
    html = plm.PALNetLandmarksLogic.modelInfoHtml(info)
    assert "Patch size" in html and "palnet50" in html


def test_bad_input_is_one_clear_error(plm, mrml_scene, face, model_path, tmp_path):
    from palnet.errors import PalnetError
    logic = plm.PALNetLandmarksLogic()
    empty = mrml_scene.AddNewNodeByClass("vtkMRMLModelNode", "empty")
    with pytest.raises(PalnetError, match="empty: the model has no surface"):
        logic.process(empty, modelPath=model_path)
    with pytest.raises(ValueError):
        logic.process(None, modelPath=model_path)
    node = model_node_from_mesh(mrml_scene, face)
    with pytest.raises(ValueError, match="snap"):
        logic.process(node, modelPath=model_path, snap="closest")
    for bad in (0, 9, 1.5, True, "2"):
        with pytest.raises(ValueError, match="Samplings must be a whole number from 1 to 8"):
            logic.process(node, modelPath=model_path, samplings=bad)
    with pytest.raises(PalnetError, match="model file not found"):
        logic.process(node, modelPath=str(tmp_path / "nope.npz"))
    curve = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode")
    with pytest.raises(ValueError, match="point list"):
        logic.process(node, curve, modelPath=model_path)
    assert fiducial_nodes(mrml_scene) == []  # a failed run leaves no half-made point list


def test_apply_is_blocked_with_a_reason(plm, mrml_scene, face, model_path, tmp_path):
    logic = plm.PALNetLandmarksLogic()
    params = types.SimpleNamespace(inputModel=None, modelFile=model_path)
    assert "Select the surface model" in logic.applyBlocker(params)
    params.inputModel = mrml_scene.AddNewNodeByClass("vtkMRMLModelNode", "hollow")
    assert "has no surface" in logic.applyBlocker(params)
    params.inputModel = model_node_from_mesh(mrml_scene, face)
    assert logic.applyBlocker(params) is None
    params.modelFile = str(tmp_path / "missing.npz")
    assert "Model file not found" in logic.applyBlocker(params)
    params.modelFile = ""
    assert (logic.applyBlocker(params) is None) == default_model_path().exists()
    assert logic.applyBlocker(None) is not None


def test_first_surface_model_skips_hidden_and_empty_models(plm, mrml_scene, face):
    logic = plm.PALNetLandmarksLogic
    assert logic.firstSurfaceModel(mrml_scene) is None
    hidden = model_node_from_mesh(mrml_scene, face, "Red Volume Slice")
    hidden.SetHideFromEditors(True)
    mrml_scene.AddNewNodeByClass("vtkMRMLModelNode", "no surface yet")
    visible = model_node_from_mesh(mrml_scene, face, "scan")
    assert logic.firstSurfaceModel(mrml_scene) is visible


def test_model_is_loaded_once_and_reloaded_when_changed(plm, face, tmp_path):
    logic = plm.PALNetLandmarksLogic()
    path = tmp_path / "m.npz"
    save_model(path, tiny_model(face, seed=1))
    first = logic.loadModel(str(path))
    assert plm.PALNetLandmarksLogic().loadModel(str(path)) is first  # shared by logic instances
    save_model(path, tiny_model(face, seed=2))
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))
    second = logic.loadModel(str(path))
    assert second is not first
    assert not np.array_equal(second.weights["out.bias"], first.weights["out.bias"])


def test_batch_reports_a_broken_file_and_finishes(plm, face, model_path, tmp_path):
    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    write_mesh(face.transformed(pose_matrix()), scans / "a.ply")
    write_mesh(face.transformed(pose_matrix((0, 180, 0), (0, 0, 0))), scans / "sub" / "c.stl")
    (scans / "b.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\nend_header\n\x00\x01")
    calls = []
    logic = plm.PALNetLandmarksLogic()
    rows = logic.processDirectory(str(scans), str(tmp_path / "out"), "fcsv",
                                  progress=lambda *a: calls.append(a), modelPath=model_path)
    status = {r.scan: r.status for r in rows}
    assert status["a"] == "ok" and status["b"] == "error"
    assert status["c"] in ("ok", "partial")  # upside down: the random model may miss a landmark's surroundings
    bad = next(r for r in rows if r.scan == "b")
    assert "b.ply" in bad.message
    assert (tmp_path / "out" / "a.fcsv").exists() and (tmp_path / "out" / "sub" / "c.fcsv").exists()
    summary = (tmp_path / "out" / "palnet_summary.csv").read_text()
    assert summary.count("\n") == 4 and "error" in summary
    assert [c[0] for c in calls] == [1, 2, 3]
    assert plm.PALNetLandmarksLogic.batchSummary(rows).startswith("3 scans: 2 done, 0 not a face, 0 skipped, 1 failed")
    # A second run keeps existing outputs.
    again = logic.processDirectory(str(scans), str(tmp_path / "out"), "fcsv", modelPath=model_path)
    assert [r.status for r in again] == ["skipped", "error", "skipped"]
    from palnet.errors import PalnetError
    with pytest.raises(PalnetError, match="input folder not found"):
        logic.processDirectory(str(tmp_path / "nothing"), str(tmp_path / "out"), modelPath=model_path)


def test_batch_counts_scans_that_are_not_a_face_and_tells_slicer_users_what_to_do(plm, face, model_path, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    write_mesh(face.transformed(pose_matrix()), scans / "a.ply")
    top = face.vertices[:, 1] > np.percentile(face.vertices[:, 1], 70)  # a strip of forehead: not a face
    triangles = face.triangles[top[face.triangles].all(axis=1)]
    write_mesh(Mesh(face.vertices[top], (np.cumsum(top) - 1)[triangles]), scans / "forehead.ply")
    rows = plm.PALNetLandmarksLogic().processDirectory(str(scans), str(tmp_path / "out"), modelPath=model_path)
    assert [(r.scan, r.status) for r in rows] == [("a", "ok"), ("forehead", "not a face")]
    rejected = rows[1]
    assert rejected.output == "" and not (tmp_path / "out" / "forehead.mrk.json").exists()
    assert "--" not in rejected.message and "Apply" in rejected.message  # no command-line option in Slicer
    assert "--keep-rejected" not in (tmp_path / "out" / "palnet_summary.csv").read_text()
    assert plm.PALNetLandmarksLogic.batchSummary(rows) == "2 scans: 1 done, 1 not a face, 0 skipped, 0 failed"


# ---------------------------------------------------------------- training

EPOCHS = [
    {"epoch": 1, "loss": 14.02, "val_pointwise_mm": 9.1, "val_distancewise_mm": 7.003, "lr": 0.001, "seconds": 0.9,
     "best": True},
    {"epoch": 2, "loss": 12.5, "val_pointwise_mm": 9.35, "val_distancewise_mm": 6.8, "lr": 0.001, "seconds": 0.8,
     "best": False},
    {"epoch": 12, "loss": 3.25, "val_pointwise_mm": 2.5, "val_distancewise_mm": 1.75, "lr": 0.0005, "seconds": 12.0,
     "best": True},
]
# What palnet train --events prints for each epoch: its log line, then its event line.
EPOCH_LINES = [line for e in EPOCHS for line in (epoch_line(e), event_line("epoch", **e))]


def test_training_log_parser(plm):
    parse = plm.training.parseEpochLine
    assert [parse(line) for line in EPOCH_LINES[1::2]] == EPOCHS  # the event lines, number for number
    assert EPOCH_LINES[0] == "epoch   1  loss 14.020  val point-wise 9.100 mm  distance-wise 7.003 mm  lr 0.001  0.9 s  *"
    assert parse(event_line("epoch", **dict(EPOCHS[1], lr=1.6e-05)))["lr"] == pytest.approx(1.6e-05)
    assert np.isnan(parse(event_line("epoch", **dict(EPOCHS[0], loss=float("nan"))))["loss"])
    for other in EPOCH_LINES[::2] + [
            "", "training on 8 scans, validating on 2", "resumed from x.ckpt at epoch 4",
            "preprocess [####......] 3/10  2s elapsed, 5s left", "stopping: no improvement for 30 epochs",
            "validation: point-wise 1.234 mm, distance-wise 0.987 mm", "epoch 3 loss", "@palnet not JSON",
            event_line("stage", stage="alignment"), event_line("epoch", epoch=3), "@palnet [1, 2]"]:
        assert parse(other) is None, other
    assert plm.training.parseErrorLine("palnet train: error: data: found 1 (scan, landmark file) pairs") == \
        "data: found 1 (scan, landmark file) pairs"
    assert plm.training.parseErrorLine("epoch 1 ...") is None


def fake_trainer(tmp_path, body):
    script = tmp_path / "fake_train.py"
    script.write_text(textwrap.dedent(body))
    return [sys.executable, "-u", str(script)]


def test_training_process_fills_table_and_plot(plm, mrml_scene, tmp_path):
    lines = EPOCH_LINES + ["saved model.npz"]
    command = fake_trainer(tmp_path, """
        import sys, time
        print("training on 8 scans, validating on 2")
        print("preprocess [##....] 1/3\\rpreprocess [######] 3/3", file=sys.stderr)
        for line in {lines!r}:
            print(line)
            time.sleep(0.02)
    """.format(lines=lines))
    seen, done = [], []
    logic = plm.PALNetLandmarksLogic()
    run = logic.startTrainingProcess(command, str(tmp_path / "model.npz"), progress=lambda row, line: seen.append(
        (row is not None, line)), finished=lambda code, message: done.append((code, message)))
    assert run.timer.isActive() and run.running
    assert run.wait(30) == 0
    assert not run.timer.isActive() and not run.running
    assert done == [(0, run.message)] and "finished after 3 epochs" in run.message
    # Carriage-return redraws arrive as separate lines (text mode reads universal newlines).
    assert [line for _, line in seen][:3] == ["training on 8 scans, validating on 2", "preprocess [##....] 1/3",
                                              "preprocess [######] 3/3"]
    assert sum(is_epoch for is_epoch, _ in seen) == 3
    table = run.tableNode.GetTable()
    columns = [table.GetColumn(c).GetName() for c in range(table.GetNumberOfColumns())]
    assert columns == list(plm.training.EPOCH_COLUMNS)
    assert table.GetNumberOfRows() == 3
    assert [table.GetValue(r, 0).ToDouble() for r in range(3)] == [1, 2, 12]
    assert table.GetValue(2, 2).ToDouble() == pytest.approx(2.5)
    chart = run.chartNode
    assert chart.GetNumberOfPlotSeriesNodes() == 3
    series = [chart.GetNthPlotSeriesNode(i) for i in range(3)]
    assert {s.GetYColumnName() for s in series} == {"loss", "val_pointwise_mm", "val_distancewise_mm"}
    assert all(s.GetTableNodeID() == run.tableNode.GetID() and s.GetXColumnName() == "epoch" for s in series)
    assert run.poll() is False and done == [(0, run.message)]  # finished is reported once


def test_training_failure_and_stop(plm, mrml_scene, tmp_path):
    logic = plm.PALNetLandmarksLogic()
    failing = fake_trainer(tmp_path, """
        import sys
        print("palnet train: error: /data: found 1 (scan, landmark file) pairs; training needs at least 2",
              file=sys.stderr)
        sys.exit(2)
    """)
    run = logic.startTrainingProcess(failing, str(tmp_path / "m.npz"))
    assert run.wait(30) == 2
    assert "exit status 2" in run.message and "training needs at least 2" in run.message

    slow = fake_trainer(tmp_path, """
        import time
        for line in {lines!r}:
            print(line)
        time.sleep(60)
    """.format(lines=EPOCH_LINES[:2]))
    run = logic.startTrainingProcess(slow, str(tmp_path / "m.npz"))
    deadline = time.monotonic() + 20
    while not run.history and time.monotonic() < deadline:
        run.poll()
        time.sleep(0.02)
    start = time.monotonic()
    logic.stopTraining()
    assert run.wait(20) != 0
    assert time.monotonic() - start < 10
    assert run.stopRequested and "stopped after 1 epochs" in run.message and "m.npz.ckpt" in run.message
    logic.stopTraining()  # nothing left to stop


def test_training_command_runs_palnets_own_command_line(plm, tmp_path):
    command = plm.training.trainingCommand(sys.executable, str(MODULE_DIR), str(tmp_path / "data"),
                                           str(tmp_path / "out.npz"), 7, ["--val-split", "0.5"])
    assert command[command.index("train"):] == ["train", str(tmp_path / "data"), "-o", str(tmp_path / "out.npz"),
                                                 "--events", "--epochs", "7", "--val-split", "0.5"]
    # The bootstrap imports palnet from the module folder, even where palnet is not installed.
    help_command = command[:command.index("train")] + ["train", "--help"]
    env = dict(os.environ, PYTHONPATH="", PYTHONNOUSERSITE="1")
    out = subprocess.run(help_command, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--epochs" in out.stdout and "--events" in out.stdout


def test_train_checks_its_inputs_before_starting(plm, mrml_scene, tmp_path, monkeypatch):
    from palnet.errors import PalnetError
    logic = plm.PALNetLandmarksLogic()
    with pytest.raises(PalnetError, match="dataset folder not found"):
        logic.train(str(tmp_path / "none"), str(tmp_path / "m.npz"))
    with pytest.raises(PalnetError, match="does not exist"):
        logic.train(str(tmp_path), str(tmp_path / "no" / "m.npz"))
    monkeypatch.setattr(plm.PALNetLandmarksLogic, "ensureTorch", lambda self, ask=True: False)
    with pytest.raises(RuntimeError, match="PyTorch"):
        logic.train(str(tmp_path), str(tmp_path / "m.npz"))
    assert logic.trainingRun is None


def test_ensure_torch_asks_before_installing(plm, monkeypatch):
    logic = plm.PALNetLandmarksLogic()
    monkeypatch.setattr(plm.PALNetLandmarksLogic, "torchAvailable", staticmethod(lambda: True))
    assert logic.ensureTorch() is True  # nothing asked, nothing installed
    monkeypatch.setattr(plm.PALNetLandmarksLogic, "torchAvailable", staticmethod(lambda: False))
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # the PyTorch extension is not installed
    asked, installed = [], []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *a, **k: asked.append(a) or False)
    monkeypatch.setattr(slicer.util, "pip_install", lambda req: installed.append(req))
    assert logic.ensureTorch() is False
    assert len(asked) == 1 and installed == []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *a, **k: True)
    logic.ensureTorch()
    assert len(installed) == 1 and installed[0].startswith("torch")

    class FakePyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None):
            installed.append(("PyTorchUtils", askConfirmation, forceComputationBackend))
            return None  # the user cancelled

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FakePyTorchUtilsLogic))
    assert logic.ensureTorch() is False
    assert installed[-1] == ("PyTorchUtils", True, "cpu")


def test_train_passes_augmented_copies_on(plm, mrml_scene, tmp_path, monkeypatch):
    logic = plm.PALNetLandmarksLogic()
    monkeypatch.setattr(logic, "ensureTorch", lambda ask=True: True)
    monkeypatch.setattr(logic, "startTrainingProcess", lambda command, *a, **k: command)
    (tmp_path / "data").mkdir()
    command = logic.train(str(tmp_path / "data"), str(tmp_path / "m.npz"), epochs=3, augmentCopies=2,
                          extraArgs=["--val-split", "0.3"])
    assert command[-6:] == ["--epochs", "3", "--augment", "2", "--val-split", "0.3"]
    assert "--augment" not in logic.train(str(tmp_path / "data"), str(tmp_path / "m.npz"), epochs=3)


def test_training_end_to_end_with_palnet_train(plm, mrml_scene, face, tmp_path):
    """The real ``palnet train`` in a background process: two tiny epochs on three scans."""
    pytest.importorskip("torch")
    from palnet.landmark_io import write_landmarks
    from palnet.datatypes import Landmarks
    rng = np.random.default_rng(5)
    labels = default_protocol().labels
    truth = face.vertices[rng.choice(face.n_vertices, len(labels), replace=False)]
    data = tmp_path / "data"
    for k in range(3):
        m = pose_matrix(tuple(rng.uniform(-20, 20, 3)), tuple(rng.uniform(-50, 50, 3)))
        (data / "s{}".format(k)).mkdir(parents=True)
        write_mesh(face.transformed(m), data / "s{}".format(k) / "scan.ply")
        write_landmarks(Landmarks(labels, truth @ m[:3, :3].T + m[:3, 3]), data / "s{}".format(k) / "landmarks.mrk.json")
    config = tmp_path / "tiny.json"
    config.write_text('{"network": {"patch_size": 100, "fc": 16, "widths": [8, 16], "pools": [5, 5]}, '
                      '"refine_steps": 1, "batch_size": 2}')
    logic = plm.PALNetLandmarksLogic()
    out = tmp_path / "trained.npz"
    run = logic.train(str(data), str(out), epochs=2, extraArgs=["--config", str(config), "--val-split", "0.34"],
                      askConfirmation=False)
    assert run.wait(120) == 0, "\n".join(run.log)
    assert [row["epoch"] for row in run.history] == [1, 2]
    assert run.tableNode.GetTable().GetNumberOfRows() == 2
    assert out.exists()
    node = logic.process(model_node_from_mesh(mrml_scene, face), modelPath=str(out))
    assert node.GetNumberOfControlPoints() == 50


# ---------------------------------------------------------------- module, parameter node, .ui

def test_module_texts(plm):
    parent = types.SimpleNamespace()
    plm.PALNetLandmarks(parent)
    assert parent.title == "PAL-Net Landmarks"
    assert parent.categories == ["Shape Analysis"]
    assert plm.DOCS_URL in parent.helpText and "50 soft-tissue landmarks" in parent.helpText
    assert "12 midline, 19 bilateral pairs" in parent.helpText
    ack = parent.acknowledgementText
    for needed in ("arXiv:2510.00910", "Informatics in Medicine Unlocked 60 (2026)", "ICT-FaceKit",
                   "Copyright (c) 2020 USC Institute for Creative Technologies", "MIT"):
        assert needed in ack, needed


def parameter_fields(plm):
    return dict(plm.PALNetLandmarksParameterNode.__annotations__)


def test_parameter_node_fields(plm):
    fields = parameter_fields(plm)
    assert list(fields) == ["inputModel", "outputPointList", "modelFile", "snap", "units", "lockPoints", "samplings",
                            "batchInputFolder", "batchOutputFolder", "batchFormat", "batchOverwrite",
                            "trainingDataFolder", "trainingEpochs", "trainingAugmentCopies", "trainingOutputModel"]
    assert [name for name, a in fields.items() if a is Path] == list(plm.PATH_PARAMETERS)
    params = plm.PALNetLandmarksParameterNode(slicer.vtkMRMLScriptedModuleNode())  # the defaults
    for name, annotation in fields.items():
        for extra in getattr(annotation, "__metadata__", ()):
            if isinstance(extra, sys.modules["slicer.parameterNodeWrapper"].Choice):
                assert getattr(params, name) in extra.choices, name
    from palnet.options import DEFAULT_SNAP
    assert params.snap == DEFAULT_SNAP == "surface" and params.units == "auto" and params.batchFormat == "mrk.json"
    assert params.samplings == 1
    assert all(plm.pathOrNone(getattr(params, name)) is None for name in plm.PATH_PARAMETERS)  # unset: Path(".")
    from palnet.landmark_io import LANDMARK_FORMATS
    from palnet.snap import SNAP_METHODS
    assert set(plm.SNAP_CHOICES) <= set(SNAP_METHODS) and plm.FORMAT_CHOICES == list(LANDMARK_FORMATS)


def ui_widgets():
    root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    return root, widgets


def test_ui_has_every_widget_the_code_uses():
    root, widgets = ui_widgets()
    assert root.find("class").text == "PALNetLandmarks"
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the module refers to no .ui widget?"
    missing = sorted(used - set(widgets))
    assert not missing, "widgets used in PALNetLandmarks.py but missing from {}: {}".format(UI_FILE.name, missing)
    assert len(widgets) == len(list(root.iter("widget"))), "duplicate widget names in the .ui"


# What the parameter node wrapper can bind (Slicer's guiConnectors: exact widget classes).
BINDABLE = {"str": {"QLineEdit", "QLabel", "QTextEdit"}, "bool": {"QCheckBox", "ctkCheckBox", "QPushButton"},
            "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
            "int": {"QSpinBox", "QSlider", "QDoubleSpinBox", "ctkSliderWidget"},
            "choice": {"QComboBox", "ctkComboBox"}, "node": {"qMRMLNodeComboBox"}}


def binding_kind(plm, annotation):
    choice = sys.modules["slicer.parameterNodeWrapper"].Choice
    base = getattr(annotation, "__origin__", annotation)
    if any(isinstance(x, choice) for x in getattr(annotation, "__metadata__", ())):
        return "choice"
    if isinstance(base, type) and base.__name__.startswith("vtkMRML"):
        return "node"
    return base.__name__


def test_ui_bindings_name_parameter_fields(plm):
    _, widgets = ui_widgets()
    fields = parameter_fields(plm)
    bound = {}
    for name, w in widgets.items():
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                assert p.get("stdset") == "0", name
                bound[p.find("string").text] = w
    unknown = sorted(set(bound) - set(fields))
    assert not unknown, "SlicerParameterName values that are no parameter node field: {}".format(unknown)
    assert sorted(set(fields) - set(bound)) == [], "parameters without a widget"
    for param, w in bound.items():
        kind = binding_kind(plm, fields[param])
        assert w.get("class") in BINDABLE[kind], "{}: a {} cannot show a {} parameter".format(
            w.get("name"), w.get("class"), kind)
        if kind == "node":
            types_ = [s.text for s in w.find("property[@name='nodeTypes']").iter("string")]
            assert types_ == [fields[param].__name__]


def test_ui_mrml_widgets_get_the_scene():
    root, widgets = ui_widgets()
    mrml_widgets = {n for n, w in widgets.items() if w.get("class").startswith("qMRML") and w.get("class") != "qMRMLWidget"}
    connected = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("signal").text == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.find("slot").text == "setMRMLScene(vtkMRMLScene*)" and c.find("sender").text == "PALNetLandmarks"}
    assert mrml_widgets and mrml_widgets <= connected
    declared = {c.find("class").text for c in root.iter("customwidget")}
    builtin = {"QLabel", "QLineEdit", "QToolButton", "QPushButton", "QComboBox", "QCheckBox", "QSpinBox",
               "QProgressBar", "QPlainTextEdit", "QTableWidget"}
    assert {w.get("class") for w in widgets.values()} - builtin <= declared


# ---------------------------------------------------------------- Python versions

def test_python39_compatible():
    vermin = Path(sys.executable).parent / "vermin"
    if not vermin.exists():
        pytest.skip("vermin is not installed")
    out = subprocess.run([str(vermin), "-t=3.9-", "--no-tips", "--violations", "--eval-annotations", str(MODULE_DIR)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    # vermin misses `X | Y` in annotations, which Python 3.9 evaluates (and rejects) at definition time.
    offenders = []
    for path in sorted(MODULE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
               for n in tree.body):
            continue
        annotations = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs + node.args.posonlyargs
                annotations += [a.annotation for a in args if a.annotation] + ([node.returns] if node.returns else [])
            elif isinstance(node, ast.AnnAssign):
                annotations.append(node.annotation)
        for a in annotations:
            if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(a)):
                offenders.append("{}:{}".format(path.relative_to(REPO), a.lineno))
    assert not offenders, "X | Y annotations need Python 3.10: {}".format(offenders)


# ---------------------------------------------------------------- the shipped model (when present)

@pytest.mark.skipif(not (default_model_path().exists() and sample_scan_path().exists()
                         and sample_landmarks_path().exists()),
                    reason="the default model or the sample scan is not built yet")
def test_default_model_on_the_sample_scan(plm, mrml_scene):
    """What PALNetLandmarksTest checks inside Slicer: the shipped model on the bundled sample."""
    model_node = load_model_file(mrml_scene, sample_scan_path())
    logic = plm.PALNetLandmarksLogic()
    node = logic.process(model_node)
    labels, _, world, _ = point_list(node)
    truth = read_landmarks(sample_landmarks_path()).select(labels).points * LPS_TO_RAS
    error = np.linalg.norm(world - truth, axis=1)
    assert logic.lastPrediction.status == "ok"
    assert error.mean() < 3.0
