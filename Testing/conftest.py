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


# ---------------------------------------------------------------- the Slicer module's figures
# Statement coverage of PALNetLandmarks/PALNetLandmarks.py, measured while the Slicer tests import
# and run it (test_slicer_*.py), and the figures those tests measure (longest GUI stall during
# Apply, module vs command line), printed at the end of the normal test output.

SLICER_MODULE_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                  "PALNetLandmarks", "PALNetLandmarks.py")
_slicer_figures = []  # lines for the summary
_slicer_coverage = {}  # "cov": the coverage.Coverage measuring SLICER_MODULE_FILE


def moves_with_the_scan(model, mesh, moved, rot, shift, tolerance_mm, factor=1.0):
    """Predict ``mesh`` and ``moved`` (the mesh turned by ``rot`` and shifted by ``shift``, its
    vertices in any order; in other units, ``factor`` times its coordinates) and assert that the answers move with the scan (``tolerance_mm``),
    that the same landmarks are missing, and that each answer snaps to the same nearest vertex
    unless it lies so nearly midway between two vertices that the gap between the two answers
    could tip it: a nearest-vertex snap is a step, and rounding on another CPU (or with another
    number of BLAS threads) tips such a tie either way. Returns both predictions (unsnapped)."""
    from scipy.spatial import cKDTree
    from palnet.pipeline import predict
    ref = predict(mesh, model, snap="none")
    pred = predict(moved, model, snap="none")
    assert pred.missing == ref.missing
    assert np.array_equal(np.isnan(pred.landmarks.points), np.isnan(ref.landmarks.points))
    back = ((pred.landmarks.points - shift) @ rot) / factor
    gap = np.linalg.norm(back - ref.landmarks.points, axis=1)
    assert np.nanmax(gap) <= tolerance_mm, np.nanmax(gap)
    shown = np.isfinite(gap)
    tree = cKDTree(mesh.vertices)
    two = tree.query(ref.landmarks.points[shown], k=2)[0]
    tie = two[:, 1] - two[:, 0] <= 2.0 * gap[shown] + 1e-9
    same = tree.query(ref.landmarks.points[shown])[1] == tree.query(back[shown])[1]
    assert (same | tie).all(), np.array(ref.landmarks.labels)[shown][~(same | tie)]
    return ref, pred


def module_lib(name):
    """``PALNetLandmarksLib.<name>`` of the Slicer module, imported from the module folder (no
    Slicer needed) and forgotten again, so that no later import finds it by accident."""
    import importlib
    saved_path = list(sys.path)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "PALNetLandmarks"))
    try:
        return importlib.import_module("PALNetLandmarksLib." + name)
    finally:
        sys.path[:] = saved_path
        for loaded in [n for n in sys.modules if n.startswith("PALNetLandmarksLib")]:
            del sys.modules[loaded]


def record_slicer_figure(text):
    """A line for the summary at the end of the test output."""
    _slicer_figures.append(text)


@pytest.fixture(scope="session")
def slicer_module_coverage():
    """A context manager: coverage of PALNetLandmarks.py is recorded while it is open.

    Not measured when another tracer runs (pytest --cov, a debugger) or coverage is missing.
    """
    import contextlib

    @contextlib.contextmanager
    def measuring():
        cov = _slicer_coverage.get("cov")
        if cov is None and "cov" not in _slicer_coverage:
            try:
                import coverage
            except ImportError:
                coverage = None
            if coverage is None or sys.gettrace() is not None:
                _slicer_coverage["cov"] = None
            else:
                cov = _slicer_coverage["cov"] = coverage.Coverage(data_file=None, include=[SLICER_MODULE_FILE],
                                                                  config_file=False)
        if cov is None or sys.gettrace() is not None:
            yield
            return
        cov.start()
        try:
            yield
        finally:
            cov.stop()

    return measuring


def pytest_terminal_summary(terminalreporter):
    cov = _slicer_coverage.get("cov")
    lines = list(_slicer_figures)
    if cov is not None:
        try:
            _, statements, _, missing, _ = cov.analysis2(SLICER_MODULE_FILE)
        except Exception as exc:  # nothing recorded
            lines.insert(0, "PALNetLandmarks.py statement coverage: not measured ({})".format(exc))
        else:
            covered = len(statements) - len(missing)
            lines.insert(0, "PALNetLandmarks.py statement coverage: {:.1f}% ({} of {} statements)".format(
                100.0 * covered / max(len(statements), 1), covered, len(statements)))
    elif "cov" in _slicer_coverage:
        lines.insert(0, "PALNetLandmarks.py statement coverage: not measured (another tracer is active)")
    if lines:
        terminalreporter.write_sep("-", "PAL-Net Slicer module")
        for line in lines:
            terminalreporter.write_line(line)
