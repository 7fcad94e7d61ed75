"""The PAL-Net Landmarks panel, run: the real .ui loaded with PyQt5, the widget's own methods, a real MRML scene.

The harness (Testing/slicer_stubs, ``installed(gui=True)``) loads ``PALNetLandmarks.ui`` with
PyQt5's uic, CTK and MRML widgets replaced by plain-Qt stand-ins (widgets.py), records
message boxes instead of showing them, and puts a ``PythonSlicer`` on the PATH that runs this
Python, so Apply, Batch, Training and the PyTorch install start real child processes
through ``qt.QProcess``, exactly as in Slicer. The Qt event loop is spun by the tests.

What it checks: button states and their reasons, one run at a time (no nested Apply or
batch, nothing re-enabled by a parameter change during a run), progress and Cancel, the
parameter node round trip (pathlib.Path fields), path fields that keep what the user types,
model information read once per file, Sample Data registration, the package-name check,
and two measured figures: the longest stretch without events during Apply, and the
module against ``palnet predict`` on the sample scan.
"""
import importlib
import importlib.util
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
pytest.importorskip("PyQt5", reason="the widget tests need the Qt binding of the test extras")

from PyQt5 import QtCore, QtWidgets  # noqa: E402
from PyQt5.QtTest import QTest  # noqa: E402

from conftest import record_slicer_figure  # noqa: E402
from palnet.datatypes import Mesh  # noqa: E402
from palnet.landmark_io import read_landmarks  # noqa: E402
from palnet.mesh_io import write_mesh  # noqa: E402
from palnet.modelfile import save_model  # noqa: E402
from palnet.resources import default_model_path, sample_landmarks_path, sample_scan_path  # noqa: E402
from test_slicer_module import (EPOCH_LINES, LPS_TO_RAS, MODULE_DIR, TESTING, face, fake_trainer,  # noqa: E402,F401
                                fiducial_nodes, load_model_file, model_node_from_mesh, point_list, pose_matrix,
                                tiny_model)

STALL_BOUND_S = 1.0  # generous, for any CPU; the figure itself is printed in the summary
HAS_SAMPLE = default_model_path().exists() and sample_scan_path().exists()


# ---------------------------------------------------------------- harness

def _load_stubs():
    spec = importlib.util.spec_from_file_location("palnet_test_slicer_stubs", TESTING / "slicer_stubs" / "__init__.py")
    stubs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stubs)
    return stubs


@pytest.fixture(scope="module")
def gui(slicer_module_coverage, tmp_path_factory):
    """(module, dialogs): PALNetLandmarks imported with the widget harness; PythonSlicer on the PATH."""
    stubs = _load_stubs()
    bindir = tmp_path_factory.mktemp("slicer-bin")
    launcher = bindir / ("PythonSlicer.cmd" if os.name == "nt" else "PythonSlicer")
    if os.name == "nt":
        launcher.write_text('@"{}" %*\n'.format(sys.executable))
    else:
        launcher.write_text('#!/bin/sh\nexec "{}" "$@"\n'.format(sys.executable))
        launcher.chmod(0o755)
    saved_path, saved_env = list(sys.path), os.environ.get("PATH", "")
    os.environ["PATH"] = str(bindir) + os.pathsep + saved_env
    with stubs.installed(gui=True) as dialogs, slicer_module_coverage():
        sys.path.insert(0, str(MODULE_DIR))
        try:
            yield importlib.import_module("PALNetLandmarks"), dialogs
        finally:
            sys.path[:] = saved_path
            os.environ["PATH"] = saved_env
            for name in [n for n in sys.modules if n == "PALNetLandmarks" or n.startswith("PALNetLandmarksLib")]:
                sys.modules.pop(name, None)


@pytest.fixture
def plm(gui):
    return gui[0]


@pytest.fixture
def dialogs(gui):
    gui[1].shown.clear()
    gui[1].answers.clear()
    return gui[1]


@pytest.fixture
def panel(plm, dialogs, mrml_scene):
    """The module panel set up on a fresh scene; its runs are cancelled afterwards."""
    parent = QtWidgets.QWidget()
    QtWidgets.QVBoxLayout(parent)
    parent.isEntered = True
    widget = plm.PALNetLandmarksWidget(parent)
    widget.setup()
    parent.resize(420, 900)
    parent.show()
    yield widget
    widget.cleanup()
    run = widget.logic._activeRun
    if run is not None and run.running:
        run.wait(30)
    parent.close()
    parent.deleteLater()
    QtWidgets.QApplication.instance().processEvents()


def spin(done, timeout=60.0, tick_ms=5):
    """Run the Qt event loop until ``done()``; returns (elapsed s, longest gap between timer ticks in s)."""
    app = QtWidgets.QApplication.instance()
    ticks = [time.perf_counter()]
    timer = QtCore.QTimer()
    timer.setInterval(tick_ms)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    start = time.perf_counter()
    try:
        while not done():
            if time.perf_counter() - start > timeout:
                raise TimeoutError("still waiting after {:.0f} s".format(timeout))
            app.processEvents(QtCore.QEventLoop.AllEvents, 20)
            time.sleep(0.001)
    finally:
        timer.stop()
        ticks.append(time.perf_counter())
    return time.perf_counter() - start, float(np.diff(ticks).max())


def idle(widget):
    return widget.logic.activeRun is None


