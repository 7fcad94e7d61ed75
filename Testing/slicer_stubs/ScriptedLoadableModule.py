"""Stub of ``slicer.ScriptedLoadableModule``: the four base classes, with only what the module's
non-GUI code relies on (the real ones live in Slicer's Base/Python/slicer/ScriptedLoadableModule.py)."""
import unittest


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        name = type(self).__name__
        self.moduleName = name[:-len("Logic")] if name.endswith("Logic") else name


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, requestedDelay=None, msec=None):
        pass
