"""PAL-Net Landmarks: 50 anatomical landmarks on 3D face surface models, in 3D Slicer.

The pipeline lives in the ``palnet`` package next to this file (pure Python:
NumPy, SciPy, VTK). This module converts MRML nodes to palnet data and back
(see PALNetLandmarksLib/mrml.py) and adds the GUI.
"""
import importlib.util
import logging
import os
import sys
import time
from typing import Annotated, Callable, Dict, List, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLModelNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
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

# Slicer puts the module folder on sys.path; a script that imports this file directly may not.
MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
if MODULE_DIR not in sys.path:
    sys.path.insert(0, MODULE_DIR)

from palnet import options as _options  # noqa: E402
from palnet import resources  # noqa: E402
from palnet.errors import PalnetError  # noqa: E402
from PALNetLandmarksLib import mrml, training  # noqa: E402

DOCS_URL = "https://github.com/palnet-slicer/SlicerPALNet/blob/main/docs/slicer.md"
# The choices come from palnet.options, which the command line uses too (the .ui lists them for display).
SNAP_CHOICES = list(_options.SNAP_METHODS)
UNIT_CHOICES = list(_options.UNIT_CHOICES)
FORMAT_CHOICES = list(_options.LANDMARK_FORMATS)
DEFAULT_EPOCHS = 100

# Models are loaded once per (path, modification time, size) and shared by every logic instance.
_MODEL_CACHE: Dict[str, tuple] = {}
_MODEL_CACHE_SIZE = 3


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


#
# PALNetLandmarksParameterNode
#


@parameterNodeWrapper
class PALNetLandmarksParameterNode:
    """What the user chose in the module panel (saved with the scene).

    inputModel - the face surface to place landmarks on.
    outputPointList - the point list to refill; none: a new point list is created on every Apply.
    modelFile - the PALNet model file (.npz); empty: the shipped default model.
    snap - how predicted points are put on the surface (nearest vertex, mean of nearest vertices, closest surface point).
    units - length unit of the scan's coordinates; auto detects mm, cm or m from the scan's size.
    lockPoints - lock the placed control points against accidental dragging.
    batchInputFolder, batchOutputFolder, batchFormat, batchOverwrite - the Batch section.
    trainingDataFolder, trainingEpochs, trainingAugmentCopies, trainingOutputModel - the Training section.
    """

    inputModel: vtkMRMLModelNode
    outputPointList: vtkMRMLMarkupsFiducialNode
    modelFile: str = ""
    snap: Annotated[str, Choice(SNAP_CHOICES)] = "nearest"
    units: Annotated[str, Choice(UNIT_CHOICES)] = "auto"
    lockPoints: bool = False
    batchInputFolder: str = ""
    batchOutputFolder: str = ""
    batchFormat: Annotated[str, Choice(FORMAT_CHOICES)] = "mrk.json"
    batchOverwrite: bool = False
    trainingDataFolder: str = ""
    trainingEpochs: Annotated[int, WithinRange(1, 10000)] = DEFAULT_EPOCHS
    trainingAugmentCopies: Annotated[int, WithinRange(0, 20)] = 0
    trainingOutputModel: str = ""


#
# PALNetLandmarksWidget
#


class PALNetLandmarksWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel; every computation goes through PALNetLandmarksLogic."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._shownModelFile = None
        self._resultNode = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PALNetLandmarks.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = PALNetLandmarksLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.loadSampleButton.connect("clicked(bool)", self.onLoadSample)
        self.ui.modelFileBrowseButton.connect("clicked(bool)", self.onBrowseModelFile)
        self.ui.modelFileDefaultButton.connect("clicked(bool)", self.onDefaultModelFile)
        self.ui.resultsTable.connect("cellClicked(int,int)", self.onResultCellClicked)
        self.ui.batchInputFolderBrowseButton.connect(
            "clicked()", lambda: self._browseFolder("batchInputFolder", _("Folder of face scans")))
        self.ui.batchOutputFolderBrowseButton.connect(
            "clicked()", lambda: self._browseFolder("batchOutputFolder", _("Folder for the landmark files")))
        self.ui.batchRunButton.connect("clicked(bool)", self.onBatchRun)
        self.ui.trainingDataFolderBrowseButton.connect(
            "clicked()", lambda: self._browseFolder("trainingDataFolder", _("Folder of annotated scans")))
        self.ui.trainingOutputModelBrowseButton.connect("clicked(bool)", self.onBrowseTrainingOutput)
        self.ui.trainingStartButton.connect("clicked(bool)", self.onTrainingStart)
        self.ui.trainingStopButton.connect("clicked(bool)", self.onTrainingStop)
        self.ui.trainingShowPlotButton.connect("clicked(bool)", self.onTrainingShowPlot)
        self.ui.trainingUseModelButton.connect("clicked(bool)", self.onTrainingUseModel)

        self.initializeParameterNode()
        self._updateTrainingButtons()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()
        run = self.logic.trainingRun if self.logic is not None else None
        if run is not None:
            run.progress = run.finished = None  # the panel is going away: no more GUI updates
            self.logic.stopTraining()  # never leave a training process behind

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self._resultNode = None
        self.ui.resultsTable.setRowCount(0)

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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui are bound to that parameter.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._checkCanApply()
        self._updateModelInfo()
        self._updateBatchButton()
        self._updateTrainingButtons()

    # ------------------------------------------------------------ apply

    def _checkCanApply(self) -> None:
        reason = self.logic.applyBlocker(self._parameterNode) if self.logic else _("Not initialised.")
        self.ui.applyButton.enabled = reason is None
        self.ui.applyButton.toolTip = reason or _("Place the model's landmarks on the selected surface.")

    def onApplyButton(self) -> None:
        p = self._parameterNode
        self.ui.statusLabel.text = _("Placing landmarks...")
        slicer.app.processEvents()
        done = False
        try:
            with slicer.util.tryWithErrorDisplay(_("Failed to place landmarks."), waitCursor=True):
                node = self.logic.process(p.inputModel, p.outputPointList, p.modelFile or None, p.snap, p.units,
                                          p.lockPoints)
                self._showResult(node)
                done = True
        finally:
            if not done:
                self.ui.statusLabel.text = _("Failed: see the error message.")

    def _showResult(self, node) -> None:
        prediction = self.logic.lastPrediction
        self._resultNode = node
        status = prediction.status
        text = _("{status}: {n} landmarks in '{node}', face fit {fit:.2f} mm, units {units}, {seconds:.1f} s").format(
            status=status, n=len(prediction.landmarks), node=node.GetName(), fit=prediction.fit_rms_mm,
            units=prediction.units, seconds=self.logic.lastSeconds)
        color = {"ok": "", "low fit": "#b36b00", "not a face": "#c00000"}.get(status, "")
        self.ui.statusLabel.text = text
        self.ui.statusLabel.styleSheet = "color: {}".format(color) if color else ""
        self._fillResultsTable()
        if status == "not a face":
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

    def onResultCellClicked(self, row, column) -> None:
        node = self._resultNode
        if node is None or node.GetScene() is None or row >= node.GetNumberOfControlPoints():
            return
        markupsLogic = slicer.modules.markups.logic()
        markupsLogic.JumpSlicesToNthPointInMarkup(node.GetID(), row, True)
        markupsLogic.FocusCamerasOnNthPointInMarkup(node.GetID(), row)

    def onLoadSample(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to load the sample scan."), waitCursor=True):
            path = resources.sample_scan_path()
            if not path.exists():
                raise PalnetError(_("the sample scan is not installed"), path)
            self._parameterNode.inputModel = slicer.util.loadModel(str(path))

    def onBrowseModelFile(self) -> None:
        start = self._parameterNode.modelFile or str(resources.default_model_path().parent)
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("PALNet model file"), start,
                                              _("PALNet model (*.npz);;All files (*)"))
        if path:
            self._parameterNode.modelFile = path

    def onDefaultModelFile(self) -> None:
        self._parameterNode.modelFile = ""

    def _updateModelInfo(self) -> None:
        modelFile = self._parameterNode.modelFile if self._parameterNode else ""
        if modelFile == self._shownModelFile:
            return
        self._shownModelFile = modelFile
        try:
            info = self.logic.modelInfo(modelFile or None)
            self.ui.modelInfoLabel.text = PALNetLandmarksLogic.modelInfoHtml(info)
        except Exception as exc:  # shown in the panel; Apply's tooltip says the same
            self.ui.modelInfoLabel.text = _("Model file: {}").format(exc)

    # ------------------------------------------------------------ batch

    def _browseFolder(self, parameter: str, title: str) -> None:
        start = getattr(self._parameterNode, parameter) or ""
        path = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), title, start)
        if path:
            setattr(self._parameterNode, parameter, path)

    def _updateBatchButton(self) -> None:
        p = self._parameterNode
        reason = None
        if not p:
            reason = _("Not initialised.")
        elif not p.batchInputFolder or not os.path.isdir(p.batchInputFolder):
            reason = _("Choose the folder of face scans (.ply .obj .stl .vtk .vtp).")
        elif not p.batchOutputFolder:
            reason = _("Choose the folder for the landmark files.")
        else:
            reason = self.logic.modelFileProblem(p.modelFile or None)
        self.ui.batchRunButton.enabled = reason is None
        self.ui.batchRunButton.toolTip = reason or _("Place landmarks on every scan in the folder (sub-folders too).")

    def onBatchRun(self) -> None:
        p = self._parameterNode
        self.ui.batchLog.clear()
        self.ui.batchProgressBar.value = 0
        self.ui.batchSummaryLabel.text = _("Running...")

        def progress(done, total, scan, error=None):
            self.ui.batchProgressBar.maximum = total
            self.ui.batchProgressBar.value = done
            self.ui.batchSummaryLabel.text = _("{done}/{total}: {scan}").format(done=done, total=total, scan=scan)
            if error:
                self.ui.batchLog.appendPlainText("{}: {}".format(scan, error))
            slicer.app.processEvents()  # keep the panel responsive between scans

        # The progress callback processes events: no second batch or Apply may start meanwhile.
        self.ui.batchRunButton.enabled = False
        self.ui.applyButton.enabled = False
        try:
            with slicer.util.tryWithErrorDisplay(_("Batch prediction failed."), waitCursor=True):
                rows = self.logic.processDirectory(p.batchInputFolder, p.batchOutputFolder, p.batchFormat, progress,
                                                   modelPath=p.modelFile or None, snap=p.snap, units=p.units,
                                                   overwrite=p.batchOverwrite)
                self.ui.batchSummaryLabel.text = PALNetLandmarksLogic.batchSummary(rows, p.batchOutputFolder)
                self.ui.batchLog.clear()
                for row in rows:
                    detail = row.message or _("fit {:.2f} mm, {:.1f} s").format(row.fit_rms_mm, row.seconds)
                    self.ui.batchLog.appendPlainText("{:<24} {:<10} {}".format(row.scan, row.status, detail))
        finally:
            self._updateBatchButton()
            self._checkCanApply()

    # ------------------------------------------------------------ training

    def onBrowseTrainingOutput(self) -> None:
        start = self._parameterNode.trainingOutputModel or "my_model.npz"
        path = qt.QFileDialog.getSaveFileName(slicer.util.mainWindow(), _("Save the trained model as"), start,
                                              _("PALNet model (*.npz)"))
        if path:
            self._parameterNode.trainingOutputModel = path if path.lower().endswith(".npz") else path + ".npz"

    def _updateTrainingButtons(self) -> None:
        run = self.logic.trainingRun if self.logic else None
        running = run is not None and run.running
        p = self._parameterNode
        reason = None
        if running:
            reason = _("A training is running.")
        elif not p:
            reason = _("Not initialised.")
        elif not p.trainingDataFolder or not os.path.isdir(p.trainingDataFolder):
            reason = _("Choose the folder of annotated scans (each scan with its landmark file).")
        elif not p.trainingOutputModel:
            reason = _("Choose the file the trained model is saved to (.npz).")
        self.ui.trainingStartButton.enabled = reason is None
        self.ui.trainingStartButton.toolTip = reason or _("Train in the background; Slicer stays usable.")
        self.ui.trainingStopButton.enabled = running
        self.ui.trainingShowPlotButton.enabled = run is not None and run.chartNode is not None
        self.ui.trainingUseModelButton.enabled = (run is not None and run.returnCode == 0
                                                  and os.path.exists(run.outputModelPath or ""))

    def onTrainingStart(self) -> None:
        p = self._parameterNode
        # No wait cursor: installing PyTorch may ask the user first.
        with slicer.util.tryWithErrorDisplay(_("Could not start training.")):
            self.ui.trainingLog.clear()
            self.ui.trainingProgressBar.maximum = p.trainingEpochs
            self.ui.trainingProgressBar.value = 0
            run = self.logic.train(p.trainingDataFolder, p.trainingOutputModel, epochs=p.trainingEpochs,
                                   progress=self.onTrainingProgress, finished=self.onTrainingFinished,
                                   augmentCopies=p.trainingAugmentCopies)
            self.ui.trainingStatusLabel.text = _("Preparing the scans...")
            slicer.modules.plots.logic().ShowChartInLayout(run.chartNode)
        self._updateTrainingButtons()

    def onTrainingProgress(self, row, line) -> None:
        self.ui.trainingLog.appendPlainText(line)
        if row is not None:
            self.ui.trainingProgressBar.value = min(int(row["epoch"]), self.ui.trainingProgressBar.maximum)
            self.ui.trainingStatusLabel.text = _(
                "epoch {epoch}: loss {loss:.3f}, validation {val_pointwise_mm:.2f} mm point-wise, "
                "{val_distancewise_mm:.2f} mm distance-wise").format(**row)

    def onTrainingFinished(self, returnCode, message) -> None:
        self.ui.trainingStatusLabel.text = message
        self._updateTrainingButtons()
        run = self.logic.trainingRun
        if returnCode != 0 and run is not None and not run.stopRequested:
            slicer.util.errorDisplay(_("Training failed.") + "\n\n" + message,
                                     detailedText="\n".join(run.log[-40:]))

    def onTrainingStop(self) -> None:
        self.logic.stopTraining()
        self._updateTrainingButtons()

    def onTrainingShowPlot(self) -> None:
        run = self.logic.trainingRun
        if run is not None and run.chartNode is not None and run.chartNode.GetScene() is not None:
            slicer.modules.plots.logic().ShowChartInLayout(run.chartNode)

    def onTrainingUseModel(self) -> None:
        run = self.logic.trainingRun
        if run is not None and run.outputModelPath:
            self._parameterNode.modelFile = run.outputModelPath