@pytest.fixture(scope="module")
def tiny_model_path(face, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.npz"
    save_model(path, tiny_model(face))
    return path


def ready_for_apply(widget, scene, face, model_path, mesh=None):
    node = model_node_from_mesh(scene, mesh or face.transformed(pose_matrix()), "scan")
    widget._parameterNode.inputModel = node
    widget._parameterNode.modelFile = Path(model_path)
    return node


def start_states(widget):
    ui = widget.ui
    return {"apply": ui.applyButton.isEnabled(), "batch": ui.batchRunButton.isEnabled(),
            "train": ui.trainingStartButton.isEnabled(), "applyCancel": ui.applyCancelButton.isVisibleTo(widget.parent),
            "batchCancel": ui.batchCancelButton.isEnabled(), "stop": ui.trainingStopButton.isEnabled()}


# ---------------------------------------------------------------- panel, parameters, path fields

def test_panel_starts_idle_with_reasons(panel):
    ui = panel.ui
    assert start_states(panel) == {"apply": False, "batch": False, "train": False, "applyCancel": False,
                                   "batchCancel": False, "stop": False}
    assert "Select the surface model" in ui.applyButton.toolTip()
    assert "folder of face scans" in ui.batchRunButton.toolTip()
    assert "annotated scans" in ui.trainingStartButton.toolTip()
    assert not ui.batchLog.isVisibleTo(panel.parent) and not ui.trainingLog.isVisibleTo(panel.parent)
    spin(lambda: ui.modelInfoLabel.text() != "", 10)  # the default model, read once the timer fired
    assert ("Patch size" in ui.modelInfoLabel.text()) == default_model_path().exists()


def test_first_surface_model_is_picked(plm, mrml_scene, face, dialogs):
    node = model_node_from_mesh(mrml_scene, face, "already here")
    parent = QtWidgets.QWidget()
    QtWidgets.QVBoxLayout(parent)
    parent.isEntered = False
    widget = plm.PALNetLandmarksWidget(parent)
    widget.setup()
    assert widget._parameterNode.inputModel is node
    assert widget.ui.inputModelSelector.currentNode() is node
    widget.cleanup()


def test_parameters_round_trip_through_widgets_and_the_scene(plm, panel, mrml_scene, face, tmp_path):
    ui, p = panel.ui, panel._parameterNode
    node = model_node_from_mesh(mrml_scene, face, "scan")
    ui.inputModelSelector.setCurrentNode(node)
    ui.snapComboBox.setCurrentIndex(ui.snapComboBox.findText("surface"))
    ui.unitsComboBox.setCurrentIndex(ui.unitsComboBox.findText("cm"))
    ui.lockPointsCheckBox.setChecked(True)
    assert (ui.samplingsSpinBox.minimum(), ui.samplingsSpinBox.maximum(), ui.samplingsSpinBox.value()) == (1, 8, 1)
    ui.samplingsSpinBox.setValue(2)
    ui.batchFormatComboBox.setCurrentIndex(ui.batchFormatComboBox.findText("fcsv"))
    ui.batchOverwriteCheckBox.setChecked(True)
    ui.trainingEpochsSpinBox.setValue(7)
    ui.trainingAugmentSpinBox.setValue(3)
    ui.batchInputFolderPathLineEdit.setCurrentPath(str(tmp_path))
    ui.trainingOutputModelPathLineEdit.setCurrentPath(str(tmp_path / "m.npz"))
    assert p.inputModel is node and p.snap == "surface" and p.units == "cm" and p.lockPoints and p.samplings == 2
    assert p.batchFormat == "fcsv" and p.batchOverwrite and p.trainingEpochs == 7 and p.trainingAugmentCopies == 3
    assert p.batchInputFolder == tmp_path and isinstance(p.batchInputFolder, Path)
    assert p.trainingOutputModel == tmp_path / "m.npz"
    # What the scene saves: the parameter node's own strings and references; a new wrapper reads the same.
    raw = p.parameterNode
    assert raw.GetParameter("batchInputFolder") == str(tmp_path) and raw.GetParameter("snap") == "surface"
    assert raw.GetNodeReference("inputModel") is node
    again = plm.PALNetLandmarksParameterNode(raw)
    assert (again.snap, again.units, again.trainingEpochs, again.batchInputFolder) == ("surface", "cm", 7, tmp_path)
    # And the other way: the parameter node drives the widgets.
    p.units = "mm"
    p.trainingEpochs = 42
    p.batchOutputFolder = tmp_path / "out"
    assert ui.unitsComboBox.currentText() == "mm" and ui.trainingEpochsSpinBox.value() == 42
    assert ui.batchOutputFolderPathLineEdit.currentPath == str(tmp_path / "out")
    # Leaving the module unbinds the widgets; entering binds them again.
    panel.exit()
    ui.unitsComboBox.setCurrentIndex(ui.unitsComboBox.findText("m"))
    assert p.units == "mm"
    panel.enter()
    assert ui.unitsComboBox.currentText() == "mm"


def test_combo_boxes_list_what_palnet_options_lists(plm, panel):
    """The .ui lists no items: setup fills every combo box from palnet.options, its default shown."""
    import xml.etree.ElementTree as ET

    from palnet import options
    ui = panel.ui
    boxes = [(ui.snapComboBox, options.SNAP_METHODS, "surface"), (ui.unitsComboBox, options.UNIT_CHOICES, "auto"),
             (ui.batchFormatComboBox, options.LANDMARK_FORMATS, "mrk.json")]
    for box, items, default in boxes:
        assert [box.itemText(i) for i in range(box.count())] == list(items), box.objectName()
        assert box.currentText() == default, box.objectName()
    p = panel._parameterNode
    assert (p.snap, p.units, p.batchFormat) == ("surface", "auto", "mrk.json")
    root = ET.parse(MODULE_DIR / "Resources" / "UI" / "PALNetLandmarks.ui").getroot()
    in_ui = {w.get("name"): w for w in root.iter("widget") if w.get("class") in ("QComboBox", "ctkComboBox")}
    assert set(in_ui) == {box.objectName() for box, _, _ in boxes}, "a combo box that setup does not fill"
    assert all(w.find("item") is None for w in in_ui.values()), "the .ui lists items of its own again"


def test_path_field_keeps_what_the_user_types(panel, tmp_path):
    field = panel.ui.modelFilePathLineEdit
    p = panel._parameterNode
    written = field.textSetCount
    typed = str(tmp_path) + "/models/"
    QTest.keyClicks(field.lineEdit, typed)
    assert field.currentPath == typed  # the trailing "/" stays, nothing rewritten while typing
    assert field.textSetCount == written and field.lineEdit.cursorPosition() == len(typed)
    assert p.modelFile == tmp_path / "models"
    # Editing in the middle: the cursor stays where the user is.
    field.lineEdit.setCursorPosition(3)
    QTest.keyClicks(field.lineEdit, "x")
    assert field.lineEdit.cursorPosition() == 4 and field.textSetCount == written
    # An emptied field stays empty (not "."), and means the shipped model.
    field.lineEdit.clear()
    assert field.currentPath == "" and panel.logic.resolveModelPath(p.modelFile) == str(default_model_path())
    # Set from elsewhere, the field follows; the Default button empties it.
    p.modelFile = tmp_path / "m.npz"
    assert field.currentPath == str(tmp_path / "m.npz")
    panel.ui.modelFileDefaultButton.click()
    assert field.currentPath == "" and str(p.modelFile) == "."


def test_path_connector_only_rewrites_another_path(plm):
    class Field:
        def __init__(self, text):
            self.currentPath, self.writes = text, 0

        def setCurrentPath(self, text):
            self.currentPath, self.writes = text, self.writes + 1

    field = Field("/data/")
    connector = plm.PathFieldConnector(field)
    connector.write(Path("/data"))
    assert field.writes == 0 and field.currentPath == "/data/"
    connector.write(Path("."))
    assert field.currentPath == "" and field.writes == 1
    assert connector.read() == Path(".") and connector.widget() is field
    assert plm.PathFieldConnector.create(object(), Path) is None
    assert plm.samePath("", None) and plm.samePath(Path("."), "") and not plm.samePath("/a", None)


def test_model_information_is_read_once_per_file(panel, tiny_model_path, monkeypatch):
    calls = []
    real = panel.logic.modelInfo
    monkeypatch.setattr(panel.logic, "modelInfo", lambda path=None: calls.append(path) or real(path))
    spin(lambda: not panel._modelInfoTimer.isActive(), 10)
    calls.clear()
    QTest.keyClicks(panel.ui.modelFilePathLineEdit.lineEdit, str(tiny_model_path))
    assert calls == []  # not at any keystroke
    spin(lambda: not panel._modelInfoTimer.isActive(), 10)
    assert calls == [str(tiny_model_path)]
    assert "Patch size" in panel.ui.modelInfoLabel.text() and "100 points" in panel.ui.modelInfoLabel.text()
    panel._parameterNode.lockPoints = True  # another parameter: the file is not read again
    spin(lambda: not panel._modelInfoTimer.isActive(), 10)
    assert calls == [str(tiny_model_path)]
    panel.ui.modelFilePathLineEdit.setCurrentPath(str(tiny_model_path) + ".missing")
    spin(lambda: not panel._modelInfoTimer.isActive(), 10)
    assert "Model file not found" in panel.ui.modelInfoLabel.text()
    broken = tiny_model_path.parent / "broken.npz"
    broken.write_bytes(b"not a zip")
    panel.ui.modelFilePathLineEdit.setCurrentPath(str(broken))
    spin(lambda: not panel._modelInfoTimer.isActive(), 10)
    assert panel.ui.modelInfoLabel.text().startswith("Model file:")


# ---------------------------------------------------------------- Apply

def test_apply_runs_in_the_background_one_at_a_time(panel, mrml_scene, face, tiny_model_path, tmp_path):
    ui = panel.ui
    ready_for_apply(panel, mrml_scene, face, tiny_model_path)
    (tmp_path / "scans").mkdir()
    panel._parameterNode.batchInputFolder = tmp_path / "scans"
    panel._parameterNode.batchOutputFolder = tmp_path / "out"
    panel._parameterNode.trainingDataFolder = tmp_path / "scans"
    panel._parameterNode.trainingOutputModel = tmp_path / "m.npz"
    assert start_states(panel) == {"apply": True, "batch": True, "train": True, "applyCancel": False,
                                   "batchCancel": False, "stop": False}
    values = []
    ui.applyProgressBar.valueChanged.connect(values.append)
    ui.applyButton.click()
    run = panel.logic.activeRun
    assert run is not None and run.kind == "prediction"
    busy = {"apply": False, "batch": False, "train": False, "applyCancel": True, "batchCancel": False, "stop": False}
    assert start_states(panel) == busy
    assert "Placing landmarks is running" in ui.batchRunButton.toolTip()
    # A parameter change during the run re-enables nothing; clicks and direct calls start nothing.
    panel._parameterNode.snap = "surface"
    assert start_states(panel) == busy
    panel.onApplyButton()
    panel.onBatchRun()
    panel.onTrainingStart()
    assert panel.logic.activeRun is run
    with pytest.raises(RuntimeError, match="running"):
        panel.logic.startBatch(str(tmp_path / "scans"), str(tmp_path / "out"))
    spin(lambda: idle(panel), 120)
    assert run.returnCode == 0 and run.node is not None, "\n".join(run.log)
    assert values and values[-1] == 100 and values == sorted(values)
    assert start_states(panel)["apply"] and not start_states(panel)["applyCancel"]
    assert ui.statusLabel.text().startswith("ok: 50 landmarks") and ui.resultsTable.rowCount() == 50
    assert run.node.GetAttribute("PALNet.status") == "ok" and not os.path.exists(run.workDir)
    assert panel.logic.lastPrediction.status == "ok" and len(panel.logic.lastResultRows()) == 50
    # The measurements of the placed landmarks: a table node beside the point list, and the panel's table.
    rows, table = panel.logic.lastMeasurements, panel.logic.lastMeasurementsTable
    if rows is not None:  # palnet.measurements is there
        assert table is not None and run.node.GetNodeReference("PALNetMeasurements") is table
        vtk_table = table.GetTable()
        assert [vtk_table.GetColumn(c).GetName() for c in range(5)] == ["name", "value", "units", "SE", "z"]
        assert vtk_table.GetNumberOfRows() == len(rows) == ui.measurementsTable.rowCount() > 10
        assert ui.measurementsTable.item(0, 0).text() == rows[0]["name"] == vtk_table.GetValue(0, 0).ToString()
        assert "measurements in" in ui.statusLabel.text()
        # A clicked measurement is drawn between its landmarks: a line for a distance, an angle for an angle.
        ids = [r["id"] for r in rows]
        labels = [run.node.GetNthControlPointLabel(i) for i in range(run.node.GetNumberOfControlPoints())]
        world = np.array([run.node.GetNthControlPointPositionWorld(i) for i in range(len(labels))])
        panel.onMeasurementCellClicked(ids.index("en-en"), 0)
        line = panel.logic.measurementNode
        assert line.IsA("vtkMRMLMarkupsLineNode") and line.GetNumberOfControlPoints() == 2
        np.testing.assert_allclose(line.GetNthControlPointPositionWorld(1), world[labels.index("en_L")], atol=1e-6)
        assert abs(line.GetLineLengthWorld() - rows[ids.index("en-en")]["value"]) < 0.01
        panel.onMeasurementCellClicked(ids.index("nasolabial_angle"), 0)
        angle = panel.logic.measurementNode
        assert angle.IsA("vtkMRMLMarkupsAngleNode") and line.GetScene() is None  # one drawing at a time
        assert abs(angle.GetAngleDegrees() - rows[ids.index("nasolabial_angle")]["value"]) < 0.01
        panel.onMeasurementCellClicked(ids.index("nasal_index"), 0)  # an index has no drawing
        assert panel.logic.measurementNode is None and angle.GetScene() is None
    # The result table centres the views on a landmark.
    panel.onResultCellClicked(3, 0)
    calls = slicer.modules.markups.logic().calls[-2:]
    assert calls == [("JumpSlicesToNthPointInMarkup", run.node.GetID(), 3, True),
                     ("FocusCamerasOnNthPointInMarkup", run.node.GetID(), 3)]
    panel.onResultCellClicked(99, 0)  # past the last point: nothing
    assert slicer.modules.markups.logic().calls[-2:] == calls


def test_apply_gives_the_in_process_answer_into_a_chosen_list(panel, mrml_scene, face, tiny_model_path):
    node = ready_for_apply(panel, mrml_scene, face, tiny_model_path)
    mine = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "mine")
    transform = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(pose_matrix((5, 30, -10), (4, 5, 6))))
    node.SetAndObserveTransformNodeID(transform.GetID())  # the surface as displayed, not as stored
    p = panel._parameterNode
    p.outputPointList, p.snap, p.lockPoints, p.samplings = mine, "surface", True, 2
    panel.onApplyButton()
    spin(lambda: idle(panel), 120)
    assert panel.logic._activeRun.node is mine and fiducial_nodes(mrml_scene) == [mine]
    table = panel.logic.lastMeasurementsTable
    panel.onApplyButton()  # again into the same list: the same measurements table, refilled
    spin(lambda: idle(panel), 120)
    assert panel.logic.lastMeasurementsTable is table
    if table is not None:
        assert mrml_scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    reference = panel.logic.process(node, modelPath=str(tiny_model_path), snap="surface", samplings=2)
    assert np.abs(point_list(mine)[2] - point_list(reference)[2]).max() < 1e-6
    assert all(point_list(mine)[3])
    assert mine.GetDisplayNode().GetGlyphSize() == pytest.approx(reference.GetDisplayNode().GetGlyphSize())


