"""PAL-Net Landmarks: 50 anatomical landmarks on 3D face surface models, in 3D Slicer.

The pipeline lives in the ``palnet`` package next to this file (pure Python:
NumPy, SciPy, VTK). This module converts MRML nodes to palnet data and back
(see PALNetLandmarksLib/mrml.py) and adds the GUI. Apply, Batch, Training and the
PyTorch install each run in a child process (PALNetLandmarksLib/background.py), one
at a time, so Slicer keeps painting and every run can be cancelled.
"""
import hashlib
import importlib.util
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Annotated, Callable, Dict, List, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLModelNode
from slicer.parameterNodeWrapper import Choice, GuiConnector, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # slicer-core (the MRML scene without the application) has no translations
    def _(text):
        return text

    def translate(context, text):
        return text

MODULE_DIR = os.path.dirname(os.path.abspath(__file__))


def _checkOwnPalnet(package) -> None:
    """Raise ImportError unless ``package`` is the ``palnet`` beside this file.

    Slicer puts every scripted module's folder on sys.path, where a package named
    ``palnet`` from elsewhere (``pip install palnet`` into Slicer, another extension)
    could be found first; the module would then run another version's code.
    """
    found = os.path.dirname(os.path.abspath(getattr(package, "__file__", None) or "?"))
    own = os.path.join(MODULE_DIR, "palnet")
    if os.path.normcase(os.path.realpath(found)) != os.path.normcase(os.path.realpath(own)):
        raise ImportError("PAL-Net Landmarks needs its own 'palnet' package ({own}), but another package of that "
                          "name is already loaded from {found}: uninstall it from Slicer's Python "
                          "(slicer.util.pip_uninstall('palnet')) and restart Slicer".format(own=own, found=found))


sys.path.insert(0, MODULE_DIR)  # this module's own packages first, for these imports only
try:
    import palnet
    _checkOwnPalnet(palnet)
    from palnet import options as _options
    from palnet import resources
    from palnet import status as _status
    from palnet.errors import PalnetError
    from PALNetLandmarksLib import background, mrml, runner, training
finally:
    sys.path.remove(MODULE_DIR)  # the entry inserted above; the one Slicer added stays

DOCS_URL = "https://github.com/palnet-slicer/SlicerPALNet/blob/main/docs/slicer.md"
# The choices come from palnet.options, which the command line uses too; the widget fills the .ui's
# combo boxes with them at setup (the .ui lists no items), each showing its default.
SNAP_CHOICES = list(_options.SNAP_METHODS)
UNIT_CHOICES = list(_options.UNIT_CHOICES)
FORMAT_CHOICES = list(_options.LANDMARK_FORMATS)
DEFAULT_SNAP = _options.DEFAULT_SNAP
DEFAULT_UNITS = _options.AUTO_UNITS
DEFAULT_SAMPLINGS, MAX_SAMPLINGS = _options.DEFAULT_SAMPLINGS, _options.MAX_SAMPLINGS
DEFAULT_FORMAT = "mrk.json"
DEFAULT_EPOCHS = 100
SAMPLE_CATEGORY = "PAL-Net"
SAMPLE_FACE = "PALNetSampleFace"
SAMPLE_FACE_LANDMARKS = "PALNetSampleFaceLandmarks"
TORCH_REQUIREMENT = "torch>=2.0"

# Models are loaded once per (path, modification time, size) and shared by every logic instance.
_MODEL_CACHE: Dict[str, tuple] = {}
_MODEL_CACHE_SIZE = 3


def pathOrNone(value) -> Optional[str]:
    """A path parameter as text; None when unset (empty, or "." which is how pathlib writes an empty path)."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text in ("", ".") else text


def samePath(a, b) -> bool:
    """Whether two path parameters or texts name the same path ("/data/" and "/data" do; unset and "" do)."""
    a, b = pathOrNone(a), pathOrNone(b)
    return a == b if a is None or b is None else pathlib.Path(a) == pathlib.Path(b)


def _protocolSummary() -> str:
    try:
        from palnet.protocol import default_protocol
        protocol = default_protocol()
        sides = [lm.side for lm in protocol]
        return _("{n} soft-tissue landmarks ({mid} midline, {pairs} bilateral pairs; Farkas definitions) "
                 "in {r} regions: {regions}.").format(
            n=len(protocol), mid=sides.count("midline"), pairs=sides.count("right"),
            r=len(protocol.regions), regions=", ".join(protocol.regions))
    except Exception:  # the help text must never stop the module from loading
        return _("50 soft-tissue landmarks (Farkas definitions).")


#
# PALNetLandmarks
#


class PALNetLandmarks(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help & Acknowledgement section."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("PAL-Net Landmarks")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Shape Analysis")]
        self.parent.dependencies = []
        self.parent.contributors = ["PALNet for 3D Slicer contributors"]
        self.parent.helpText = _("""
Places anatomical landmarks on a 3D face surface model (stereo-photogrammetry, structured-light or
phone scan) with PAL-Net, a point-wise CNN with patch attention. The scan may be in any pose and in
mm, cm or m; it is aligned automatically. The shipped model places {summary}
Pick the surface model and press Apply: the landmarks appear as a new point list (label = abbreviation,
description = full name). Click a row of the results table to centre the views on that landmark.
The Batch section processes a folder of scans; the Training section trains a model on your own
annotated scans, with your own landmark protocol (needs PyTorch, installed on request).
See the <a href="{docs}">module documentation</a>.
""").format(summary=_protocolSummary(), docs=DOCS_URL)
        self.parent.acknowledgementText = _("""
