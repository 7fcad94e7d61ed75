"""Stand-in for PythonQt's ``qt``: the PyQt5 classes under the same names (``qt.QTimer``,
``qt.QProcess``, ``qt.QTableWidgetItem``...). The module writes widget state with methods
(``setEnabled``, ``setText``), which PythonQt and PyQt5 both have; PyQt5 lacks PythonQt's
property attributes (``button.enabled = False``), so a test would catch code that used them
only if it read the state back, which the widget tests do.

Without PyQt5 (not installed) only a QTimer remains, which never fires; tests that need
Qt skip then.
"""
try:
    from PyQt5.QtCore import *  # noqa: F401,F403
    from PyQt5.QtGui import *  # noqa: F401,F403
    from PyQt5.QtWidgets import *  # noqa: F401,F403
    AVAILABLE = True
except ImportError:  # pragma: no cover - only without the test extras
    AVAILABLE = False

    class _Signal:
        def __init__(self):
            self._slots = []

        def connect(self, slot):
            self._slots.append(slot)

        def emit(self, *args):
            for slot in list(self._slots):
                slot(*args)

    class QTimer:
        """Never fires by itself."""

        def __init__(self, parent=None):
            self.timeout = _Signal()
            self.active = False

        def setInterval(self, msec):
            pass

        def setSingleShot(self, single):
            pass

        def start(self, msec=None):
            self.active = True

        def stop(self):
            self.active = False

        def isActive(self):
            return self.active