def test_apply_can_be_cancelled(panel, mrml_scene, face, tiny_model_path):
    ready_for_apply(panel, mrml_scene, face, tiny_model_path)
    panel.ui.applyButton.click()
    run = panel.logic.activeRun
    panel.ui.applyCancelButton.click()
    spin(lambda: idle(panel), 30)
    assert run.stopRequested and run.node is None and run.returnCode is not None
    assert panel.ui.statusLabel.text().startswith("Cancelled") and fiducial_nodes(mrml_scene) == []
    assert panel.ui.applyButton.isEnabled() and not os.path.exists(run.workDir)


def test_not_a_face_warns_after_the_run_without_a_wait_cursor(panel, mrml_scene, face, tiny_model_path, dialogs):
    top = face.vertices[:, 1] > np.percentile(face.vertices[:, 1], 70)  # a strip of forehead
    triangles = face.triangles[top[face.triangles].all(axis=1)]
    strip = Mesh(face.vertices[top], (np.cumsum(top) - 1)[triangles])
    ready_for_apply(panel, mrml_scene, face, tiny_model_path, strip)
    cursor_at_warning = []
    real_warning = slicer.util.warningDisplay
    slicer.util.warningDisplay = lambda text, **k: cursor_at_warning.append(slicer.app.cursorDepth) or real_warning(text, **k)
    try:
        panel.onApplyButton()
        spin(lambda: idle(panel), 120)
    finally:
        slicer.util.warningDisplay = real_warning
    assert panel.logic.lastPrediction.status == "not a face"
    assert dialogs.kinds() == ["warning"] and cursor_at_warning == [0]
    assert "does not look like a face" in dialogs.shown[0][1] and "c00000" in panel.ui.statusLabel.styleSheet()
    first, why = panel.ui.statusLabel.text().split("\n", 1)  # the panel says why under the status line
    assert first.startswith("not a face: 50 landmarks") and "does not look like a face" in why


