"""Stub of PythonQt's ``qt``: only what the logic touches outside the GUI (a QTimer for training)."""


class _Signal:
    def __init__(self):
        self._slots = []

    def connect(self, slot):
        self._slots.append(slot)

    def emit(self, *args):
        for slot in list(self._slots):
            slot(*args)


class QTimer:
    """Never fires by itself: tests call the polled function (or ``timeout.emit()``) directly."""

    def __init__(self, parent=None):
        self.timeout = _Signal()
        self.interval = 0
        self.active = False

    def setInterval(self, msec):
        self.interval = int(msec)

    def start(self, msec=None):
        if msec is not None:
            self.interval = int(msec)
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active
