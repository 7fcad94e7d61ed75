"""Stub of ``slicer.parameterNodeWrapper``: typed parameters stored in a real vtkMRMLScriptedModuleNode.

Like Slicer's (Base/Python/slicer/parameterNodeWrapper): each annotated field reads and
writes the parameter node (str, int, bool, pathlib.Path as text; MRML nodes as node
references), unset fields get their default when the wrapper is made, the wrapper forwards
observers to the node, and ``connectParametersToGui`` binds widgets through
``GuiConnector`` objects (Slicer's own connectors for the widget kinds the .ui uses:
combo box, check box, spin box, node combo box, path line edit), rewriting every bound
widget after each change as Slicer does. Validators only record their arguments.
"""
import abc
import pathlib
import typing

import vtk

__all__ = ["parameterNodeWrapper", "Choice", "WithinRange", "GuiConnector", "createGuiConnector"]


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)


class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum


def _base(annotation):
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Annotated else annotation


class GuiConnector(abc.ABC):
    """Slicer's base class: ``read``/``write`` the widget, ``changed()`` when the user edits it."""

    @staticmethod
    @abc.abstractmethod
    def canRepresent(widget, datatype) -> bool:
        raise NotImplementedError

    @staticmethod
    @abc.abstractmethod
    def create(widget, datatype):
        raise NotImplementedError

    def __init__(self):
        super().__init__()
        self._callback = None

    def onChanged(self, callback):
        self._callback = callback
        if callback is None:
            self._disconnect()
        else:
            self._connect()

    def changed(self, *args):
        if self._callback:
            self._callback()

    @abc.abstractmethod
    def _connect(self):
        raise NotImplementedError

    @abc.abstractmethod
    def _disconnect(self):
        raise NotImplementedError

    @abc.abstractmethod
    def widget(self):
        raise NotImplementedError

    @abc.abstractmethod
    def read(self):
        raise NotImplementedError

    @abc.abstractmethod
    def write(self, value) -> None:
        raise NotImplementedError


class _SignalConnector(GuiConnector):
    """A connector described by a widget class name, its change signal, a reader and a writer."""

    widgetClass, datatypes, signal = "", (), ""

    @classmethod
    def canRepresent(cls, widget, datatype) -> bool:
        names = [c.__name__ for c in type(widget).__mro__]
        base = _base(datatype)
        return cls.widgetClass in names and (base in cls.datatypes or (not cls.datatypes and isinstance(base, type)
                                                                       and base.__name__.startswith("vtkMRML")))

    @classmethod
    def create(cls, widget, datatype):
        return cls(widget, _base(datatype)) if cls.canRepresent(widget, datatype) else None

    def __init__(self, widget, datatype):
        super().__init__()
        self._widget, self._type = widget, datatype

    def _connect(self):
        getattr(self._widget, self.signal).connect(self.changed)

    def _disconnect(self):
        getattr(self._widget, self.signal).disconnect(self.changed)

    def widget(self):
        return self._widget


class _ComboBoxConnector(_SignalConnector):
    widgetClass, datatypes, signal = "QComboBox", (str,), "currentIndexChanged"

    @classmethod
    def canRepresent(cls, widget, datatype) -> bool:
        return type(widget).__name__ in ("QComboBox", "ctkComboBox") and _base(datatype) is str

    def read(self):
        return self._widget.currentText()

    def write(self, value):
        index = self._widget.findText(str(value))
        if index < 0:
            raise ValueError("{!r} is not a choice of {}".format(value, self._widget.objectName()))
        self._widget.setCurrentIndex(index)


class _CheckBoxConnector(_SignalConnector):
    widgetClass, datatypes, signal = "QCheckBox", (bool,), "toggled"

    def read(self):
        return self._widget.isChecked()

    def write(self, value):
        self._widget.setChecked(bool(value))


class _SpinBoxConnector(_SignalConnector):
    widgetClass, datatypes, signal = "QSpinBox", (int,), "valueChanged"

    def read(self):
        return int(self._widget.value())

    def write(self, value):
        self._widget.setValue(int(value))


class _NodeComboBoxConnector(_SignalConnector):
    widgetClass, datatypes, signal = "qMRMLNodeComboBox", (), "currentNodeChanged"

    def read(self):
        return self._widget.currentNode()

    def write(self, value):
        self._widget.setCurrentNode(value)