def test_apply_failures_are_one_line(panel, mrml_scene, face, tmp_path, dialogs):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK not really")
    ready_for_apply(panel, mrml_scene, face, broken)
    panel.onApplyButton()
    spin(lambda: idle(panel), 60)
    assert dialogs.kinds() == ["error"] and "broken.npz" in dialogs.shown[0][1]
    assert panel.ui.statusLabel.text().startswith("Failed:") and fiducial_nodes(mrml_scene) == []
    # Refused before starting: a model node without a surface.
    dialogs.shown.clear()
    panel._parameterNode.inputModel = mrml_scene.AddNewNodeByClass("vtkMRMLModelNode", "hollow")
    panel._parameterNode.modelFile = Path()
    with pytest.raises(Exception, match="hollow"):
        panel.onApplyButton()
    assert dialogs.kinds() == ["error"] and panel.logic.activeRun is None


def test_closing_the_scene_cancels_the_prediction(panel, mrml_scene, face, tiny_model_path):
    ready_for_apply(panel, mrml_scene, face, tiny_model_path)
    panel.onApplyButton()
    run = panel.logic.activeRun
    mrml_scene.Clear(0)  # StartCloseEvent, EndCloseEvent
    spin(lambda: not run.running, 30)
    assert run.stopRequested and run.node is None and panel.ui.resultsTable.rowCount() == 0
    assert panel._parameterNode is not None  # bound again after the close


