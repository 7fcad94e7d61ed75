"""Stand-ins for ``slicer.app``, ``slicer.modules`` and the dialogs and .ui loading of ``slicer.util``.

Only for the widget harness: the .ui is loaded with PyQt5's ``uic`` (CTK and MRML widgets
replaced by :mod:`widgets`), message boxes are recorded instead of shown, and
``confirmOkCancelDisplay`` answers from ``Dialogs.answers`` (True when empty).
"""
import io
import os
import re
import xml.etree.ElementTree as ET

from PyQt5 import QtCore, QtWidgets, uic


class IOManager:
    """``slicer.app.coreIOManager()`` for model and markups files, with slicer-core's storage nodes."""

    def loadNodes(self, fileType, properties, loadedNodes, userMessages):
        import os
        import slicer
        scene, path = slicer.mrmlScene, properties["fileName"]
        name = properties.get("name") or os.path.basename(path).split(".")[0]
        if fileType == "ModelFile":
            node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
            storage = scene.AddNewNodeByClass("vtkMRMLModelStorageNode")
            storage.SetFileName(path)
            node.SetAndObserveStorageNodeID(storage.GetID())
            if not storage.ReadData(node):
                scene.RemoveNode(node)
                return False
            node.CreateDefaultDisplayNodes()
        elif fileType == "MarkupsFile":
            logic = slicer.vtkSlicerMarkupsLogic()
            logic.SetMRMLScene(scene)
            node = scene.GetNodeByID(logic.LoadMarkups(path, name))
            logic.SetMRMLScene(None)
            if node is None:
                return False
        else:
            return False
        loadedNodes.AddItem(node)
        return True


class Application:
    """``slicer.app``: event processing, cursor, testing flag, and ``connect`` as PythonQt spells it."""

    def __init__(self):
        self.qapp = QtWidgets.QApplication.instance()
        self.connections = []  # (signal, slot) given to connect()
        self.cursorDepth = 0

    def processEvents(self, *args):
        self.qapp.processEvents()

    def setOverrideCursor(self, cursor):
        self.cursorDepth += 1

    def restoreOverrideCursor(self):
        self.cursorDepth -= 1

    def testingEnabled(self):
        return False  # as a user runs it: error dialogs are shown (here: recorded)

    def connect(self, signal, slot):
        self.connections.append((signal, slot))

    def coreIOManager(self):
        return IOManager()


class _Logic:
    def __init__(self, **methods):
        self.calls = []
        for name, result in methods.items():
            setattr(self, name, self._recorder(name, result))

    def _recorder(self, name, result):
        def call(*args):
            self.calls.append((name,) + args)
            return result
        return call


class _Module:
    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        return self._logic


class Modules:
    """``slicer.modules``: the markups and plots logics the panel calls (recorded)."""

    def __init__(self):
        self.markups = _Module(_Logic(JumpSlicesToNthPointInMarkup=None, FocusCamerasOnNthPointInMarkup=None))
        self.plots = _Module(_Logic(ShowChartInLayout=None))


class Dialogs:
    """Replaces slicer.util's message boxes: each call is recorded as (kind, text, keyword arguments)."""

    def __init__(self):
        self.shown = []
        self.answers = []

    def _show(self, kind, result=None):
        def display(text, *args, **kwargs):
            self.shown.append((kind, text, kwargs))
            return self.answers.pop(0) if (result is None and self.answers) else (True if result is None else result)
        return display

    def patches(self):
        return {"errorDisplay": self._show("error", False), "warningDisplay": self._show("warning", False),
                "infoDisplay": self._show("info", False), "confirmOkCancelDisplay": self._show("confirm")}

    def kinds(self):
        return [kind for kind, _, _ in self.shown]


def loadUI(path):
    """slicer.util.loadUI with PyQt5: CTK/MRML classes come from the stand-ins, .ui connections made by name."""
    text = open(path, encoding="utf-8").read()
    root = ET.fromstring(text)
    connections = [(c.findtext("sender"), c.findtext("signal"), c.findtext("receiver"), c.findtext("slot"))
                   for c in root.iter("connection")]
    text = re.sub(r"<header>[^<]*</header>", "<header>palnet_ui_substitutes.h</header>", text)
    text = re.sub(r"<connections>.*</connections>", "", text, flags=re.S)  # uic cannot type vtkMRMLScene*
    widget = uic.loadUi(io.StringIO(text))
    for sender, signal, receiver, slot in connections:
        find = (lambda name: widget if widget.objectName() == name else widget.findChild(QtCore.QObject, name))
        getattr(find(sender), signal.split("(")[0]).connect(getattr(find(receiver), slot.split("(")[0]))
    return widget


def childWidgetVariables(widget):
    ui = type("", (), {})()
    for child in widget.findChildren(QtCore.QObject):
        if child.objectName():
            setattr(ui, child.objectName(), child)
    return ui


def application():
    """The QApplication of the test run (offscreen), made once and kept (Qt needs it to outlive every widget)."""
    global _APPLICATION
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if QtWidgets.QApplication.instance() is None:
        _APPLICATION = QtWidgets.QApplication(["palnet-tests"])
    return QtWidgets.QApplication.instance()


_APPLICATION = None