class _PathLineEditConnector(_SignalConnector):
    """Slicer's ctkPathLineEditToPathConnector: writes the text back after every change."""

    widgetClass, datatypes, signal = "ctkPathLineEdit", (pathlib.Path,), "currentPathChanged"

    def read(self):
        return self._type(self._widget.currentPath)

    def write(self, value):
        self._widget.setCurrentPath(str(value))


_CONNECTORS = [_ComboBoxConnector, _CheckBoxConnector, _SpinBoxConnector, _NodeComboBoxConnector,
               _PathLineEditConnector]


def createGuiConnector(widget, datatype) -> GuiConnector:
    for connector in _CONNECTORS:
        if connector.canRepresent(widget, datatype):
            return connector.create(widget, datatype)
    raise RuntimeError("Unable to create GUI connector from datatype '{}' to widget type '{}'".format(
        datatype, type(widget).__name__))


class _Field:
    """One parameter: how it is stored in the node and its default."""

    def __init__(self, name, annotation, default):
        self.name, self.annotation, self.type = name, annotation, _base(annotation)
        self.isNode = isinstance(self.type, type) and self.type.__name__.startswith("vtkMRML")
        if default is not _NO_DEFAULT:
            self.default = default
        else:
            self.default = None if self.isNode else self.type()

    def isIn(self, node) -> bool:
        return self.isNode or node.GetParameter(self.name) != ""  # an unset reference reads as None

    def read(self, node):
        if self.isNode:
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        if self.type is bool:
            return text == "True"
        return self.type(text)

    def write(self, node, value) -> None:
        if self.isNode:
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
        else:
            node.SetParameter(self.name, str(bool(value)) if self.type is bool else str(value))


_NO_DEFAULT = object()


def parameterNodeWrapper(classtype):
    fields = {name: _Field(name, annotation, getattr(classtype, name, _NO_DEFAULT))
              for name, annotation in classtype.__annotations__.items()}

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        self._guis, self._nextTag, self._updatingGui = {}, 0, False
        for field in fields.values():
            if not field.isIn(parameterNode):
                field.write(parameterNode, field.default)

    def makeProperty(field):
        def get(self):
            return field.read(self.parameterNode)

        def set_(self, value):
            field.write(self.parameterNode, value)
        return property(get, set_)

    def AddObserver(self, event, callback, priority=0.0):
        return self.parameterNode.AddObserver(event, callback, priority)

    def RemoveObserver(self, tag):
        self.parameterNode.RemoveObserver(tag)

    def dataType(self, name):
        return fields[name].annotation

    def connectParametersToGui(self, mapping):
        connectors = {name: value if isinstance(value, GuiConnector) else createGuiConnector(value, dataType(self, name))
                      for name, value in mapping.items()}
        for name in connectors:
            if name not in fields:
                raise ValueError("Cannot find a param with the given name: {}".format(name))
        tag = self._nextTag
        self._nextTag += 1
        observer = self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda caller, event: updateGui(self))
        self._guis[tag] = (connectors, observer)
        for name, connector in connectors.items():
            connector.write(getattr(self, name))
            connector.onChanged(lambda name=name, connector=connector: guiChanged(self, name, connector))
        return tag

    def guiChanged(self, name, connector):
        if not self._updatingGui:
            setattr(self, name, connector.read())

    def updateGui(self):
        if self._updatingGui:
            return
        self._updatingGui = True
        try:
            for connectors, _ in list(self._guis.values()):
                for name, connector in connectors.items():
                    connector.write(getattr(self, name))
        finally:
            self._updatingGui = False

    def disconnectGui(self, tag):
        if tag in self._guis:
            connectors, observer = self._guis.pop(tag)
            for connector in connectors.values():
                connector.onChanged(None)
            self.parameterNode.RemoveObserver(observer)

    namespace = {"__init__": __init__, "AddObserver": AddObserver, "RemoveObserver": RemoveObserver,
                 "dataType": dataType, "connectParametersToGui": connectParametersToGui,
                 "disconnectGui": disconnectGui, "__annotations__": dict(classtype.__annotations__),
                 "__doc__": classtype.__doc__, "__module__": classtype.__module__,
                 "defaults": {name: field.default for name, field in fields.items()}}
    namespace.update({name: makeProperty(field) for name, field in fields.items()})
    return type(classtype.__name__, (), namespace)
