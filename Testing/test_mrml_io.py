"""Files palnet writes open in a real MRML scene (slicer-core) exactly where they should.

Slicer reads headerless mesh files as LPS and shows them in RAS; landmark files
written by palnet for a mesh file must land on that mesh's surface in Slicer,
and point lists Slicer saves must read back with the same labels and LPS points.
"""
import numpy as np
import pytest

from palnet.mesh_io import read_landmarks, write_landmarks, write_mesh
from palnet.datatypes import Landmarks

pytest.importorskip("slicer")

VERTEX_IDS = [0, 7, 40, 123, 200, 311]


def load_model(scene, path):
    import slicer

    model = scene.AddNewNodeByClass("vtkMRMLModelNode")
    storage = scene.AddNewNodeByClass("vtkMRMLModelStorageNode")
    storage.SetFileName(str(path))
    model.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(model), "Slicer could not read {}".format(path)
    assert storage.GetCoordinateSystem() == slicer.vtkMRMLStorageNode.CoordinateSystemLPS
    from vtkmodules.util import numpy_support
    return numpy_support.vtk_to_numpy(model.GetPolyData().GetPoints().GetData()).astype(np.float64)


def control_points_world(node):
    ras = np.zeros((node.GetNumberOfControlPoints(), 3))
    for i in range(ras.shape[0]):
        node.GetNthControlPointPositionWorld(i, ras[i])
    labels = [node.GetNthControlPointLabel(i) for i in range(ras.shape[0])]
    return labels, ras


def nearest_distance(points, cloud):
    return np.sqrt(((points[:, None, :] - cloud[None, :, :]) ** 2).sum(-1)).min(axis=1)


@pytest.fixture
def on_vertices(bumpy_mesh):
    labels = ["n", "prn", "sn", "ls", "li", "pg"]
    return Landmarks(labels, bumpy_mesh.vertices[VERTEX_IDS], np.linspace(0.3, 0.9, 6),
                     ["Definition of {}".format(x) for x in labels])


@pytest.mark.parametrize("mesh_ext", [".ply", ".obj", ".vtk", ".vtp", ".stl"])
def test_model_files_are_read_as_lps(mrml_scene, tmp_path, bumpy_mesh, mesh_ext):
    path = tmp_path / ("scan" + mesh_ext)
    write_mesh(bumpy_mesh, path)
    ras = load_model(mrml_scene, path)
    lps = ras * np.array([-1.0, -1.0, 1.0])
    tol = 1e-4
    if mesh_ext == ".stl":
        assert nearest_distance(bumpy_mesh.vertices, lps).max() < tol
    else:
        np.testing.assert_allclose(lps, bumpy_mesh.vertices, atol=tol)


@pytest.mark.parametrize("fmt", ["mrk.json", "fcsv"])
def test_landmarks_land_on_the_model_in_slicer(mrml_scene, tmp_path, bumpy_mesh, on_vertices, fmt):
    mesh_path = tmp_path / "scan.ply"
    write_mesh(bumpy_mesh, mesh_path)
    model_ras = load_model(mrml_scene, mesh_path)

    lm_path = tmp_path / ("scan." + fmt)
    write_landmarks(on_vertices, lm_path)
    node_id = mrml_scene.markups_logic.LoadMarkups(str(lm_path))
    assert node_id, "Slicer could not load {}".format(lm_path)
    node = mrml_scene.GetNodeByID(node_id)
    labels, cp_ras = control_points_world(node)

    assert labels == on_vertices.labels
    assert nearest_distance(cp_ras, model_ras).max() < 1e-4
    np.testing.assert_allclose(cp_ras, model_ras[VERTEX_IDS], atol=1e-4)  # on *their* vertices
    desc = [node.GetNthControlPointDescription(i) for i in range(len(labels))]
    assert desc[0] == "Definition of n; confidence 0.3"


@pytest.mark.parametrize("save_as", ["mrk.json", "fcsv"])
def test_point_list_saved_by_slicer_reads_back(mrml_scene, tmp_path, on_vertices, save_as):
    lm_path = tmp_path / "ours.mrk.json"
    write_landmarks(on_vertices, lm_path)
    node = mrml_scene.GetNodeByID(mrml_scene.markups_logic.LoadMarkups(str(lm_path)))

    saved = tmp_path / ("saved." + save_as)
    storage_class = "vtkMRMLMarkupsJsonStorageNode" if save_as == "mrk.json" else "vtkMRMLMarkupsFiducialStorageNode"
    storage = mrml_scene.AddNewNodeByClass(storage_class)
    storage.SetFileName(str(saved))
    assert storage.WriteData(node)

    back = read_landmarks(saved)
    assert back.labels == on_vertices.labels
    np.testing.assert_allclose(back.points, on_vertices.points, atol=1e-6)
    assert back.descriptions == on_vertices.descriptions
    np.testing.assert_allclose(back.confidence, on_vertices.confidence, atol=1e-3)


def test_ras_point_list_from_slicer_converts_to_lps(mrml_scene, tmp_path):
    import slicer

    node = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    node.AddControlPoint(12.5, -40.25, 77.0, "A")  # RAS
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode")
    storage.SetCoordinateSystem(slicer.vtkMRMLStorageNode.CoordinateSystemRAS)
    storage.SetFileName(str(tmp_path / "ras.mrk.json"))
    assert storage.WriteData(node)
    assert '"RAS"' in (tmp_path / "ras.mrk.json").read_text()
    np.testing.assert_allclose(read_landmarks(tmp_path / "ras.mrk.json").points, [[-12.5, 40.25, 77.0]])


def test_a_missing_landmark_is_a_missing_control_point_in_slicer(mrml_scene, tmp_path, on_vertices):
    """Slicer's own markups reader takes our "missing" as its missing state, writes it back so,
    and the module's point list marks the point missing too; palnet reads it as no position."""
    pts = on_vertices.points.copy()
    pts[2] = np.nan
    lm = Landmarks(on_vertices.labels, pts, on_vertices.confidence, on_vertices.descriptions)
    path = tmp_path / "gone.mrk.json"
    write_landmarks(lm, path)
    node = mrml_scene.GetNodeByID(mrml_scene.markups_logic.LoadMarkups(str(path)))
    assert node.GetNumberOfControlPoints() == 6
    assert node.GetNthControlPointPositionStatus(2) == node.PositionMissing
    assert node.GetNthControlPointPositionStatus(0) == node.PositionDefined
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsJsonStorageNode")
    storage.SetFileName(str(tmp_path / "saved.mrk.json"))
    assert storage.WriteData(node)
    back = read_landmarks(tmp_path / "saved.mrk.json")
    assert np.isnan(back.points[back.labels.index("sn")]).all()
    np.testing.assert_allclose(back.points[[0, 1, 3, 4, 5]], pts[[0, 1, 3, 4, 5]], atol=1e-6)

    from conftest import module_lib
    mrml = module_lib("mrml")
    filled = mrml.newPointListNode(mrml_scene, "filled")
    mrml.fillPointList(filled, lm)
    assert filled.GetNthControlPointPositionStatus(2) == filled.PositionMissing
    world = mrml.controlPointsWorld(filled)
    assert np.isnan(world[2]).all() and np.isfinite(np.delete(world, 2, axis=0)).all()
