"""Stub of ``slicer.ScriptedLoadableModule``: the four base classes, with only what the module relies on
(the real ones live in Slicer's Base/Python/slicer/ScriptedLoadableModule.py)."""
import os
import sys
import unittest

import slicer


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = type(self).__name__[:-len("Widget")]

    def setup(self):
        # Slicer: the module panel's layout; here the layout of the widget the harness gives as parent.
        self.layout = self.parent.layout()

    def resourcePath(self, filename):
        moduleDir = os.path.dirname(os.path.abspath(sys.modules[type(self).__module__].__file__))
        return os.path.join(moduleDir, "Resources", filename)


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        name = type(self).__name__
        self.moduleName = name[:-len("Logic")] if name.endswith("Logic") else name

    def getParameterNode(self):
        """The module's singleton vtkMRMLScriptedModuleNode in slicer.mrmlScene, made on first use (as Slicer does)."""
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetSingletonTag(self.moduleName)
            node = scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, requestedDelay=None, msec=None):
        pass