PAL-Net: Shadman Yazdi A, Cappella A, Baldini B, Solazzo R, Tartaglia G, Sforza C, Baselli G.
PAL-Net: A Point-Wise CNN with Patch-Attention for 3D Facial Landmark Localization.
arXiv:2510.00910; Informatics in Medicine Unlocked 60 (2026). This module re-implements the method
from the paper's description.<br><br>
The default model and the sample scan are derived from ICT-FaceKit
(https://github.com/ICT-VGL/ICT-FaceKit), Copyright (c) 2020 USC Institute for Creative Technologies,
used under the MIT licence: Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish, distribute,
sublicense, and/or sell copies of the Software, and to permit persons to whom the Software is furnished
to do so, subject to the following conditions: The above copyright notice and this permission notice
shall be included in all copies or substantial portions of the Software. THE SOFTWARE IS PROVIDED "AS
IS", WITHOUT WARRANTY OF ANY KIND.<br><br>
Landmark definitions: Farkas LG, Anthropometry of the Head and Face, 2nd ed., Raven Press, 1994.
""")
        app = getattr(slicer, "app", None)
        if app is not None:  # the Sample Data module exists once the application has started
            app.connect("startupCompleted()", registerSampleData)


def _fileUri(path) -> str:
    import urllib.parse
    import urllib.request
    return urllib.parse.urljoin("file:", urllib.request.pathname2url(os.path.abspath(str(path))))


def _sha256(path) -> str:
    with open(str(path), "rb") as f:
        return "SHA256:" + hashlib.sha256(f.read()).hexdigest()


def registerSampleData() -> bool:
    """The bundled face scan (alone, and with its known landmarks) in the Sample Data module.

    The files ship with the module; Sample Data copies them into its cache (checked by
    SHA-256) and loads them. Returns False where there is no Sample Data module.
    """
    try:
        import SampleData
    except ImportError:
        return False
    scan, truth = resources.sample_scan_path(), resources.sample_landmarks_path()
    if not scan.exists():
        return False
    sampleLogic = SampleData.SampleDataLogic
    if hasattr(sampleLogic, "registerCustomSampleDataCategory"):  # Slicer 5.10 and later
        sampleLogic.registerCustomSampleDataCategory(SAMPLE_CATEGORY, title=_("PAL-Net faces"))
    icons = os.path.join(MODULE_DIR, "Resources", "Icons")
    sampleLogic.registerCustomSampleDataSource(
        category=SAMPLE_CATEGORY, sampleName=SAMPLE_FACE,
        thumbnailFileName=os.path.join(icons, "PALNetSampleFace.png"),
        uris=_fileUri(scan), fileNames="PALNet_sample_face.ply", nodeNames="sample_face",
        checksums=_sha256(scan), loadFileType="ModelFile")
    if truth.exists():
        sampleLogic.registerCustomSampleDataSource(
            category=SAMPLE_CATEGORY, sampleName=SAMPLE_FACE_LANDMARKS,
            thumbnailFileName=os.path.join(icons, "PALNetSampleFaceLandmarks.png"),
            uris=[_fileUri(scan), _fileUri(truth)],
            fileNames=["PALNet_sample_face.ply", "PALNet_sample_face.mrk.json"],
            nodeNames=["sample_face", "sample_face reference landmarks"],
            checksums=[_sha256(scan), _sha256(truth)], loadFileType=["ModelFile", "MarkupsFile"])
    return True


#
# PALNetLandmarksParameterNode
#


@parameterNodeWrapper
class PALNetLandmarksParameterNode:
    """What the user chose in the module panel (saved with the scene).

    inputModel - the face surface to place landmarks on.
    outputPointList - the point list to refill; none: a new point list is created on every Apply.
    modelFile - the PALNet model file (.npz); unset (empty, shown as an empty field): the shipped default model.
    snap - how predicted points are put on the surface (nearest vertex, mean of nearest vertices, closest surface point).
    units - length unit of the scan's coordinates; auto detects mm, cm or m from the scan's size.
    lockPoints - lock the placed control points against accidental dragging.
    samplings - how many times the surface is sampled, the network's answers averaged (more: a little more accurate).
    batchInputFolder, batchOutputFolder, batchFormat, batchOverwrite - the Batch section.
    trainingDataFolder, trainingEpochs, trainingAugmentCopies, trainingOutputModel - the Training section.
    Paths are pathlib.Path; an unset path reads as Path(".") (see pathOrNone).
    """

    inputModel: vtkMRMLModelNode
    outputPointList: vtkMRMLMarkupsFiducialNode
    modelFile: pathlib.Path
    snap: Annotated[str, Choice(SNAP_CHOICES)] = DEFAULT_SNAP
    units: Annotated[str, Choice(UNIT_CHOICES)] = DEFAULT_UNITS
    lockPoints: bool = False
    samplings: Annotated[int, WithinRange(1, MAX_SAMPLINGS)] = DEFAULT_SAMPLINGS
    batchInputFolder: pathlib.Path
    batchOutputFolder: pathlib.Path
    batchFormat: Annotated[str, Choice(FORMAT_CHOICES)] = DEFAULT_FORMAT
    batchOverwrite: bool = False
    trainingDataFolder: pathlib.Path
    trainingEpochs: Annotated[int, WithinRange(1, 10000)] = DEFAULT_EPOCHS
    trainingAugmentCopies: Annotated[int, WithinRange(0, 20)] = 0
    trainingOutputModel: pathlib.Path


PATH_PARAMETERS = ("modelFile", "batchInputFolder", "batchOutputFolder", "trainingDataFolder", "trainingOutputModel")


class PathFieldConnector(GuiConnector):
    """A ctkPathLineEdit bound to a pathlib.Path parameter, without rewriting what the user types.

    Slicer's own connector writes the text back after every change, which puts the
    cursor at the end of the field, turns an emptied field into "." and drops a
    trailing "/" as it is typed. This one writes only when the parameter names
    another path than the text does, and shows an unset path as an empty field.
    """

    @staticmethod
    def canRepresent(widget, datatype) -> bool:
        return hasattr(widget, "currentPathChanged") and datatype is pathlib.Path

    @staticmethod
    def create(widget, datatype):
        return PathFieldConnector(widget) if PathFieldConnector.canRepresent(widget, datatype) else None

    def __init__(self, widget):
        super().__init__()
        self._widget = widget

    def _connect(self):
        self._widget.currentPathChanged.connect(self._onPathChanged)

    def _disconnect(self):
        self._widget.currentPathChanged.disconnect(self._onPathChanged)

    def _onPathChanged(self, *args):
        self.changed()

    def widget(self):
        return self._widget

    def read(self) -> pathlib.Path:
        return pathlib.Path(pathOrNone(self._widget.currentPath) or "")

    def write(self, value) -> None:
        if not samePath(value, self._widget.currentPath):
            self._widget.setCurrentPath(pathOrNone(value) or "")


#
# PALNetLandmarksWidget
#

STAGE_TEXT = {"loading": "loading the model", "cleanup": "cleaning the scan", "alignment": "aligning the face",
              "alignment (wider search)": "aligning the face (a wider search)",
              "alignment (other sizes)": "aligning the face (at other sizes)",
              "sampling": "sampling the surface", "network": "running the network",
              "registration": "registering the face template",
              "snapping": "putting the points on the surface", "done": "finishing", "measuring": "measuring"}
RUN_NAMES = {"prediction": "Placing landmarks", "batch": "A batch", "training": "A training",
             "install": "Installing PyTorch"}


class PALNetLandmarksWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel; every computation goes through PALNetLandmarksLogic.

    One run at a time: while Apply, a batch, a training or the PyTorch install runs, the
    buttons that would start another are disabled (their tooltip says why) and the
    run's own Cancel/Stop button is enabled. Runs are child processes polled by a timer,
    so the panel and the views stay live.
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._shownModelFile = self  # what the Advanced section shows (self: nothing yet)
        self._resultNode = None
        self._blockingTask = None  # what runs in this thread with the buttons disabled (PyTorchUtils install)
        self._pendingTraining = None  # training to start once PyTorch is installed
        self._trainingEpochs = DEFAULT_EPOCHS

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PALNetLandmarks.ui"))
        self.layout.addWidget(uiWidget)
        self.uiWidget = uiWidget
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self._fillComboBoxes()

        self.logic = PALNetLandmarksLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.clicked.connect(self.onApplyButton)
        self.ui.applyCancelButton.clicked.connect(self.onCancelRun)
        self.ui.loadSampleButton.clicked.connect(self.onLoadSample)
        self.ui.modelFileDefaultButton.clicked.connect(self.onDefaultModelFile)
        self.ui.resultsTable.cellClicked.connect(self.onResultCellClicked)
        self.ui.measurementsTable.cellClicked.connect(self.onMeasurementCellClicked)
        self.ui.batchRunButton.clicked.connect(self.onBatchRun)
        self.ui.batchCancelButton.clicked.connect(self.onCancelRun)
        self.ui.trainingStartButton.clicked.connect(self.onTrainingStart)
        self.ui.trainingStopButton.clicked.connect(self.onTrainingStop)
        self.ui.trainingShowPlotButton.clicked.connect(self.onTrainingShowPlot)
        self.ui.trainingUseModelButton.clicked.connect(self.onTrainingUseModel)
        for table, nameColumn in ((self.ui.resultsTable, 1), (self.ui.measurementsTable, 0)):
            table.verticalHeader().setVisible(False)  # the panel is narrow: the names get the width
            table.horizontalHeader().setSectionResizeMode(nameColumn, qt.QHeaderView.Stretch)
        for idleWidget in (self.ui.batchLog, self.ui.trainingLog, self.ui.batchProgressBar, self.ui.trainingProgressBar):
            idleWidget.setVisible(False)  # shown once there is something to show: the panel stays short

        # The model file is read once the typing has paused, not at every keystroke.
        self._modelInfoTimer = qt.QTimer()
        self._modelInfoTimer.setSingleShot(True)
        self._modelInfoTimer.setInterval(400)
        self._modelInfoTimer.timeout.connect(self._showModelInfo)

        self.initializeParameterNode()
        self._updateButtons()

    def _fillComboBoxes(self) -> None:
        """The combo boxes' items from palnet.options (the .ui lists none), each showing its default."""
        for box, items, default in ((self.ui.snapComboBox, SNAP_CHOICES, DEFAULT_SNAP),
                                    (self.ui.unitsComboBox, UNIT_CHOICES, DEFAULT_UNITS),
                                    (self.ui.batchFormatComboBox, FORMAT_CHOICES, DEFAULT_FORMAT)):
            box.clear()
            box.addItems(items)
            box.setCurrentIndex(box.findText(default))
        self.ui.samplingsSpinBox.setRange(1, MAX_SAMPLINGS)
        self.ui.samplingsSpinBox.setValue(DEFAULT_SAMPLINGS)

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()
        if self.logic is not None:
            run = self.logic.activeRun
            if run is not None:
                run.progress = run.finished = None  # the panel is going away: no more GUI updates
                self.logic.cancelRun()  # never leave a child process behind

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        run = self.logic.activeRun
        if run is not None and run.kind == "prediction":
            self.logic.cancelRun()  # its nodes are going away
        self._resultNode = None
        self.ui.resultsTable.setRowCount(0)
        self.ui.measurementsTable.setRowCount(0)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputModel:
            firstModel = PALNetLandmarksLogic.firstSurfaceModel(slicer.mrmlScene)
            if firstModel:
                self._parameterNode.inputModel = firstModel

    def setParameterNode(self, inputParameterNode: Optional[PALNetLandmarksParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectParametersToGui(self._guiMapping())
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _guiMapping(self) -> dict:
        """Widgets with a "SlicerParameterName" property in the .ui, by parameter; path fields get PathFieldConnector."""
        mapping = {}
        for widget in self.uiWidget.findChildren(qt.QWidget):
            name = widget.property("SlicerParameterName")
            if name:
                mapping[str(name)] = PathFieldConnector(widget) if name in PATH_PARAMETERS else widget
        return mapping

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._updateButtons()
        modelFile = pathOrNone(self._parameterNode.modelFile) if self._parameterNode else None
        if modelFile != self._shownModelFile:
            self._modelInfoTimer.start()  # restarted by every change: read once the typing pauses

    # ------------------------------------------------------------ one run at a time

    def _busyReason(self) -> Optional[str]:
        """Why nothing can start now (a run is going on), or None."""
        run = self.logic.activeRun if self.logic else None
        kind = run.kind if run is not None else self._blockingTask
        if kind is None:
            return None
        return _("{what} is running: wait for it to end, or cancel it.").format(what=_(RUN_NAMES.get(kind, kind)))

    def _updateButtons(self) -> None:
        """Enable exactly what may start now, and the Cancel/Stop of the run that is going on."""
        run = self.logic.activeRun if self.logic else None
        busy = self._busyReason()
        kind = run.kind if run is not None else None

        reason = busy or (self.logic.applyBlocker(self._parameterNode) if self.logic else _("Not initialised."))
        self.ui.applyButton.setEnabled(reason is None)
        self.ui.applyButton.setToolTip(reason or _("Place the model's landmarks on the selected surface."))
        self.ui.applyCancelButton.setVisible(kind == "prediction")
        self.ui.applyProgressBar.setVisible(kind == "prediction")

        reason = busy or self._batchBlocker()
        self.ui.batchRunButton.setEnabled(reason is None)
        self.ui.batchRunButton.setToolTip(reason or _("Place landmarks on every scan in the folder (sub-folders too)."))
        self.ui.batchCancelButton.setEnabled(kind == "batch")

        reason = busy or self._trainingBlocker()
        self.ui.trainingStartButton.setEnabled(reason is None)
        self.ui.trainingStartButton.setToolTip(reason or _("Train in the background; Slicer stays usable."))
        self.ui.trainingStopButton.setEnabled(kind in ("training", "install"))
        last = self.logic.trainingRun if self.logic else None
        self.ui.trainingShowPlotButton.setEnabled(last is not None and last.chartNode is not None)
        self.ui.trainingUseModelButton.setEnabled(busy is None and last is not None and last.returnCode == 0
                                                  and os.path.exists(last.outputModelPath or ""))

    def onCancelRun(self) -> None:
        self.logic.cancelRun()
        self._updateButtons()

    # ------------------------------------------------------------ apply

    def onApplyButton(self) -> None:
        if self._busyReason() is not None:  # a queued click after another run started
            return
        p = self._parameterNode
        self.ui.statusLabel.setStyleSheet("")
        self.ui.applyProgressBar.setValue(0)
        with slicer.util.tryWithErrorDisplay(_("Failed to place landmarks.")):
            try:
                self.logic.startPrediction(p.inputModel, p.outputPointList, pathOrNone(p.modelFile), p.snap, p.units,
                                           p.lockPoints, progress=self.onApplyProgress, finished=self.onApplyFinished,
                                           samplings=p.samplings)
            except Exception:
                self.ui.statusLabel.setText(_("Failed: see the error message."))
                raise
            self.ui.statusLabel.setText(_("Placing landmarks: starting..."))
        self._updateButtons()

    def onApplyProgress(self, stage: str, fraction: float) -> None:
        self.ui.applyProgressBar.setValue(int(round(100 * fraction)))
        self.ui.statusLabel.setText(_("Placing landmarks: {stage}...").format(stage=_(STAGE_TEXT.get(stage, stage))))

    def onApplyFinished(self, run) -> None:
        self._updateButtons()
        if run.node is not None:
            self._showResult(run.node)
        elif run.stopRequested:
            self.ui.statusLabel.setText(_("Cancelled: no landmarks placed."))
        else:
            self.ui.statusLabel.setText(_("Failed: {message}").format(message=run.message))
            slicer.util.errorDisplay(_("Failed to place landmarks.") + "\n\n" + run.message,
                                     detailedText="\n".join(run.log[-40:]))

    def _showResult(self, node) -> None:
        prediction = self.logic.lastPrediction
        self._resultNode = node
        status = prediction.status
        text = _("{status}: {n} landmarks in '{node}', face fit {fit:.2f} mm, units {units}, {seconds:.1f} s").format(
            status=status, n=len(prediction.landmarks), node=node.GetName(), fit=prediction.fit_rms_mm,
            units=prediction.units, seconds=self.logic.lastSeconds)
        color = {_status.OK: "", _status.NOT_A_FACE: "#c00000"}.get(status, "#b36b00")  # amber: low fit, partial
        if self.logic.lastMeasurementsTable is not None:
            text += _("; {n} measurements in '{table}'").format(n=len(self.logic.lastMeasurements),
                                                               table=self.logic.lastMeasurementsTable.GetName())
        if prediction.message:  # why the status is not ok, missing landmarks, ones out of anatomical order
            text += "\n" + prediction.message[:1].upper() + prediction.message[1:]
        self.ui.statusLabel.setText(text)
        self.ui.statusLabel.setStyleSheet("color: {}".format(color) if color else "")
        self._fillResultsTable()
        self._fillMeasurementsTable()
        if status == _status.NOT_A_FACE:
            slicer.util.warningDisplay(
                _("{reason}. The landmarks were placed, but check them, the units and the input model.").format(
                    reason=prediction.message[:1].upper() + prediction.message[1:]))

    def _fillResultsTable(self) -> None:
        table = self.ui.resultsTable
        rows = self.logic.lastResultRows()
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            conf = row["confidence"]
            cells = [row["label"], row["name"], row["region"], "-" if conf is None else "{:.2f}".format(conf)]
            for c, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(row["definition"] or row["name"])
                if c == 2 and row["color"] is not None:
                    red, green, blue = (int(round(255 * v)) for v in row["color"])
                    item.setBackground(qt.QBrush(qt.QColor(red, green, blue, 90)))
                table.setItem(r, c, item)
        table.resizeColumnsToContents()
        table.setColumnWidth(2, min(table.columnWidth(2), 70))  # the colour says the region; the name needs the room

    def _fillMeasurementsTable(self) -> None:
        table = self.ui.measurementsTable
        rows = self.logic.lastMeasurements or []
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            number = (lambda value: "-" if value is None else "{:.2f}".format(value))
            cells = [row["name"], number(row["value"]), row["units"], number(row["se"]), number(row["z"])]
            for c, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setToolTip("{}: {} ({})".format(row["id"], " ".join(row.get("landmarks") or ()), row["kind"]))
                table.setItem(r, c, item)
        table.resizeColumnsToContents()

    def onResultCellClicked(self, row, column) -> None:
        node = self._resultNode
        if node is None or node.GetScene() is None or row >= node.GetNumberOfControlPoints():
            return
        markupsLogic = slicer.modules.markups.logic()
        markupsLogic.JumpSlicesToNthPointInMarkup(node.GetID(), row, True)
        markupsLogic.FocusCamerasOnNthPointInMarkup(node.GetID(), row)

    def onMeasurementCellClicked(self, row, column) -> None:
        """Show the clicked measurement in the views (a line or an angle between its landmarks)."""
        rows = self.logic.lastMeasurements or []
        if 0 <= row < len(rows):
            self.logic.showMeasurement(rows[row], self._resultNode)

    def onLoadSample(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to load the sample scan."), waitCursor=True):
            self._parameterNode.inputModel = self.logic.loadSample()

    def onDefaultModelFile(self) -> None:
        self._parameterNode.modelFile = pathlib.Path()

    def _showModelInfo(self) -> None:
        """The Advanced section: what the model file holds (read once per file, not per keystroke)."""
        modelFile = pathOrNone(self._parameterNode.modelFile) if self._parameterNode else None
        self._shownModelFile = modelFile
        problem = self.logic.modelFileProblem(modelFile)
        if problem:
            self.ui.modelInfoLabel.setText(problem)
            return
        try:
            info = self.logic.modelInfo(modelFile)
            self.ui.modelInfoLabel.setText(PALNetLandmarksLogic.modelInfoHtml(info))
            self.ui.modelInfoLabel.setToolTip(info["path"])
        except Exception as exc:  # shown in the panel; Apply says the same when pressed
            self.ui.modelInfoLabel.setText(_("Model file: {}").format(exc))

    # ------------------------------------------------------------ batch

    def _batchBlocker(self) -> Optional[str]:
        p = self._parameterNode
        if not p:
            return _("Not initialised.")
        inputDir = pathOrNone(p.batchInputFolder)
        if not inputDir or not os.path.isdir(inputDir):
            return _("Choose the folder of face scans (.ply .obj .stl .vtk .vtp).")
        if not pathOrNone(p.batchOutputFolder):
            return _("Choose the folder for the landmark files.")
        return self.logic.modelFileProblem(pathOrNone(p.modelFile))

    def onBatchRun(self) -> None:
        if self._busyReason() is not None:
            return
        p = self._parameterNode
        self.ui.batchLog.clear()
        self.ui.batchLog.setVisible(False)
        self.ui.batchProgressBar.setValue(0)
        self.ui.batchProgressBar.setVisible(True)
        with slicer.util.tryWithErrorDisplay(_("Batch prediction failed.")):
            self.logic.startBatch(pathOrNone(p.batchInputFolder), pathOrNone(p.batchOutputFolder), p.batchFormat,
                                  progress=self.onBatchProgress, finished=self.onBatchFinished,
                                  modelPath=pathOrNone(p.modelFile), snap=p.snap, units=p.units,
                                  overwrite=p.batchOverwrite, samplings=p.samplings)
            self.ui.batchSummaryLabel.setText(_("Starting..."))
            for field in (self.ui.batchInputFolderPathLineEdit, self.ui.batchOutputFolderPathLineEdit):
                field.addCurrentPathToHistory()
        self._updateButtons()

    def onBatchProgress(self, done, total, scan, error=None) -> None:
        self.ui.batchProgressBar.setMaximum(total)
        self.ui.batchProgressBar.setValue(done)
        self.ui.batchSummaryLabel.setText(_("{done}/{total}: {scan}").format(done=done, total=total, scan=scan))
        if error:
            self._appendLog(self.ui.batchLog, "{}: {}".format(scan, error))

    def onBatchFinished(self, run) -> None:
        self._updateButtons()
        if run.rows is None:
            self.ui.batchSummaryLabel.setText(run.message)
            if not run.stopRequested:
                slicer.util.errorDisplay(_("Batch prediction failed.") + "\n\n" + run.message,
                                         detailedText="\n".join(run.log[-40:]))
            return
        self.ui.batchSummaryLabel.setText(run.message)
        self.ui.batchLog.clear()
        for row in run.rows:
            detail = row.message or _("fit {:.2f} mm, {:.1f} s").format(row.fit_rms_mm, row.seconds)
            self._appendLog(self.ui.batchLog, "{:<24} {:<10} {}".format(row.scan, row.status, detail))

    @staticmethod
    def _appendLog(log, line: str) -> None:
        log.setVisible(True)
        log.appendPlainText(line)

    # ------------------------------------------------------------ training

    def _trainingBlocker(self) -> Optional[str]:
        p = self._parameterNode
        if not p:
            return _("Not initialised.")
        dataDir = pathOrNone(p.trainingDataFolder)
        if not dataDir or not os.path.isdir(dataDir):
            return _("Choose the folder of annotated scans (each scan with its landmark file).")
        if not pathOrNone(p.trainingOutputModel):
            return _("Choose the file the trained model is saved to (.npz).")
        return None

    def onTrainingStart(self) -> None:
        if self._busyReason() is not None:
            return
        p = self._parameterNode
        output = pathOrNone(p.trainingOutputModel)
        if not output.lower().endswith(".npz"):
            output += ".npz"
            p.trainingOutputModel = pathlib.Path(output)
        request = (pathOrNone(p.trainingDataFolder), output, p.trainingEpochs, p.trainingAugmentCopies)
        self.ui.trainingLog.clear()
        self.ui.trainingLog.setVisible(False)
        if not self.logic.torchAvailable():
            if not self._installTorch(request):
                return
            if self.logic.activeRun is not None:  # installing in the background: training starts when it ends
                return
        self._startTraining(*request)

    def _installTorch(self, request) -> bool:
        """Install PyTorch after asking; False when the user declined or it failed."""
        if self.logic.pyTorchUtilsAvailable():
            # The PyTorch extension's installer runs here, with its own dialogs; nothing else may start meanwhile.
            self._blockingTask = "install"
            self._updateButtons()
            try:
                with slicer.util.tryWithErrorDisplay(_("Could not install PyTorch.")):
                    ok = self.logic.ensureTorch(askConfirmation=True)
            except Exception:
                ok = False
            finally:
                self._blockingTask = None
                self._updateButtons()
            return ok
        if not slicer.util.confirmOkCancelDisplay(
                _("Training needs the PyTorch Python package (CPU build, about 200 MB), which is not installed. "
                  "Download and install it now? This needs a network connection and may take several minutes; "
                  "Slicer stays usable, and Stop cancels the installation."), _("Install PyTorch")):
            return False
        with slicer.util.tryWithErrorDisplay(_("Could not install PyTorch.")):
            self.logic.startTorchInstall(progress=self.onInstallProgress, finished=self.onInstallFinished)
            self._pendingTraining = request
            self.ui.trainingStatusLabel.setText(_("Installing PyTorch..."))
        self._updateButtons()
        return True

    def onInstallProgress(self, line: str) -> None:
        self._appendLog(self.ui.trainingLog, line)

    def onInstallFinished(self, run) -> None:
        request, self._pendingTraining = self._pendingTraining, None
        self.ui.trainingStatusLabel.setText(run.message)
        self._updateButtons()
        if run.returnCode == 0 and request is not None and self.logic.torchAvailable():
            self._startTraining(*request)
        elif not run.stopRequested:
            slicer.util.errorDisplay(_("Could not install PyTorch.") + "\n\n" + run.message,
                                     detailedText="\n".join(run.log[-40:]))

    def _startTraining(self, dataDir: str, output: str, epochs: int, augmentCopies: int) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not start training.")):
            self._trainingEpochs = int(epochs)
            self.ui.trainingProgressBar.setMaximum(epochs)
            self.ui.trainingProgressBar.setValue(0)
            self.ui.trainingProgressBar.setVisible(True)
            run = self.logic.train(dataDir, output, epochs=epochs, progress=self.onTrainingProgress,
                                   finished=self.onTrainingFinished, augmentCopies=augmentCopies,
                                   askConfirmation=False)
            self.ui.trainingStatusLabel.setText(_("Preparing the scans..."))
            for field in (self.ui.trainingDataFolderPathLineEdit, self.ui.trainingOutputModelPathLineEdit):
                field.addCurrentPathToHistory()
            slicer.modules.plots.logic().ShowChartInLayout(run.chartNode)
        self._updateButtons()

    def onTrainingProgress(self, row, line) -> None:
        if row is None:  # an epoch's event line (row) follows its log line, shown already
            self._appendLog(self.ui.trainingLog, line)
        else:
            self.ui.trainingProgressBar.setValue(min(int(row["epoch"]), self._trainingEpochs))
            self.ui.trainingStatusLabel.setText(_(
                "epoch {epoch}: loss {loss:.3f}, validation {val_pointwise_mm:.2f} mm point-wise, "
                "{val_distancewise_mm:.2f} mm distance-wise").format(**row))

    def onTrainingFinished(self, returnCode, message) -> None:
        self.ui.trainingStatusLabel.setText(message)
        self._updateButtons()
        run = self.logic.trainingRun
        if returnCode != 0 and run is not None and not run.stopRequested:
            slicer.util.errorDisplay(_("Training failed.") + "\n\n" + message,
                                     detailedText="\n".join(run.log[-40:]))

    def onTrainingStop(self) -> None:
        self._pendingTraining = None
        self.logic.cancelRun()
        self._updateButtons()

    def onTrainingShowPlot(self) -> None:
        run = self.logic.trainingRun
        if run is not None and run.chartNode is not None and run.chartNode.GetScene() is not None:
            slicer.modules.plots.logic().ShowChartInLayout(run.chartNode)

    def onTrainingUseModel(self) -> None:
        run = self.logic.trainingRun
        if run is not None and run.outputModelPath:
            self._parameterNode.modelFile = pathlib.Path(run.outputModelPath)


#
# Runs: child processes polled from a timer
#


class PredictionSummary:
    """What a prediction in the child process reports: the fields of palnet.pipeline.Prediction the module uses."""

    def __init__(self, result: dict):
        from palnet.datatypes import Landmarks
        import numpy as np
        confidence = result.get("confidence")
        self.landmarks = Landmarks(list(result["labels"]), np.asarray(result["points"], dtype=np.float64).reshape(-1, 3),
                                   confidence=None if confidence is None else np.asarray(confidence, dtype=np.float64),
                                   units=result["units"])
        self.status = result["status"]
        self.message = result.get("message", "")
        self.units = result["units"]
        self.fit_rms_mm = float(result["fit_rms_mm"])
        self.seconds = float(result["seconds"])
        self.missing = tuple(result.get("missing") or ())


class ChildRun(background.BackgroundRun):
    """A run of PALNetLandmarksLib.runner: stage or scan events, a result file, a cancel file."""

    def __init__(self, command: List[str], workDir: str, progress: Optional[Callable] = None,
                 finished: Optional[Callable] = None):
        self.workDir = workDir
        self.resultPath = os.path.join(workDir, "result.json")
        self.cancelPath = os.path.join(workDir, "cancel")
        self.progress = progress
        self.error = None  # type: Optional[str]
        super().__init__(background.ChildProcess(command + ["--result", self.resultPath, "--cancel", self.cancelPath]),
                         finished)

    def handleLine(self, line: str) -> None:
        event = runner.parseEvent(line)
        if event is None:
            return
        if event["event"] == "error":
            self.error = event.get("message") or ""
        else:
            self.handleEvent(event)

    def handleEvent(self, event: dict) -> None:
        pass

    def readResult(self, code: int):
        """The result file's content, or None (message set) when the run failed or was cancelled."""
        import json
        if self.stopRequested or code == runner.EXIT_CANCELLED:
            self.message = _("Cancelled.")
            return None
        if code != 0 or not os.path.exists(self.resultPath):
            last = self.error or next((line for line in reversed(self.log) if line.strip()), "")
            self.message = self.error or _("the {kind} process failed (exit status {code}): {last}").format(
                kind=self.kind, code=code, last=last)
            return None
        with open(self.resultPath, encoding="utf-8") as f:
            return json.load(f)

    def cancel(self) -> None:
        """Stop now: the cancel file tells the child; a batch's child then still writes its summary."""
        try:
            open(self.cancelPath, "w").close()
        except OSError:
            pass
        self.process.stop(self.cancelGraceSeconds, terminate=False)

    cancelGraceSeconds = 0.0

    def cleanup(self) -> None:
        shutil.rmtree(self.workDir, ignore_errors=True)


class PredictionRun(ChildRun):
    """Apply in a child process. ``progress(stage, fraction)`` per pipeline stage; ``finished(run)`` once.

    At the end (on the polling thread) the point list is filled: ``run.node``, else
    ``run.message`` says why not (cancelled, or the one-line error).
    """

    kind = "prediction"

    def __init__(self, logic, command, workDir, modelNode, outputMarkupsNode, modelPath, lockPoints,
                 progress=None, finished=None, startTime=None):
        self.logic = logic
        self.modelNode = modelNode
        self.outputMarkupsNode = outputMarkupsNode
        self.modelPath = modelPath
        self.lockPoints = lockPoints
        self.node = None
        self.stage = None
        self.wallStart = startTime if startTime is not None else time.perf_counter()
        super().__init__(command, workDir, progress, finished)

    def handleEvent(self, event: dict) -> None:
        if event["event"] == "stage":
            self.stage = event.get("stage")
            if self.progress:
                self.progress(self.stage, float(event.get("fraction", 0.0)))

    def handleEnd(self, code: int) -> None:
        result = self.readResult(code)
        if result is None:
            return
        if self.modelNode.GetScene() is None:
            self.message = _("The input model was removed from the scene during the prediction.")
            return
        self.node = self.logic._placeLandmarks(self.modelNode, self.outputMarkupsNode, result, self.modelPath,
                                               self.lockPoints, self.wallStart)
        self.message = _("{n} landmarks placed").format(n=len(result["labels"]))


class BatchRun(ChildRun):
    """A batch in a child process. ``progress(done, total, scan, error)`` after each scan; ``finished(run)`` once.

    Cancel interrupts it at once; the summary CSV still lists every scan (``not run`` for
    those not done). ``rows`` at the end: palnet.batch.BatchItem per scan, or None.
    """

    kind = "batch"
    cancelGraceSeconds = 15.0  # time to kill its workers and write the summary

    def __init__(self, command, workDir, outputDir, progress=None, finished=None):
        self.outputDir = outputDir
        self.rows = None
        self.measurementsTable = None  # the batch's palnet_measurements.csv, when written
        super().__init__(command, workDir, progress, finished)

    def handleEvent(self, event: dict) -> None:
        if event["event"] == "scan" and self.progress:
            self.progress(int(event["done"]), int(event["total"]), event.get("scan", ""), event.get("error"))
        elif event["event"] == "measurements":
            self.measurementsTable = event.get("table")
            for line in event.get("failures") or ():
                logging.warning("PAL-Net batch measurements: %s", line)
            if event.get("note"):
                logging.info("PAL-Net batch: %s", event["note"])

    def handleEnd(self, code: int) -> None:
        from palnet.batch import BatchItem
        result = self.readResult(code)
        if result is None:
            if self.stopRequested:
                self.message = _("Cancelled; the summary lists the scans not run.")
            return
        self.rows = [BatchItem(**row) for row in result]
        for row in self.rows:
            if row.status == "error":
                logging.warning("PAL-Net batch: %s", row.message)
        self.message = PALNetLandmarksLogic.batchSummary(self.rows, self.outputDir)
        logging.info("PAL-Net batch: %s", self.message)


class TrainingRun(background.BackgroundRun):
    """A ``palnet train --events`` process, its per-epoch history in a table node, and the timer that polls it.

    ``progress(row, line)`` is called for every output line (``row``: the epoch's numbers
    when the line is an epoch event, see training.parseEpochLine, else None);
    ``finished(returnCode, message)`` once at the end. All calls happen on the thread that
    calls :meth:`poll` (the GUI thread, from a QTimer).
    """

    kind = "training"

    def __init__(self, process: background.ChildProcess, tableNode, chartNode, outputModelPath: Optional[str] = None,
                 progress: Optional[Callable] = None, finished: Optional[Callable] = None):
        super().__init__(process, finished)
        self.tableNode = tableNode
        self.chartNode = chartNode
        self.outputModelPath = outputModelPath
        self.progress = progress
        self.history = []  # type: List[dict]
        self.errorMessage = None  # type: Optional[str]

    def handleLine(self, line: str) -> None:
        row = training.parseEpochLine(line)
        if row is not None:
            self.history.append(row)
            if self.tableNode is not None and self.tableNode.GetScene() is not None:
                mrml.appendTableRow(self.tableNode, row)
        error = training.parseErrorLine(line)
        if error:
            self.errorMessage = error
        if self.progress:
            self.progress(row, line)

    def handleEnd(self, code: int) -> None:
        self.message = self._finalMessage(code)
        logging.info("PAL-Net training: %s", self.message)

    def finishedArgs(self) -> tuple:
        return self.returnCode, self.message

    def _finalMessage(self, code: int) -> str:
        if self.stopRequested:
            return _("Training stopped after {n} epochs. The checkpoint {ckpt} is kept: start again with the same "
                     "output file to resume.").format(n=len(self.history), ckpt=str(self.outputModelPath) + ".ckpt")
        if code == 0:
            return _("Training finished after {n} epochs; model saved to {path}").format(
                n=len(self.history), path=self.outputModelPath)
        last = self.errorMessage or next((line for line in reversed(self.log)
                                          if line.strip() and training.parseEpochLine(line) is None), "")
        return _("Training failed (exit status {code}): {last}").format(code=code, last=last)


class InstallRun(background.BackgroundRun):
    """``pip install torch`` in a child process; ``progress(line)`` per output line, ``finished(run)`` once."""

    kind = "install"

    def __init__(self, process, progress=None, finished=None):
        super().__init__(process, finished)
        self.progress = progress

    def handleLine(self, line: str) -> None:
        if self.progress:
            self.progress(line)

    def handleEnd(self, code: int) -> None:
        importlib.invalidate_caches()
        if self.stopRequested:
            self.message = _("PyTorch installation cancelled.")
        elif code == 0:
            self.message = _("PyTorch installed.")
        else:
            last = next((line for line in reversed(self.log) if line.strip()), "")
            self.message = _("PyTorch installation failed (exit status {code}): {last}").format(code=code, last=last)


#
# PALNetLandmarksLogic
#


class PALNetLandmarksLogic(ScriptedLoadableModuleLogic):
    """Everything the module does, usable from the Python console without the GUI.

    ``PALNetLandmarksLogic().process(modelNode)`` returns a new point list with the landmarks.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.lastPrediction = None  # palnet.pipeline.Prediction of the last process() call
        self.lastProtocol = None
        self.lastSeconds = None  # wall time of the last process(), conversion included
        self.lastModelPath = None
        self.lastBatchRows = None
        self.lastMeasurements = None  # one dict per measurement of the last Apply (palnet.measurements), or None
        self.lastMeasurementsTable = None  # its vtkMRMLTableNode
        self.trainingRun = None  # type: Optional[TrainingRun]  (the last one, running or not)
        self._activeRun = None  # type: Optional[background.BackgroundRun]

    # ------------------------------------------------------------ one run at a time

    @property
    def activeRun(self):
        """The child process run going on (prediction, batch, training or install), or None."""
        run = self._activeRun
        return run if run is not None and run.running else None

    def _claimRun(self) -> None:
        run = self.activeRun
        if run is not None:
            raise RuntimeError(_("{what} is running; wait for it to end or cancel it first.").format(
                what=_(RUN_NAMES.get(run.kind, run.kind))))

    def _startRun(self, run, pollIntervalMs: int = 100):
        self._activeRun = run
        run.startPolling(pollIntervalMs)
        return run

    def cancelRun(self) -> None:
        """Cancel the run going on: a prediction or batch ends at once, a training saves its best model first."""
        run = self.activeRun
        if run is not None:
            run.cancel()
            run.poll()

    def getParameterNode(self):
        return PALNetLandmarksParameterNode(super().getParameterNode())

    # ------------------------------------------------------------ models

    @staticmethod
    def resolveModelPath(modelPath=None) -> str:
        """The model file to use: ``modelPath``, or the shipped default model when unset (None, "" or ".")."""
        text = pathOrNone(modelPath)
        if text is None:
            return str(resources.default_model_path())
        return os.path.abspath(os.path.expanduser(text))

    @classmethod
    def modelFileProblem(cls, modelPath=None) -> Optional[str]:
        """Why the model file cannot be used (one line), or None."""
        path = cls.resolveModelPath(modelPath)
        if pathOrNone(modelPath) is None:
            if not os.path.isfile(path):
                return _("The default model file is not installed ({path}); choose a model file.").format(path=path)
            return None
        if not os.path.isfile(path):
            return _("Model file not found: {path}").format(path=path)
        return None

    def loadModel(self, modelPath: Optional[str] = None):
        """The model (cached by path, modification time and size, so a changed file is re-read)."""
        from palnet.modelfile import load_model
        path = self.resolveModelPath(modelPath)
        try:
            stat = os.stat(path)
        except OSError:
            raise PalnetError("model file not found" if pathOrNone(modelPath) else
                              "the default model file is not installed; choose a model file", path) from None
        key = (stat.st_mtime_ns, stat.st_size)
        cached = _MODEL_CACHE.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        model = load_model(path)
        if len(_MODEL_CACHE) >= _MODEL_CACHE_SIZE:
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[path] = (key, model)
        return model

    def modelInfo(self, modelPath: Optional[str] = None) -> dict:
        """What the Advanced section shows: protocol, patch size, network, accuracy, training data."""
        model = self.loadModel(modelPath)
        protocol = mrml.protocolForModel(model.metadata)
        cfg = model.config
        meta = model.metadata
        info = {
            "path": self.resolveModelPath(modelPath),
            "protocol": protocol.name,
            "landmarks": len(protocol),
            "regions": protocol.regions,
            "patchSize": cfg.patch_size,
            "network": "widths {}, pools {}, fc {}, attention {}".format(
                "/".join(map(str, cfg.widths)), "/".join(map(str, cfg.pools)), cfg.fc, cfg.attention),
            "patchScaleMm": (meta.get("patch") or {}).get("scale_mm"),
            "refineSteps": meta.get("refine_steps"),
            "accuracy": None,
            "trainingData": (meta.get("training") or {}).get("data"),
        }
        accuracy = meta.get("accuracy") or {}
        validation = accuracy.get("validation")
        if isinstance(validation, dict) and "pointwise_mm" in validation:
            info["accuracy"] = "{:.2f} mm point-wise, {:.2f} mm distance-wise ({})".format(
                validation["pointwise_mm"], validation.get("distancewise_mm", float("nan")),
                "cross-validation" if accuracy.get("out_of_fold") else "validation")
        return info

    @staticmethod
    def modelInfoHtml(info: dict) -> str:
        import html
        rows = [("File", os.path.basename(info["path"])), ("Protocol", "{} ({} landmarks)".format(info["protocol"], info["landmarks"])),
                ("Regions", ", ".join(info["regions"])), ("Patch size", "{} points".format(info["patchSize"])),
                ("Patch scale", "{} mm".format(info["patchScaleMm"])), ("Refinement steps", info["refineSteps"]),
                ("Network", info["network"]), ("Accuracy", info["accuracy"]), ("Trained on", info["trainingData"])]
        return "<table>" + "".join("<tr><td><b>{}</b>&nbsp;</td><td>{}</td></tr>".format(
            html.escape(k), html.escape(str(v))) for k, v in rows if v is not None) + "</table>"

    @staticmethod
    def firstSurfaceModel(scene):
        """The first model node a user would pick: shown in the node selectors and with a surface.

        (Slice views keep hidden model nodes in the scene; those are skipped.)
        """
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLModelNode")):
            node = scene.GetNthNodeByClass(i, "vtkMRMLModelNode")
            polydata = node.GetPolyData()
            if not node.GetHideFromEditors() and polydata is not None and polydata.GetNumberOfPoints() > 0:
                return node
        return None

    def applyBlocker(self, parameterNode) -> Optional[str]:
        """Why Apply cannot run now (shown as its tooltip), or None."""
        if parameterNode is None:
            return _("Not initialised.")
        model = parameterNode.inputModel
        if model is None:
            return _("Select the surface model of a face (load a scan with File > Add Data, or load the sample).")
        polydata = model.GetPolyData()
        if polydata is None or polydata.GetNumberOfPoints() == 0:
            return _("The selected model '{name}' has no surface.").format(name=model.GetName())
        return self.modelFileProblem(pathOrNone(parameterNode.modelFile))

    # ------------------------------------------------------------ prediction

    def process(self, modelNode, outputMarkupsNode=None, modelPath: Optional[str] = None, snap: str = DEFAULT_SNAP,
                units: str = "auto", lockPoints: bool = False, samplings: int = DEFAULT_SAMPLINGS):
        """Place the model's landmarks on ``modelNode``; returns the point list (vtkMRMLMarkupsFiducialNode).

        The surface is read in world RAS (parent transforms applied); the points are
        written as world positions. Without ``outputMarkupsNode`` a new point list is
        created; a given one is cleared and refilled. Status, fit and time of the run
        are kept in ``lastPrediction`` / ``lastSeconds``.
        """
        from palnet.pipeline import predict
        self._checkPredictionInputs(modelNode, outputMarkupsNode, snap, units)
        self._checkSamplings(samplings)
        start = time.perf_counter()
        model = self.loadModel(modelPath)
        protocol = mrml.protocolForModel(model.metadata)
        mesh = mrml.meshFromModelNode(modelNode)
        prediction = predict(mesh, model, snap=snap, units=units, samplings=samplings)

        scene = modelNode.GetScene() if modelNode.GetScene() is not None else slicer.mrmlScene
        node = outputMarkupsNode
        if node is None:
            node = mrml.newPointListNode(scene, "{} landmarks".format(modelNode.GetName()))
        attributes = {"model": self.resolveModelPath(modelPath), "status": prediction.status,
                      "fitRmsMm": "{:.3f}".format(prediction.fit_rms_mm), "units": prediction.units,
                      "inputModelID": modelNode.GetID() or ""}
        mrml.fillPointList(node, prediction.landmarks, protocol, lockPoints, mrml.glyphSizeFor(mesh), attributes)

        self.lastPrediction, self.lastProtocol = prediction, protocol
        self.lastModelPath = self.resolveModelPath(modelPath)
        self.lastMeasurements = self.lastMeasurementsTable = None  # measured after Apply (startPrediction) only
        self.lastSeconds = time.perf_counter() - start
        self._logPrediction(modelNode, prediction)
        return node

    def startPrediction(self, modelNode, outputMarkupsNode=None, modelPath: Optional[str] = None,
                        snap: str = DEFAULT_SNAP, units: str = "auto", lockPoints: bool = False,
                        progress: Optional[Callable] = None, finished: Optional[Callable] = None,
                        samplings: int = DEFAULT_SAMPLINGS) -> PredictionRun:
        """Like :meth:`process`, in a child process: returns a PredictionRun at once.

        The surface is exported in world RAS (parent transforms and unsaved edits
        included) to a temporary file; the child predicts with the same code and
        reports each stage (``progress(stage, fraction)``). When it ends, the point
        list is filled here, on the polling (GUI) thread, and ``finished(run)`` is
        called; ``run.node`` is the point list, or None (``run.message`` says why).
        ``cancelRun()`` ends it at once. Scripts can block with ``run.wait()``.
        """
        self._claimRun()
        self._checkPredictionInputs(modelNode, outputMarkupsNode, snap, units)
        self._checkSamplings(samplings)
        problem = self.modelFileProblem(modelPath)
        if problem:
            raise PalnetError(problem)
        start = time.perf_counter()
        workDir = tempfile.mkdtemp(prefix="PALNet-")
        try:
            surface = os.path.join(workDir, "surface.vtp")
            mrml.writeWorldSurface(modelNode, surface)
            command = runner.command(background.pythonExecutable(), MODULE_DIR, [
                "predict", "--mesh", surface, "--name", modelNode.GetName(), "--model", self.resolveModelPath(modelPath),
                "--snap", snap, "--units", units, "--samplings", str(samplings)])
            run = PredictionRun(self, command, workDir, modelNode, outputMarkupsNode, modelPath, lockPoints,
                                progress, finished, start)
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return self._startRun(run)

    @staticmethod
    def _checkSamplings(samplings) -> None:
        if isinstance(samplings, bool) or not isinstance(samplings, int) or not 1 <= samplings <= MAX_SAMPLINGS:
            raise ValueError(_("Samplings must be a whole number from 1 to {}, not {!r}").format(MAX_SAMPLINGS,
                                                                                                 samplings))

    @staticmethod
    def _checkPredictionInputs(modelNode, outputMarkupsNode, snap: str, units: str) -> None:
        SNAP_METHODS = _options.SNAP_METHODS  # not palnet.snap: it imports SciPy, seconds in a fresh Slicer
        if modelNode is None:
            raise ValueError(_("No input surface model given."))
        if snap not in tuple(SNAP_METHODS) + ("none",):
            raise ValueError(_("Unknown snap method {!r} (use {})").format(snap, ", ".join(SNAP_METHODS)))
        if units not in UNIT_CHOICES:
            raise ValueError(_("Unknown units {!r} (use {})").format(units, ", ".join(UNIT_CHOICES)))
        if outputMarkupsNode is not None and not outputMarkupsNode.IsA("vtkMRMLMarkupsFiducialNode"):
            raise ValueError(_("The output must be a point list (vtkMRMLMarkupsFiducialNode)."))

    def _placeLandmarks(self, modelNode, outputMarkupsNode, result: dict, modelPath, lockPoints: bool,
                        start: float):
        """The child's result as a point list (as process() fills it); sets lastPrediction and friends."""
        prediction = PredictionSummary(result)
        protocol = mrml.protocolForModel({"protocol": result.get("protocol") or {}})
        scene = modelNode.GetScene()
        node = outputMarkupsNode
        if node is None or node.GetScene() is None:
            node = mrml.newPointListNode(scene, "{} landmarks".format(modelNode.GetName()))
        attributes = {"model": self.resolveModelPath(modelPath), "status": prediction.status,
                      "fitRmsMm": "{:.3f}".format(prediction.fit_rms_mm), "units": prediction.units,
                      "inputModelID": modelNode.GetID() or ""}
        mrml.fillPointList(node, prediction.landmarks, protocol, lockPoints,
                           mrml.glyphSizeForDiagonal(float(result.get("diagonal", 0.0))), attributes)
        self.lastPrediction, self.lastProtocol = prediction, protocol
        self.lastModelPath = self.resolveModelPath(modelPath)
        self._showMeasurements(node, modelNode.GetName(), result.get("measurements"))
        if result.get("measurementsError"):
            logging.warning("PAL-Net: %s: %s", modelNode.GetName(), result["measurementsError"])
        self.lastSeconds = time.perf_counter() - start
        self._logPrediction(modelNode, prediction)
        return node

    def _showMeasurements(self, pointList, name: str, rows: Optional[List[dict]]) -> None:
        """The measurements (name, value, units, SE, z) in a table node referenced by the point list."""
        self.lastMeasurements, self.lastMeasurementsTable = rows, None
        if not rows:
            return
        table = mrml.measurementsTableFor(pointList, "{} measurements".format(name))
        mrml.fillMeasurementsTable(table, rows)
        table.SetAttribute(mrml.ATTRIBUTE_PREFIX + "pointListID", pointList.GetID())
        self.lastMeasurementsTable = table

    def showMeasurement(self, row: dict, pointList):
        """Draw one measurement of ``pointList``'s landmarks in the scene: a markups line for a
        distance, a markups angle for an angle (the node "PALNet measurement", one at a time, made
        anew for each). Returns the node, or None for a kind without such a drawing (index, arc,
        asymmetry) or when one of its landmarks is missing."""
        scene = slicer.mrmlScene
        old = getattr(self, "measurementNode", None)
        if old is not None and old.GetScene() is not None:
            scene.RemoveNode(old)
        self.measurementNode = None
        kind, labels = row.get("kind"), list(row.get("landmarks") or ())
        className = {("distance", 2): "vtkMRMLMarkupsLineNode", ("projected", 2): "vtkMRMLMarkupsLineNode",
                     ("angle", 3): "vtkMRMLMarkupsAngleNode"}.get((kind, len(labels)))
        if className is None or pointList is None or pointList.GetScene() is None:
            return None
        index = {pointList.GetNthControlPointLabel(i): i for i in range(pointList.GetNumberOfControlPoints())}
        if any(label not in index or pointList.GetNthControlPointPositionStatus(index[label])
               != pointList.PositionDefined for label in labels):
            return None
        node = scene.AddNewNodeByClass(className, "PALNet measurement")
        node.CreateDefaultDisplayNodes()
        for label in labels:
            position = [0.0, 0.0, 0.0]
            pointList.GetNthControlPointPositionWorld(index[label], position)
            node.AddControlPointWorld(vtk.vtkVector3d(*position), label)
        node.SetAttribute(mrml.ATTRIBUTE_PREFIX + "measurement", str(row.get("id", "")))
        self.measurementNode = node
        return node

    def _logPrediction(self, modelNode, prediction) -> None:
        logging.info("PAL-Net: %d landmarks on %s: %s, fit %.2f mm, units %s, %.2f s", len(prediction.landmarks),
                     modelNode.GetName(), prediction.status, prediction.fit_rms_mm, prediction.units,
                     self.lastSeconds)
        if prediction.status != _status.OK:
            logging.warning("PAL-Net: %s: %s (template fit %.2f mm); check the landmarks", modelNode.GetName(),
                            prediction.status, prediction.fit_rms_mm)

    def lastResultRows(self) -> List[dict]:
        """One dict per landmark of the last process(): label, name, region, colour, definition, confidence."""
        if self.lastPrediction is None:
            return []
        landmarks, protocol = self.lastPrediction.landmarks, self.lastProtocol
        rows = []
        for i, label in enumerate(landmarks.labels):
            known = protocol is not None and label in protocol
            definition = protocol.definition(label) if known else None
            conf = None if landmarks.confidence is None else float(landmarks.confidence[i])
            rows.append({"label": label, "name": definition.name if known else label,
                         "region": definition.region if known else "",
                         "color": protocol.color_of(label) if known else None,
                         "definition": definition.definition if known else "",
                         "confidence": conf})
        return rows

    def processDirectory(self, inputDir: str, outputDir: str, format: str = "mrk.json",
                         progress: Optional[Callable] = None, modelPath: Optional[str] = None,
                         snap: str = DEFAULT_SNAP, units: str = "auto", overwrite: bool = False,
                         samplings: int = DEFAULT_SAMPLINGS):
        """Landmarks for every scan in ``inputDir`` (recursively), one file each in ``outputDir``.

        Same guarantees as ``palnet predict``: a bad scan is reported in its row and
        never stops the batch, outputs are written atomically, existing outputs are
        kept unless ``overwrite``, and ``palnet_summary.csv`` lists every scan.
        ``progress(done, total, scan, error)`` is called after each scan.
        Returns the rows (palnet.batch.BatchItem: scan, input, output, status, fit_rms_mm,
        units, seconds, message).
        """
        from palnet.batch import predict_files
        self._checkSamplings(samplings)
        if not inputDir or not os.path.isdir(str(inputDir)):
            raise PalnetError("input folder not found", inputDir or "(none)")
        if not outputDir:
            raise ValueError(_("No output folder given."))
        model = self.loadModel(modelPath)
        # Workers are forked from Slicer; on Windows they would be spawned from sys.executable,
        # which inside Slicer may be the application itself.
        rows = predict_files([str(inputDir)], str(outputDir), model, fmt=format, snap=snap, units=units,
                             overwrite=overwrite, progress=progress, isolate=os.name != "nt", samplings=samplings,
                             rejected_hint=_("to place its landmarks anyway, load the scan and press Apply"))
        self.lastBatchRows = rows
        failed = [r for r in rows if r.status == "error"]
        for r in failed:
            logging.warning("PAL-Net batch: %s", r.message)
        logging.info("PAL-Net batch: %s", self.batchSummary(rows, outputDir))
        return rows

    def startBatch(self, inputDir: str, outputDir: str, format: str = "mrk.json", progress: Optional[Callable] = None,
                   finished: Optional[Callable] = None, modelPath: Optional[str] = None, snap: str = DEFAULT_SNAP,
                   units: str = "auto", overwrite: bool = False, samplings: int = DEFAULT_SAMPLINGS) -> BatchRun:
        """Like :meth:`processDirectory`, in a child process: returns a BatchRun at once.

        ``progress(done, total, scan, error)`` after each scan, ``finished(run)`` at the end
        (``run.rows``, ``run.message``: the one-line summary); ``cancelRun()`` interrupts it and
        the summary CSV still lists every scan.
        """
        self._claimRun()
        self._checkSamplings(samplings)
        if not inputDir or not os.path.isdir(str(inputDir)):
            raise PalnetError("input folder not found", inputDir or "(none)")
        if not outputDir:
            raise ValueError(_("No output folder given."))
        problem = self.modelFileProblem(modelPath)
        if problem:
            raise PalnetError(problem)
        if format not in FORMAT_CHOICES:
            raise ValueError(_("Unknown format {!r} (use {})").format(format, ", ".join(FORMAT_CHOICES)))
        workDir = tempfile.mkdtemp(prefix="PALNet-batch-")
        args = ["batch", "--input", os.path.abspath(str(inputDir)), "--output", os.path.abspath(str(outputDir)),
                "--format", format, "--model", self.resolveModelPath(modelPath), "--snap", snap, "--units", units,
                "--samplings", str(samplings), "--rejected-hint", _("to place its landmarks anyway, load the scan and press Apply")]
        if overwrite:
            args.append("--overwrite")
        try:
            run = BatchRun(runner.command(background.pythonExecutable(), MODULE_DIR, args), workDir,
                           str(outputDir), progress, finished)
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return self._startRun(run)

    @staticmethod
    def batchSummary(rows, outputDir: str = "") -> str:
        from palnet.batch import SUMMARY_NAME
        done = sum(r.status in _status.DONE for r in rows)  # a landmark file written: ok, partial, low fit
        rejected = sum(r.status == _status.NOT_A_FACE for r in rows)
        skipped = sum(r.status == _status.SKIPPED for r in rows)
        failed = sum(r.status == _status.ERROR for r in rows)
        text = _("{n} scans: {done} done, {rejected} not a face, {skipped} skipped, {failed} failed").format(
            n=len(rows), done=done, rejected=rejected, skipped=skipped, failed=failed)
        if outputDir:
            text += _("; summary in {}").format(os.path.join(str(outputDir), SUMMARY_NAME))
        return text

    # ------------------------------------------------------------ training

    @staticmethod
    def torchAvailable() -> bool:
        return importlib.util.find_spec("torch") is not None

    @staticmethod
    def pyTorchUtilsAvailable() -> bool:
        try:
            import PyTorchUtils  # noqa: F401
        except ImportError:
            return False
        return True

    @staticmethod
    def torchInstallCommand(python: str) -> List[str]:
        """``pip install torch`` (the CPU build where PyTorch publishes one) with ``python``."""
        command = [python, "-m", "pip", "install", TORCH_REQUIREMENT]
        if sys.platform != "darwin":  # palnet trains on the CPU, so the small CPU build is enough
            command += ["--index-url", "https://download.pytorch.org/whl/cpu"]
        return command

    def startTorchInstall(self, progress: Optional[Callable] = None, finished: Optional[Callable] = None) -> InstallRun:
        """Install PyTorch with pip in a child process (cancellable); returns an InstallRun at once."""
        self._claimRun()
        process = background.ChildProcess(self.torchInstallCommand(background.pythonExecutable()))
        return self._startRun(InstallRun(process, progress, finished), 500)

    def ensureTorch(self, askConfirmation: bool = True) -> bool:
        """True when PyTorch can be imported, installing it (after asking) if needed.

        Only training needs torch; nothing calls this at module load or for prediction.
        Uses the PyTorch extension's installer when that extension is installed.
        """
        if self.torchAvailable():
            return True
        try:
            import PyTorchUtils
        except ImportError:
            PyTorchUtils = None
        if PyTorchUtils is not None:
            # palnet trains on the CPU, so the small CPU build is enough.
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=askConfirmation,
                                                                   forceComputationBackend="cpu")
            importlib.invalidate_caches()
            return torch is not None and self.torchAvailable()
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                _("Training needs the PyTorch Python package (CPU build, about 200 MB), which is not installed. "
                  "Download and install it now? This needs a network connection and may take several minutes."),
                _("Install PyTorch")):
            return False
        if sys.platform == "darwin":
            slicer.util.pip_install(TORCH_REQUIREMENT)
        else:
            slicer.util.pip_install(TORCH_REQUIREMENT + " --index-url https://download.pytorch.org/whl/cpu")
        importlib.invalidate_caches()
        return self.torchAvailable()

    def train(self, datasetDir: str, outputModelPath: str, epochs: int = DEFAULT_EPOCHS,
              progress: Optional[Callable] = None, finished: Optional[Callable] = None,
              extraArgs=(), askConfirmation: bool = True, augmentCopies: int = 0) -> TrainingRun:
        """Start ``palnet train datasetDir -o outputModelPath --epochs N [--augment K]`` in the background.

        Returns at once with a TrainingRun: its ``tableNode`` fills with one row per epoch
        (loss, validation point-wise and distance-wise error in mm) and its ``chartNode``
        plots them; ``stopTraining()`` ends it. ``extraArgs`` go to ``palnet train``
        (e.g. ``["--config", "cfg.json", "--init", "base.npz"]``); ``augmentCopies`` > 0 also
        trains on that many altered copies of each scan (``palnet train --augment``).
        """
        self._claimRun()
        if not datasetDir or not os.path.isdir(str(datasetDir)):
            raise PalnetError("dataset folder not found", datasetDir or "(none)")
        if not outputModelPath:
            raise ValueError(_("No output model file given."))
        folder = os.path.dirname(os.path.abspath(str(outputModelPath)))
        if not os.path.isdir(folder):
            raise PalnetError("folder {} does not exist".format(folder), outputModelPath)
        if not self.ensureTorch(askConfirmation):
            raise RuntimeError(_("Training needs PyTorch, which is not installed."))
        if augmentCopies:
            extraArgs = ["--augment", str(int(augmentCopies))] + list(extraArgs)
        command = training.trainingCommand(background.pythonExecutable(), MODULE_DIR, datasetDir,
                                           outputModelPath, epochs, extraArgs)
        return self.startTrainingProcess(command, os.path.abspath(str(outputModelPath)), progress, finished)

    def startTrainingProcess(self, command: List[str], outputModelPath: Optional[str] = None,
                             progress: Optional[Callable] = None, finished: Optional[Callable] = None,
                             pollIntervalMs: int = 500) -> TrainingRun:
        """Run ``command`` (a ``palnet train`` command line) with its log parsed into a table and plot."""
        self._claimRun()
        scene = slicer.mrmlScene
        title = "PAL-Net training"
        table = mrml.newTrainingTable(scene, title, training.EPOCH_COLUMNS)
        chart = mrml.newTrainingChart(scene, table, title)
        logging.info("PAL-Net training: %s", " ".join(command))
        run = TrainingRun(background.ChildProcess(command), table, chart, outputModelPath, progress, finished)
        self.trainingRun = run
        return self._startRun(run, pollIntervalMs)

    def stopTraining(self) -> None:
        """Ask the running training to stop; it saves the best model so far (killed after 5 s if it has not ended)."""
        if self.trainingRun is not None and self.trainingRun.running:
            self.trainingRun.cancel()
            self.trainingRun.poll()

    # ------------------------------------------------------------ sample

    @staticmethod
    def loadSample():
        """The bundled sample face scan as a model node, through the Sample Data module when there is one."""
        path = resources.sample_scan_path()
        if not path.exists():
            raise PalnetError(_("the sample scan is not installed"), path)
        if registerSampleData():
            import SampleData
            nodes = SampleData.SampleDataLogic().downloadSamples(SAMPLE_FACE)
            if nodes:
                return nodes[0]
        return slicer.util.loadModel(str(path))


#
# PALNetLandmarksTest
#


class PALNetLandmarksTest(ScriptedLoadableModuleTest):
    """Self-test run inside Slicer (Reload and Test): the shipped model on the bundled sample scan."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SampleScan()
        self.setUp()
        self.test_TransformedScan()
        self.setUp()
        self.test_ApplyInBackground()

    def _truthRas(self, labels):
        from palnet.landmark_io import read_landmarks
        truth = read_landmarks(resources.sample_landmarks_path()).select(labels)
        return truth.points * [-1.0, -1.0, 1.0]  # landmark files are LPS, the scene is RAS

    def _loadSample(self):
        path = resources.sample_scan_path()
        self.assertTrue(path.exists(), "sample scan missing: {}".format(path))
        return slicer.util.loadModel(str(path))

    def _meanError(self, node, truthRas):
        import numpy as np
        return float(np.nanmean(np.linalg.norm(mrml.controlPointsWorld(node) - truthRas, axis=1)))

    def test_SampleScan(self):
        self.delayDisplay("Placing landmarks on the sample scan")
        modelNode = self._loadSample()
        logic = PALNetLandmarksLogic()
        node = logic.process(modelNode)
        labels = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
        self.assertEqual(len(labels), len(logic.lastProtocol))
        error = self._meanError(node, self._truthRas(labels))
        self.delayDisplay("Mean error {:.2f} mm ({}, fit {:.2f} mm)".format(
            error, logic.lastPrediction.status, logic.lastPrediction.fit_rms_mm))
        self.assertEqual(logic.lastPrediction.status, "ok")
        self.assertLess(error, 3.0)

    def test_TransformedScan(self):
        import numpy as np
        self.delayDisplay("Placing landmarks on the sample scan under a transform")
        modelNode = self._loadSample()
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        matrix = vtk.vtkMatrix4x4()
        angle = np.radians(35.0)
        rotation = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
        for r in range(3):
            for c in range(3):
                matrix.SetElement(r, c, rotation[r][c])
            matrix.SetElement(r, 3, [40.0, -25.0, 60.0][r])
        transform.SetMatrixTransformToParent(matrix)
        modelNode.SetAndObserveTransformNodeID(transform.GetID())
        logic = PALNetLandmarksLogic()
        node = logic.process(modelNode)
        labels = [node.GetNthControlPointLabel(i) for i in range(node.GetNumberOfControlPoints())]
        truth = self._truthRas(labels)
        truthWorld = truth @ np.asarray(rotation).T + [40.0, -25.0, 60.0]
        error = self._meanError(node, truthWorld)
        self.delayDisplay("Mean error under the transform {:.2f} mm".format(error))
        self.assertLess(error, 3.0)
        self.delayDisplay("Test passed")

    def test_ApplyInBackground(self):
        """What Apply does: the child process gives the same landmarks as the in-process call."""
        import numpy as np
        self.delayDisplay("Placing landmarks in a background process")
        modelNode = self._loadSample()
        logic = PALNetLandmarksLogic()
        stages = []
        run = logic.startPrediction(modelNode, progress=lambda stage, fraction: stages.append(stage))
        self.assertEqual(run.wait(300), 0, "\n".join(run.log))
        self.assertIsNotNone(run.node, run.message)
        self.assertIn("alignment", stages)
        reference = logic.process(modelNode)
        difference = np.linalg.norm(mrml.controlPointsWorld(run.node) - mrml.controlPointsWorld(reference), axis=1)
        self.delayDisplay("Background and in-process results differ by {:.4f} mm at most".format(difference.max()))
        self.assertLess(difference.max(), 0.1)
        self.delayDisplay("Test passed")