@pytest.mark.skipif(not HAS_SAMPLE, reason="the default model or the sample scan is not built yet")
def test_apply_keeps_slicer_responsive_and_agrees_with_the_command_line(panel, mrml_scene, tmp_path):
    """The measured figures: the longest GUI stall during Apply, and the module against ``palnet predict``."""
    node = load_model_file(mrml_scene, sample_scan_path())  # Slicer's reader: LPS file, RAS scene
    panel._parameterNode.inputModel = node
    spin(lambda: not panel._modelInfoTimer.isActive(), 30)  # the Advanced section's model read is not Apply's
    clicked = time.perf_counter()
    panel.ui.applyButton.click()
    click_s = time.perf_counter() - clicked
    run = panel.logic.activeRun
    elapsed, stall = spin(lambda: idle(panel), 300, tick_ms=5)
    stall = max(stall, click_s)
    assert run.node is not None, "\n".join(run.log)
    record_slicer_figure("Apply on the sample scan ({} vertices): longest stretch without events {:.3f} s "
                         "(the click itself {:.3f} s), {:.1f} s from click to landmarks".format(
                             node.GetPolyData().GetNumberOfPoints(), stall, click_s, elapsed))
    assert stall < STALL_BOUND_S

    out = tmp_path / "cli"
    cli = subprocess.run([sys.executable, "-m", "palnet", "predict", str(sample_scan_path()), "-o", str(out), "-q"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    cli_ras = read_landmarks(out / "sample_face.mrk.json").points * LPS_TO_RAS
    labels, _, world, _ = point_list(run.node)
    assert labels == read_landmarks(out / "sample_face.mrk.json").labels
    difference = np.linalg.norm(world - cli_ras, axis=1).max()
    truth = read_landmarks(sample_landmarks_path()).select(labels).points * LPS_TO_RAS
    record_slicer_figure("Module (background Apply) vs `palnet predict` on sample_face.ply: {:.4f} mm at most over "
                         "{} landmarks; mean error against the known landmarks {:.2f} mm".format(
                             difference, len(labels), np.linalg.norm(world - truth, axis=1).mean()))
    assert difference < 0.1
    rows = panel.logic.lastMeasurements
    if rows is not None:  # the same measurements as palnet.measurements on the command line's landmarks
        from palnet.measurements import measure
        from palnet.mesh_io import read_mesh
        expected = {m.id: m.value for m in measure(read_landmarks(out / "sample_face.mrk.json"),
                                                   mesh=read_mesh(sample_scan_path()))}
        worst = max(abs(row["value"] - expected[row["id"]]) for row in rows if row["value"] is not None)
        record_slicer_figure("Measurements after Apply: {} rows, {} with a value; at most {:.4f} (mm, degrees or "
                             "ratio) from palnet.measurements on the command line's landmarks".format(
                                 len(rows), sum(r["value"] is not None for r in rows), worst))
        assert worst < 0.1


# ---------------------------------------------------------------- batch

def write_scans(folder, face, n, broken=False):
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        write_mesh(face.transformed(pose_matrix((10.0 * k, 20.0, 0.0), (k, 0, 0))), folder / "s{}.ply".format(k))
    if broken:
        (folder / "broken.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\nend_header\n\x00")


def test_batch_runs_in_the_background(panel, face, tiny_model_path, tmp_path, dialogs):
    ui, p = panel.ui, panel._parameterNode
    write_scans(tmp_path / "scans", face, 2, broken=True)
    p.batchInputFolder, p.batchOutputFolder, p.modelFile = tmp_path / "scans", tmp_path / "out", tiny_model_path
    p.batchFormat, p.samplings = "fcsv", 2
    assert ui.batchRunButton.isEnabled()
    ui.batchRunButton.click()
    run = panel.logic.activeRun
    at = run.process.command.index("--samplings")
    assert run.process.command[at + 1] == "2"
    assert run.kind == "batch" and ui.batchCancelButton.isEnabled() and not ui.applyButton.isEnabled()
    assert "A batch is running" in ui.applyButton.toolTip()
    panel.onBatchRun()
    assert panel.logic.activeRun is run
    spin(lambda: idle(panel), 180)
    assert [r.status for r in run.rows] == ["error", "ok", "ok"], "\n".join(run.log)
    assert ui.batchSummaryLabel.text().startswith("3 scans: 2 done, 0 not a face, 0 skipped, 1 failed")
    assert ui.batchLog.isVisibleTo(panel.parent) and "broken" in ui.batchLog.toPlainText()
    assert (tmp_path / "out" / "s0.fcsv").exists() and (tmp_path / "out" / "palnet_summary.csv").exists()
    # the batch's measurements, as palnet predict --measure writes them
    assert run.measurementsTable == str(tmp_path / "out" / "palnet_measurements.csv")
    assert (tmp_path / "out" / "palnet_measurements.csv").read_text().count("\n") == 3  # header + 2 faces
    assert ui.batchProgressBar.value() == 3 and ui.batchRunButton.isEnabled() and not ui.batchCancelButton.isEnabled()
    assert str(tmp_path / "scans") in ui.batchInputFolderPathLineEdit.history
    assert dialogs.kinds() == []


def test_batch_can_be_cancelled_and_lists_what_was_not_run(panel, face, tiny_model_path, tmp_path):
    p = panel._parameterNode
    # enough scans that the batch is still running when Cancel arrives on a fast machine
    write_scans(tmp_path / "scans", face, 30)
    p.batchInputFolder, p.batchOutputFolder, p.modelFile = tmp_path / "scans", tmp_path / "out", tiny_model_path
    panel.onBatchRun()
    run = panel.logic.activeRun
    spin(lambda: panel.ui.batchProgressBar.value() >= 1 or not run.running, 120)
    panel.ui.batchCancelButton.click()
    spin(lambda: idle(panel), 60)
    assert run.stopRequested and run.rows is None and panel.ui.batchRunButton.isEnabled()
    assert panel.ui.batchSummaryLabel.text().startswith("Cancelled")
    assert (tmp_path / "out" / "palnet_summary.csv").exists(), "\n".join(run.log)
    assert "not run" in (tmp_path / "out" / "palnet_summary.csv").read_text()


def test_batch_refuses_bad_folders(panel, tmp_path, dialogs):
    from palnet.errors import PalnetError
    with pytest.raises(PalnetError, match="input folder not found"):
        panel.logic.startBatch(str(tmp_path / "none"), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="output folder"):
        panel.logic.startBatch(str(tmp_path), "")
    with pytest.raises(ValueError, match="format"):
        panel.logic.startBatch(str(tmp_path), str(tmp_path / "out"), format="xyz")
    panel._parameterNode.batchInputFolder = tmp_path
    assert "folder for the landmark files" in panel.ui.batchRunButton.toolTip()
    panel._parameterNode.batchOutputFolder = tmp_path / "out"
    panel._parameterNode.modelFile = tmp_path / "none.npz"
    assert "Model file not found" in panel.ui.batchRunButton.toolTip()


# ---------------------------------------------------------------- training and the PyTorch install

@pytest.fixture
def training_ready(panel, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    p = panel._parameterNode
    p.trainingDataFolder, p.trainingOutputModel, p.trainingEpochs = tmp_path / "data", tmp_path / "trained", 12
    commands = []

    def fake_command(python, moduleDir, data, output, epochs=None, extra=()):
        commands.append((data, output, epochs, list(extra)))
        body = "import time, sys\nprint('training on 8 scans')\n"
        for line in EPOCH_LINES:
            body += "print({!r}); time.sleep(0.05)\n".format(line)
        body += "open({!r}, 'w').write('model')\ntime.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)\n".format(
            str(output))
        script = tmp_path / "fake_train.py"
        script.write_text(body)
        return [sys.executable, "-u", str(script), str(getattr(panel, "fake_training_seconds", 0))]

    monkeypatch.setattr(panel.logic, "torchAvailable", lambda: True)
    monkeypatch.setattr(sys.modules["PALNetLandmarksLib.training"], "trainingCommand", fake_command)
    return commands


def test_training_runs_in_the_background_and_its_model_can_be_used(panel, training_ready, tmp_path):
    ui = panel.ui
    assert ui.trainingStartButton.isEnabled()
    ui.trainingStartButton.click()
    run = panel.logic.activeRun
    assert run.kind == "training" and ui.trainingStopButton.isEnabled() and not ui.applyButton.isEnabled()
    assert not ui.batchRunButton.isEnabled() and "A training is running" in ui.batchRunButton.toolTip()
    assert training_ready[0][1].endswith("trained.npz") and training_ready[0][2] == 12  # .npz added
    assert str(panel._parameterNode.trainingOutputModel).endswith("trained.npz")
    assert slicer.modules.plots.logic().calls[-1] == ("ShowChartInLayout", run.chartNode)
    spin(lambda: idle(panel), 60)
    assert run.returnCode == 0 and "finished after 3 epochs" in ui.trainingStatusLabel.text()
    assert ui.trainingProgressBar.value() == 12 and "epoch   2" in ui.trainingLog.toPlainText()
    assert "@palnet" not in ui.trainingLog.toPlainText()  # the event lines feed the table, not the log
    assert ui.trainingUseModelButton.isEnabled() and ui.trainingShowPlotButton.isEnabled()
    ui.trainingShowPlotButton.click()
    assert slicer.modules.plots.logic().calls[-1] == ("ShowChartInLayout", run.chartNode)
    ui.trainingUseModelButton.click()
    assert panel._parameterNode.modelFile == tmp_path / "trained.npz"


def test_training_can_be_stopped(panel, training_ready, dialogs):
    panel.fake_training_seconds = 60
    panel.onTrainingStart()
    run = panel.logic.activeRun
    spin(lambda: len(run.history) == 3, 30)
    panel.ui.trainingStopButton.click()
    spin(lambda: idle(panel), 30)
    assert run.stopRequested and "stopped after 3 epochs" in panel.ui.trainingStatusLabel.text()
    assert dialogs.kinds() == [] and panel.ui.trainingStartButton.isEnabled()


def test_training_failure_is_shown(panel, training_ready, dialogs, monkeypatch, tmp_path):
    failing = fake_trainer(tmp_path, """
        import sys
        print("palnet train: error: data: found 1 (scan, landmark file) pairs; training needs at least 2", file=sys.stderr)
        sys.exit(2)
    """)
    monkeypatch.setattr(sys.modules["PALNetLandmarksLib.training"], "trainingCommand", lambda *a, **k: failing)
    panel.onTrainingStart()
    spin(lambda: idle(panel), 30)
    assert dialogs.kinds() == ["error"] and "training needs at least 2" in dialogs.shown[0][1]


def fake_pip(tmp_path, seconds=0.0, code=0):
    script = tmp_path / "fake_pip.py"
    script.write_text("import time, sys\nprint('Collecting torch')\ntime.sleep({})\nprint('Successfully installed torch')\n"
                      "sys.exit({})\n".format(seconds, code))
    return [sys.executable, "-u", str(script)]


def test_pytorch_installs_in_the_background_then_training_starts(panel, training_ready, dialogs, monkeypatch,
                                                                 tmp_path):
    installed = []
    monkeypatch.setattr(panel.logic, "torchAvailable", lambda: bool(installed))
    monkeypatch.setattr(panel.logic, "pyTorchUtilsAvailable", lambda: False)
    monkeypatch.setattr(type(panel.logic), "torchInstallCommand", staticmethod(
        lambda python: installed.append(python) or fake_pip(tmp_path, 0.5)))
    panel.onTrainingStart()
    run = panel.logic.activeRun
    assert dialogs.kinds() == ["confirm"] and run.kind == "install"
    assert panel.ui.trainingStopButton.isEnabled() and not panel.ui.trainingStartButton.isEnabled()
    assert "Installing PyTorch is running" in panel.ui.trainingStartButton.toolTip()
    panel.onTrainingStart()
    assert panel.logic.activeRun is run  # no second install or training meanwhile
    spin(lambda: panel.logic.activeRun is not run, 30)
    assert run.returnCode == 0 and "Successfully installed torch" in panel.ui.trainingLog.toPlainText()
    assert panel.logic.activeRun is not None and panel.logic.activeRun.kind == "training"
    spin(lambda: idle(panel), 60)
    assert panel.logic.trainingRun.returnCode == 0


def test_pytorch_install_can_be_cancelled_or_declined(panel, training_ready, dialogs, monkeypatch, tmp_path):
    monkeypatch.setattr(panel.logic, "torchAvailable", lambda: False)
    monkeypatch.setattr(panel.logic, "pyTorchUtilsAvailable", lambda: False)
    monkeypatch.setattr(type(panel.logic), "torchInstallCommand", staticmethod(lambda python: fake_pip(tmp_path, 60)))
    dialogs.answers.append(False)
    panel.onTrainingStart()
    assert panel.logic.activeRun is None and panel.logic.trainingRun is None
    panel.onTrainingStart()
    run = panel.logic.activeRun
    panel.ui.trainingStopButton.click()
    spin(lambda: idle(panel), 30)
    assert run.stopRequested and panel.ui.trainingStatusLabel.text() == "PyTorch installation cancelled."
    assert panel.logic.trainingRun is None and panel.ui.trainingStartButton.isEnabled()
    # A failed install is reported.
    monkeypatch.setattr(type(panel.logic), "torchInstallCommand", staticmethod(lambda python: fake_pip(tmp_path, 0, 1)))
    dialogs.shown.clear()
    panel.onTrainingStart()
    spin(lambda: idle(panel), 30)
    assert dialogs.kinds() == ["confirm", "error"] and "installation failed" in dialogs.shown[1][1]


def test_pytorch_extension_install_blocks_other_runs_meanwhile(panel, training_ready, monkeypatch):
    seen = []

    def install(askConfirmation=True):
        seen.append(start_states(panel))
        panel.onApplyButton()  # a click processed while the installer's dialog is open
        return False
    monkeypatch.setattr(panel.logic, "torchAvailable", lambda: False)
    monkeypatch.setattr(panel.logic, "pyTorchUtilsAvailable", lambda: True)
    monkeypatch.setattr(panel.logic, "ensureTorch", install)
    panel.onTrainingStart()
    assert seen == [{"apply": False, "batch": False, "train": False, "applyCancel": False, "batchCancel": False,
                     "stop": False}]
    assert panel.logic.activeRun is None and panel.logic.trainingRun is None
    assert "Installing PyTorch is running" not in panel.ui.trainingStartButton.toolTip()


def test_install_command_and_extension_detection(plm, monkeypatch):
    logic = plm.PALNetLandmarksLogic
    command = logic.torchInstallCommand("py")
    assert command[:4] == ["py", "-m", "pip", "install"] and command[4].startswith("torch")
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    assert logic.pyTorchUtilsAvailable() is False
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.ModuleType("PyTorchUtils"))
    assert logic.pyTorchUtilsAvailable() is True


# ---------------------------------------------------------------- sample data, module, cleanup

class FakeSampleData:
    """The Sample Data module's registry, enough to check what the module registers and to load it."""

    def __init__(self):
        self.sources, self.categories = {}, []
        outer = self

        class SampleDataLogic:
            @staticmethod
            def registerCustomSampleDataCategory(category, title):
                outer.categories.append((category, title))

            @staticmethod
            def registerCustomSampleDataSource(**kwargs):
                outer.sources[kwargs["sampleName"]] = kwargs

            def downloadSamples(self, name):
                from urllib.request import url2pathname
                from urllib.parse import urlparse
                source = outer.sources[name]
                uris, names, types_ = (source[k] if isinstance(source[k], list) else [source[k]]
                                       for k in ("uris", "nodeNames", "loadFileType"))
                return [slicer.util.loadNodeFromFile(url2pathname(urlparse(u).path), t, {"name": n})
                        for u, n, t in zip(uris, names, types_)]

        self.SampleDataLogic = SampleDataLogic


def test_sample_face_is_registered_with_sample_data_and_loaded_through_it(plm, panel, monkeypatch):
    import hashlib
    fake = FakeSampleData()
    monkeypatch.setitem(sys.modules, "SampleData", fake)
    panel.ui.loadSampleButton.click()
    node = panel._parameterNode.inputModel
    assert node is not None and node.GetName() == "sample_face" and node.GetPolyData().GetNumberOfPoints() > 1000
    assert set(fake.sources) == {plm.SAMPLE_FACE, plm.SAMPLE_FACE_LANDMARKS}
    assert fake.categories == [(plm.SAMPLE_CATEGORY, "PAL-Net faces")]
    both = fake.sources[plm.SAMPLE_FACE_LANDMARKS]
    assert both["category"] == plm.SAMPLE_CATEGORY and both["loadFileType"] == ["ModelFile", "MarkupsFile"]
    for source in fake.sources.values():
        assert Path(source["thumbnailFileName"]).is_file(), source["thumbnailFileName"]
        uris = source["uris"] if isinstance(source["uris"], list) else [source["uris"]]
        sums = source["checksums"] if isinstance(source["checksums"], list) else [source["checksums"]]
        for uri, checksum in zip(uris, sums):
            from urllib.request import url2pathname
            from urllib.parse import urlparse
            data = Path(url2pathname(urlparse(uri).path)).read_bytes()
            assert checksum == "SHA256:" + hashlib.sha256(data).hexdigest()
    model, truth = fake.SampleDataLogic().downloadSamples(plm.SAMPLE_FACE_LANDMARKS)
    assert truth.GetNumberOfControlPoints() == 50
    # Registered when the application has started, as Slicer's module template does.
    plm.PALNetLandmarks(types.SimpleNamespace())
    assert ("startupCompleted()", plm.registerSampleData) in slicer.app.connections


def test_load_sample_without_the_sample_data_module(plm, panel, monkeypatch):
    monkeypatch.setitem(sys.modules, "SampleData", None)
    assert plm.registerSampleData() is False
    panel.onLoadSample()
    assert panel._parameterNode.inputModel.GetName() == "sample_face"


def test_cleanup_ends_a_running_child(panel, mrml_scene, face, tiny_model_path):
    ready_for_apply(panel, mrml_scene, face, tiny_model_path)
    panel.onApplyButton()
    run = panel.logic.activeRun
    panel.cleanup()
    spin(lambda: not run.running, 30)
    assert run.stopRequested and run.progress is None and run.finished is None


def test_module_refuses_another_package_named_palnet(plm, monkeypatch, tmp_path):
    foreign = types.ModuleType("palnet")
    foreign.__file__ = str(tmp_path / "site-packages" / "palnet" / "__init__.py")
    monkeypatch.setitem(sys.modules, "palnet", foreign)
    saved_path = list(sys.path)
    spec = importlib.util.spec_from_file_location("PALNetLandmarks_clash", str(MODULE_DIR / "PALNetLandmarks.py"))
    with pytest.raises(ImportError, match="another package of that name is already loaded from .*site-packages"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert sys.path == saved_path  # the module folder was put first for the import only


def test_stage_texts_cover_every_stage_predict_reports(plm):
    import inspect
    from palnet import pipeline
    source = inspect.getsource(pipeline)
    for stage in ("cleanup", "alignment", "sampling", "network", "registration", "snapping", "done"):
        assert '"{}"'.format(stage) in source and stage in plm.STAGE_TEXT


# ---------------------------------------------------------------- the panel's size, and its picture for the docs

def test_panel_fits_in_slicers_module_panel(panel, mrml_scene, face, tiny_model_path):
    """Every section expanded, at Slicer's usual panel width: no field squeezed, no metre-high panel.

    With PALNET_PANEL_PNG=<file> the panel (after an Apply on the sample scan, with the
    shipped model) is also saved as a picture: the one in docs/slicer.md. The CTK and MRML
    widgets in it are the harness's plain-Qt stand-ins.
    """
    picture = os.environ.get("PALNET_PANEL_PNG")
    if picture and HAS_SAMPLE:
        node = load_model_file(mrml_scene, sample_scan_path())
        node.SetName("sample_face")
        panel._parameterNode.inputModel = node
    else:
        ready_for_apply(panel, mrml_scene, face, tiny_model_path)
    panel.onApplyButton()
    spin(lambda: idle(panel), 300)
    parent = panel.parent
    QtWidgets.QApplication.instance().processEvents()
    parent.layout().activate()
    opened = parent.sizeHint().height()  # as the module opens: Batch, Training, Measurements, Advanced collapsed
    sections = [panel.ui.measurementsCollapsibleButton, panel.ui.batchCollapsibleButton, panel.ui.trainingCollapsibleButton, panel.ui.advancedCollapsibleButton]
    for section in sections:
        section.setCollapsed(False)
    parent.resize(400, parent.sizeHint().height())
    spin(lambda: not panel._modelInfoTimer.isActive(), 30)
    QtWidgets.QApplication.instance().processEvents()
    height = parent.sizeHint().height()
    field = panel.ui.modelFilePathLineEdit.width()
    record_slicer_figure("Panel at 400 px wide: {} px tall as it opens (after an Apply), {} px with every section "
                         "expanded; landmark-model field {} px wide (plain-Qt stand-ins for the CTK/MRML widgets)".format(
                             opened, height, field))
    assert opened < 1100 and height < 2200 and field > 180
    if picture:
        for section in sections:
            section.setCollapsed(True)
        panel.ui.measurementsCollapsibleButton.setCollapsed(False)
        QtWidgets.QApplication.instance().processEvents()
        parent.layout().activate()
        parent.resize(400, parent.sizeHint().height())
        QtWidgets.QApplication.instance().processEvents()
        assert parent.grab().save(picture)