#
# Training run (process + table + timer)
#


class TrainingRun:
    """A ``palnet train`` process, its per-epoch history in a table node, and the timer that polls it.

    ``progress(row, line)`` is called for every output line (``row``: the parsed epoch
    numbers or None); ``finished(returnCode, message)`` once at the end. All calls
    happen on the thread that calls :meth:`poll` (the GUI thread, from a QTimer).
    """

    def __init__(self, process: training.TrainingProcess, tableNode, chartNode, outputModelPath: Optional[str] = None,
                 progress: Optional[Callable] = None, finished: Optional[Callable] = None):
        self.process = process
        self.tableNode = tableNode
        self.chartNode = chartNode
        self.outputModelPath = outputModelPath
        self.progress = progress
        self.finished = finished
        self.history = []  # type: List[dict]
        self.log = []  # type: List[str]
        self.errorMessage = None  # type: Optional[str]
        self.returnCode = None  # type: Optional[int]
        self.message = ""
        self.timer = None

    @property
    def running(self) -> bool:
        return self.returnCode is None

    @property
    def stopRequested(self) -> bool:
        return self.process.stopRequested

    def startPolling(self, intervalMs: int = 500) -> None:
        self.timer = qt.QTimer()
        self.timer.setInterval(intervalMs)
        self.timer.timeout.connect(self.poll)
        self.timer.start()

    def poll(self) -> bool:
        """Handle the output printed since the last call; True while the process runs."""
        if self.returnCode is not None:
            return False
        for line in self.process.readLines():
            self.log.append(line)
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
        code = self.process.returncode()
        if code is None:
            return True
        self.returnCode = code
        if self.timer is not None:
            self.timer.stop()
        self.message = self._finalMessage(code)
        logging.info("PAL-Net training: %s", self.message)
        if self.finished:
            self.finished(code, self.message)
        return False

    def _finalMessage(self, code: int) -> str:
        if self.stopRequested:
            return _("Training stopped after {n} epochs. The checkpoint {ckpt} is kept: start again with the same "
                     "output file to resume.").format(n=len(self.history), ckpt=str(self.outputModelPath) + ".ckpt")
        if code == 0:
            return _("Training finished after {n} epochs; model saved to {path}").format(
                n=len(self.history), path=self.outputModelPath)
        last = self.errorMessage or next((line for line in reversed(self.log) if line.strip()), "")
        return _("Training failed (exit status {code}): {last}").format(code=code, last=last)

    def stop(self) -> None:
        self.process.stop()

    def wait(self, timeout: float = 60.0, interval: float = 0.05) -> int:
        """Poll until the process ends (for scripts and tests; the GUI uses the timer)."""
        deadline = time.monotonic() + timeout
        while self.poll():
            if time.monotonic() > deadline:
                raise TimeoutError("training still running after {:.0f} s".format(timeout))
            time.sleep(interval)
        return self.returnCode


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
        self.trainingRun = None  # type: Optional[TrainingRun]

    def getParameterNode(self):
        return PALNetLandmarksParameterNode(super().getParameterNode())

    # ------------------------------------------------------------ models

    @staticmethod
    def resolveModelPath(modelPath: Optional[str] = None) -> str:
        """The model file to use: ``modelPath``, or the shipped default model when empty."""
        if modelPath is None or not str(modelPath).strip():
            return str(resources.default_model_path())
        return os.path.abspath(os.path.expanduser(str(modelPath).strip()))

    @classmethod
    def modelFileProblem(cls, modelPath: Optional[str] = None) -> Optional[str]:
        """Why the model file cannot be used (one line), or None."""
        path = cls.resolveModelPath(modelPath)
        if modelPath is None or not str(modelPath).strip():
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
            raise PalnetError("model file not found" if modelPath else
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
        rows = [("File", info["path"]), ("Protocol", "{} ({} landmarks)".format(info["protocol"], info["landmarks"])),
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
        return self.modelFileProblem(parameterNode.modelFile or None)

    # ------------------------------------------------------------ prediction

    def process(self, modelNode, outputMarkupsNode=None, modelPath: Optional[str] = None, snap: str = "nearest",
                units: str = "auto", lockPoints: bool = False):
        """Place the model's landmarks on ``modelNode``; returns the point list (vtkMRMLMarkupsFiducialNode).

        The surface is read in world RAS (parent transforms applied); the points are
        written as world positions. Without ``outputMarkupsNode`` a new point list is
        created; a given one is cleared and refilled. Status, fit and time of the run
        are kept in ``lastPrediction`` / ``lastSeconds``.
        """
        from palnet.pipeline import predict
        from palnet.snap import SNAP_METHODS
        if modelNode is None:
            raise ValueError(_("No input surface model given."))
        if snap not in tuple(SNAP_METHODS) + ("none",):
            raise ValueError(_("Unknown snap method {!r} (use {})").format(snap, ", ".join(SNAP_METHODS)))
        if units not in UNIT_CHOICES:
            raise ValueError(_("Unknown units {!r} (use {})").format(units, ", ".join(UNIT_CHOICES)))
        if outputMarkupsNode is not None and not outputMarkupsNode.IsA("vtkMRMLMarkupsFiducialNode"):
            raise ValueError(_("The output must be a point list (vtkMRMLMarkupsFiducialNode)."))
        start = time.perf_counter()
        model = self.loadModel(modelPath)
        protocol = mrml.protocolForModel(model.metadata)
        mesh = mrml.meshFromModelNode(modelNode)
        prediction = predict(mesh, model, snap=snap, units=units)

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
        self.lastSeconds = time.perf_counter() - start
        logging.info("PAL-Net: %d landmarks on %s: %s, fit %.2f mm, units %s, %.2f s", len(prediction.landmarks),
                     modelNode.GetName(), prediction.status, prediction.fit_rms_mm, prediction.units,
                     self.lastSeconds)
        if prediction.status != "ok":
            logging.warning("PAL-Net: %s: %s (template fit %.2f mm); check the landmarks", modelNode.GetName(),
                            prediction.status, prediction.fit_rms_mm)
        return node

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
                         snap: str = "nearest", units: str = "auto", overwrite: bool = False):
        """Landmarks for every scan in ``inputDir`` (recursively), one file each in ``outputDir``.

        Same guarantees as ``palnet predict``: a bad scan is reported in its row and
        never stops the batch, outputs are written atomically, existing outputs are
        kept unless ``overwrite``, and ``palnet_summary.csv`` lists every scan.
        ``progress(done, total, scan, error)`` is called after each scan.
        Returns the rows (palnet.batch.BatchItem: scan, input, output, status, fit_rms_mm,
        units, seconds, message).
        """
        from palnet.batch import predict_files
        if not inputDir or not os.path.isdir(str(inputDir)):
            raise PalnetError("input folder not found", inputDir or "(none)")
        if not outputDir:
            raise ValueError(_("No output folder given."))
        model = self.loadModel(modelPath)
        # Workers are forked from Slicer; on Windows they would be spawned from sys.executable,
        # which inside Slicer may be the application itself.
        rows = predict_files([str(inputDir)], str(outputDir), model, fmt=format, snap=snap, units=units,
                             overwrite=overwrite, progress=progress, isolate=os.name != "nt",
                             rejected_hint=_("to place its landmarks anyway, load the scan and press Apply"))
        self.lastBatchRows = rows
        failed = [r for r in rows if r.status == "error"]
        for r in failed:
            logging.warning("PAL-Net batch: %s", r.message)
        logging.info("PAL-Net batch: %s", self.batchSummary(rows, outputDir))
        return rows

    @staticmethod
    def batchSummary(rows, outputDir: str = "") -> str:
        from palnet.batch import ERROR, LOW_FIT, OK, REJECTED, SKIPPED, SUMMARY_NAME
        done = sum(r.status in (OK, LOW_FIT) for r in rows)
        rejected = sum(r.status == REJECTED for r in rows)
        skipped = sum(r.status == SKIPPED for r in rows)
        failed = sum(r.status == ERROR for r in rows)
        text = _("{n} scans: {done} done, {rejected} not a face, {skipped} skipped, {failed} failed").format(
            n=len(rows), done=done, rejected=rejected, skipped=skipped, failed=failed)
        if outputDir:
            text += _("; summary in {}").format(os.path.join(str(outputDir), SUMMARY_NAME))
        return text

    # ------------------------------------------------------------ training

    @staticmethod
    def torchAvailable() -> bool:
        return importlib.util.find_spec("torch") is not None

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
            slicer.util.pip_install("torch>=2.0")
        else:
            slicer.util.pip_install("torch>=2.0 --index-url https://download.pytorch.org/whl/cpu")
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
        if self.trainingRun is not None and self.trainingRun.running:
            raise RuntimeError(_("A training is already running; stop it first."))
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
        command = training.trainingCommand(training.defaultPythonExecutable(), MODULE_DIR, datasetDir,
                                           outputModelPath, epochs, extraArgs)
        return self.startTrainingProcess(command, os.path.abspath(str(outputModelPath)), progress, finished)

    def startTrainingProcess(self, command: List[str], outputModelPath: Optional[str] = None,
                             progress: Optional[Callable] = None, finished: Optional[Callable] = None,
                             pollIntervalMs: int = 500) -> TrainingRun:
        """Run ``command`` (a ``palnet train`` command line) with its log parsed into a table and plot."""
        scene = slicer.mrmlScene
        title = "PAL-Net training"
        table = mrml.newTrainingTable(scene, title, training.EPOCH_COLUMNS)
        chart = mrml.newTrainingChart(scene, table, title)
        logging.info("PAL-Net training: %s", " ".join(command))
        run = TrainingRun(training.TrainingProcess(command), table, chart, outputModelPath, progress, finished)
        self.trainingRun = run
        run.startPolling(pollIntervalMs)
        return run

    def stopTraining(self) -> None:
        if self.trainingRun is not None and self.trainingRun.running:
            self.trainingRun.stop()
            self.trainingRun.poll()


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
        return float(np.linalg.norm(mrml.controlPointsWorld(node) - truthRas, axis=1).mean())

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
