"""Plain-Qt stand-ins (PyQt5) for the CTK and MRML widgets of the module's .ui file.

The Qt bindings on PyPI have no CTK and no MRML widgets, so the harness loads the real
``PALNetLandmarks.ui`` with these in their place: same class names, the properties,
signals and slots the .ui and the module use, nothing more. They are not Slicer's
widgets (a picture made with them shows plain Qt, not Slicer's look).
"""
from PyQt5 import QtCore, QtWidgets
from PyQt5.QtCore import pyqtProperty, pyqtSignal


class qMRMLWidget(QtWidgets.QWidget):
    mrmlSceneChanged = pyqtSignal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """The nodes of ``nodeTypes`` in the scene (kept up to date), optionally with a "none" entry."""

    currentNodeChanged = pyqtSignal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene, self._tags, self._nodes = None, [], []
        self.nodeTypes, self.noneEnabled, self.noneDisplay = [], False, "None"
        self.addEnabled = self.removeEnabled = self.renameEnabled = self.showChildNodeTypes = False
        self.currentIndexChanged.connect(self._onIndexChanged)

    # the .ui's properties
    def setNodeTypes(self, types):
        self.nodeTypes = list(types)
        self._refresh()

    def setNoneEnabled(self, value):
        self.noneEnabled = bool(value)
        self._refresh()

    def setNoneDisplay(self, text):
        self.noneDisplay = text
        self._refresh()

    def setAddEnabled(self, value):
        self.addEnabled = bool(value)

    def setRemoveEnabled(self, value):
        self.removeEnabled = bool(value)

    def setRenameEnabled(self, value):
        self.renameEnabled = bool(value)

    def setShowChildNodeTypes(self, value):
        self.showChildNodeTypes = bool(value)

    def setMRMLScene(self, scene):
        if self._scene is not None:
            for tag in self._tags:
                self._scene.RemoveObserver(tag)
        self._scene, self._tags = scene, []
        if scene is not None:
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent):
                self._tags.append(scene.AddObserver(event, lambda caller, ev: self._refresh()))
        self._refresh()

    def currentNode(self):
        i = self.currentIndex()
        return self._nodes[i] if 0 <= i < len(self._nodes) else None

    def setCurrentNode(self, node):
        self._refresh()
        if node in self._nodes:
            self.setCurrentIndex(self._nodes.index(node))

    def nodes(self):
        return [n for n in self._nodes if n is not None]

    def _candidates(self):
        scene, found = self._scene, []
        if scene is None:
            return found
        for i in range(scene.GetNumberOfNodes()):
            node = scene.GetNthNode(i)
            if any(node.GetClassName() == t or (self.showChildNodeTypes and node.IsA(t)) for t in self.nodeTypes) \
                    and not node.GetHideFromEditors():
                found.append(node)
        return found

    def _refresh(self):
        current = self.currentNode()
        nodes = ([None] if self.noneEnabled else []) + self._candidates()
        if [id(n) for n in nodes] == [id(n) for n in self._nodes] and \
                all(self.itemText(i) == (n.GetName() if n is not None else self.noneDisplay)
                    for i, n in enumerate(nodes)):
            return
        blocked = self.blockSignals(True)
        self.clear()
        self._nodes = nodes
        for n in nodes:
            self.addItem(self.noneDisplay if n is None else n.GetName())
        index = nodes.index(current) if current in nodes else (0 if nodes else -1)
        self.setCurrentIndex(index)
        self.blockSignals(blocked)
        if self.currentNode() is not current:
            self.currentNodeChanged.emit(self.currentNode())

    def _onIndexChanged(self, index):
        self.currentNodeChanged.emit(self.currentNode())


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    """A titled box whose contents hide when collapsed.

    As CTK's: a child the code hid itself stays hidden when the box expands (its own
    visibility is tracked from its show/hide events, the box's own hiding is not).
    """

    contentsCollapsed = pyqtSignal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed, self._forcing, self._wanted = False, False, {}

    def setText(self, text):
        self.setTitle(text)

    def text(self):
        return self.title()

    def setCollapsed(self, collapsed):
        self._collapsed = bool(collapsed)
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            self._apply(child)
        self.setMaximumHeight(self.fontMetrics().height() + 8 if self._collapsed else 16777215)
        self.contentsCollapsed.emit(self._collapsed)

    def collapsed(self):
        return self._collapsed

    def _apply(self, child):
        self._forcing = True
        child.setVisible(not self._collapsed and self._wanted.get(id(child), True))
        child.setAttribute(QtCore.Qt.WA_WState_ExplicitShowHide, False)
        self._forcing = False

    def childEvent(self, event):
        super().childEvent(event)
        child = event.child()
        if event.added() and isinstance(child, QtWidgets.QWidget):
            child.installEventFilter(self)
            if self._collapsed:
                self._apply(child)

    def eventFilter(self, child, event):
        if not self._forcing and event.type() in (QtCore.QEvent.ShowToParent, QtCore.QEvent.HideToParent):
            self._wanted[id(child)] = event.type() == QtCore.QEvent.ShowToParent
        return False


class ctkPathLineEdit(QtWidgets.QWidget):
    """A line edit and a browse button; ``currentPath`` as a property (as PythonQt shows it), history in a list."""

    Dirs, Files, Drives, NoSymLinks, AllEntries = 0x001, 0x002, 0x004, 0x008, 0x007
    Readable, Writable, Executable, Modified, Hidden, System = 0x010, 0x020, 0x040, 0x080, 0x100, 0x200
    AllDirs, CaseSensitive, NoDot, NoDotDot, NoDotAndDotDot = 0x400, 0x800, 0x2000, 0x4000, 0x6000
    AdjustToContents, AdjustToContentsOnFirstShow, AdjustToMinimumContentsLength = 0, 1, 2

    currentPathChanged = pyqtSignal(str)
    validInputChanged = pyqtSignal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        self.lineEdit = QtWidgets.QLineEdit(self)
        self.browseButton = QtWidgets.QToolButton(self)
        self.browseButton.setText("...")
        layout.addWidget(self.lineEdit, 1)
        layout.addWidget(self.browseButton)
        self.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Fixed)
        self.filters, self.nameFilters, self.settingKey, self.history = 0, [], "", []
        self.sizeAdjustPolicy, self.minimumContentsLength = self.AdjustToContentsOnFirstShow, 0
        self.textSetCount = 0  # how often the text was written from outside (a moving cursor each time)
        self.lineEdit.textChanged.connect(self.currentPathChanged.emit)

    def getCurrentPath(self):
        return self.lineEdit.text()

    def setCurrentPath(self, path):
        self.textSetCount += 1
        self.lineEdit.setText(path)

    currentPath = pyqtProperty(str, fget=getCurrentPath, fset=setCurrentPath)

    def setFilters(self, filters):
        self.filters = int(filters)

    def setNameFilters(self, filters):
        self.nameFilters = list(filters)

    def setSettingKey(self, key):
        self.settingKey = key

    def setSizeAdjustPolicy(self, policy):
        self.sizeAdjustPolicy = policy

    def setMinimumContentsLength(self, n):
        self.minimumContentsLength = int(n)

    def addCurrentPathToHistory(self):
        path = self.lineEdit.text()
        if path:
            self.history = [path] + [p for p in self.history if p != path]
