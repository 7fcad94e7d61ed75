"""Child processes seen from Slicer: started with ``qt.QProcess``, read from a timer, never from a thread.

Slicer's PythonQt keeps the GIL while its event loop is idle, so a Python thread that reads a
pipe only runs when Slicer happens to run Python code. ``qt.QProcess`` reads the pipe in
C++ from the event loop; :class:`ChildProcess` only collects what it has read, a line at a
time, when :meth:`BackgroundRun.poll` runs (from a ``qt.QTimer`` in the panel, or from
:meth:`BackgroundRun.wait` in scripts and tests).
"""
import logging
import os
import shutil
import sys
import time
from typing import Callable, List, Optional, Sequence

import qt


class ChildProcess:
    """A child process whose merged stdout/stderr lines can be read without blocking."""

    def __init__(self, command: Sequence[str], env: Optional[dict] = None, cwd: Optional[str] = None):
        self.command = [str(c) for c in command]
        self.stopRequested = False
        self._partial = b""
        self._killAt = None  # type: Optional[float]
        self._process = qt.QProcess()
        self._process.setProcessChannelMode(qt.QProcess.MergedChannels)
        environment = qt.QProcessEnvironment.systemEnvironment()
        for key, value in (env or {}).items():
            environment.insert(key, value)
        environment.insert("PYTHONUNBUFFERED", "1")  # lines arrive as they are printed
        environment.insert("PYTHONIOENCODING", "utf-8")
        self._process.setProcessEnvironment(environment)
        if cwd:
            self._process.setWorkingDirectory(cwd)
        self._process.setProgram(self.command[0])
        self._process.setArguments(self.command[1:])
        self._process.start()
        if not self._process.waitForStarted(10000):
            raise RuntimeError("could not start {}: {}".format(self.command[0], self._process.errorString()))

    @property
    def pid(self) -> int:
        return int(self._process.processId())

    def readLines(self) -> List[str]:
        """Every complete line printed since the last call (never blocks); all of it once the process ended."""
        if self._process.state() != qt.QProcess.NotRunning:
            self._process.waitForReadyRead(0)  # what the pipe holds, also where no event loop runs (a script's loop)
        data = _bytes(self._process.readAllStandardOutput())
        ended = self._process.state() == qt.QProcess.NotRunning
        if ended:  # what arrived between the read above and the end
            data += _bytes(self._process.readAllStandardOutput())
        text = self._partial + data
        lines = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._partial = b"" if ended else lines.pop()
        if ended and lines and lines[-1] == b"":
            lines.pop()
        return [line.decode("utf-8", "replace") for line in lines]

    def returncode(self) -> Optional[int]:
        """None while running; the exit status once it ended (a crash or a kill counts as -1)."""
        if self._killAt is not None and time.monotonic() > self._killAt and \
                self._process.state() != qt.QProcess.NotRunning:
            self._process.kill()
            self._killAt = None
        if self._process.state() != qt.QProcess.NotRunning:
            return None
        if self._process.exitStatus() != qt.QProcess.NormalExit:
            return -1
        return int(self._process.exitCode())

    @property
    def running(self) -> bool:
        return self.returncode() is None

    def stop(self, timeout: float = 5.0, terminate: bool = True) -> None:
        """Ask the process to end; it is killed if it is still running ``timeout`` seconds later (0: now).

        ``terminate``: ask with SIGTERM (Windows console programs ignore it and are killed
        later); without, the caller has asked in its own way (a cancel file). Never waits:
        the kill happens in a later :meth:`returncode` (the panel's timer).
        """
        self.stopRequested = True
        if self._process.state() == qt.QProcess.NotRunning:
            return
        if timeout <= 0:
            self._process.kill()
            return
        if terminate:
            self._process.terminate()
        self._killAt = time.monotonic() + timeout

    def wait(self, timeout: Optional[float] = None) -> int:
        """Block until the process ends (scripts and tests; the panel never calls this)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("{} still running after {:.0f} s".format(os.path.basename(self.command[0]), timeout))
            self._process.waitForFinished(50)
        return self.returncode()


def _bytes(array) -> bytes:
    """A QByteArray as bytes (PythonQt and the Qt bindings differ)."""
    if isinstance(array, (bytes, bytearray)):
        return bytes(array)
    data = array.data()
    return data if isinstance(data, bytes) else bytes(data, "latin-1") if isinstance(data, str) else bytes(data)


def pythonExecutable() -> str:
    """The Python that runs the child processes: Slicer's ``PythonSlicer`` launcher when there is one."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    try:
        import slicer
        inSlicer = hasattr(slicer, "app")
    except ImportError:
        inSlicer = False
    if inSlicer:
        # Inside Slicer sys.executable may be the application itself: never start a second Slicer.
        raise RuntimeError("PythonSlicer was not found on the PATH; cannot start a background process")
    return sys.executable


class BackgroundRun:
    """A child process polled by a ``qt.QTimer``: its lines go to :meth:`handleLine`, its end to :meth:`handleEnd`.

    ``finished(run)`` is called once when it ends (every call happens on the thread that
    polls: the GUI thread). Subclasses say what a line and the end mean.
    """

    kind = "run"

    def __init__(self, process: ChildProcess, finished: Optional[Callable] = None):
        self.process = process
        self.finished = finished
        self.log = []  # type: List[str]
        self.returnCode = None  # type: Optional[int]
        self.message = ""
        self.timer = None
        self.startTime = time.monotonic()

    @property
    def running(self) -> bool:
        return self.returnCode is None

    @property
    def stopRequested(self) -> bool:
        return self.process.stopRequested

    def startPolling(self, intervalMs: int = 100) -> None:
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
            self.handleLine(line)
        code = self.process.returncode()
        if code is None:
            return True
        for line in self.process.readLines():  # the last lines, printed just before the end
            self.log.append(line)
            self.handleLine(line)
        self.returnCode = code
        if self.timer is not None:
            self.timer.stop()
        try:
            self.handleEnd(code)
        except Exception as exc:  # a broken result is this run's failure, not the panel's
            logging.exception("PAL-Net: %s", exc)
            self.returnCode = code if code else -1
            self.message = str(exc)
        self.cleanup()
        if self.finished:
            self.finished(*self.finishedArgs())
        return False

    def finishedArgs(self) -> tuple:
        """What ``finished`` is called with: the run itself."""
        return (self,)

    def handleLine(self, line: str) -> None:
        pass

    def handleEnd(self, code: int) -> None:
        pass

    def cleanup(self) -> None:
        pass

    def cancel(self) -> None:
        self.process.stop()

    def wait(self, timeout: float = 60.0, interval: float = 0.02) -> int:
        """Poll until the process ends (for scripts and tests; the panel uses the timer)."""
        deadline = time.monotonic() + timeout
        while self.poll():
            if time.monotonic() > deadline:
                raise TimeoutError("{} still running after {:.0f} s".format(self.kind, timeout))
            self.process._process.waitForReadyRead(int(interval * 1000))
        return self.returnCode
