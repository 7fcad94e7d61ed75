"""Shared test fixtures: palnet importable from a checkout, the ICT-FaceKit file, an MRML scene."""
import os
import sys

import numpy as np
import pytest

try:
    import palnet  # noqa: F401
except ImportError:  # a plain checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "PALNetLandmarks"))

from palnet.resources import default_ict_path  # noqa: E402
from palnet.datatypes import Mesh  # noqa: E402


@pytest.fixture(scope="session")
def ict_path():
    path = default_ict_path()
    if not path.exists():
        pytest.skip("ICT-FaceKit file not found at {} (set PALNET_ICT)".format(path))
    return path


@pytest.fixture(scope="session")
def model():
    """The shipped model, loaded once for the whole run (tests only read it)."""
    from palnet.modelfile import load_model
    from palnet.resources import default_model_path
    return load_model(default_model_path())


@pytest.fixture(scope="session")
def sample():
    """The shipped sample scan and its known landmarks."""
    from palnet.landmark_io import read_landmarks
    from palnet.mesh_io import read_mesh
    from palnet.resources import sample_landmarks_path, sample_scan_path
    return read_mesh(sample_scan_path()), read_landmarks(sample_landmarks_path())


@pytest.fixture
def mrml_scene():
    """A real MRML scene from the slicer-core package, with the markups logic registered."""
    slicer = pytest.importorskip("slicer")
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    markups_logic = slicer.vtkSlicerMarkupsLogic()  # registers the .mrk.json storage node
    markups_logic.SetMRMLScene(scene)
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene
    scene.markups_logic = markups_logic  # tests reach the logic through the scene
    try:
        yield scene
    finally:
        markups_logic.SetMRMLScene(None)
        app_logic.SetMRMLScene(None)
        scene.Clear(1)
        if previous is None:
            del slicer.mrmlScene
        else:
            slicer.mrmlScene = previous


@pytest.fixture
def bumpy_mesh():
    """A closed, lumpy, asymmetric surface away from the origin: sign or axis mix-ups show."""
    from vtkmodules.vtkFiltersSources import vtkSphereSource
    from palnet.mesh_io import polydata_to_mesh

    source = vtkSphereSource()
    source.SetThetaResolution(24)
    source.SetPhiResolution(18)
    source.Update()
    unit = polydata_to_mesh(source.GetOutput()).vertices
    x, y, z = unit.T
    radius = 40.0 * (1.0 + 0.12 * np.sin(3.0 * x + 1.0) * np.cos(2.0 * y) + 0.07 * z * z * x + 0.05 * y)
    vertices = unit * radius[:, None] * np.array([1.0, 1.3, 0.8]) + np.array([31.7, -52.3, 118.9])
    return Mesh(vertices, polydata_to_mesh(source.GetOutput()).triangles)
