"""Training in a background process: the command line, the output reader and the log parser.

Training runs ``palnet train`` in a separate Python process so Slicer's GUI never
freezes. A thread copies the process's output lines into a queue; the GUI polls
:meth:`TrainingProcess.readLines` from a timer, so every MRML and Qt call stays on
the main thread. Nothing here imports Slicer or Qt.
"""
import os
import queue
import re
import subprocess
import sys
import threading
from typing import Dict, List, Optional, Sequence

# One line per epoch, as palnet.train.fit logs it, e.g.
# "epoch   3  loss 11.206  val point-wise 8.607 mm  distance-wise 6.237 mm  lr 0.001  0.8 s  *"
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"
_EPOCH_LINE = re.compile(
    r"^\s*epoch\s+(\d+)\s+loss\s+" + _NUMBER
    + r"\s+val point-wise\s+" + _NUMBER + r"\s*mm\s+distance-wise\s+" + _NUMBER + r"\s*mm"
    + r"\s+lr\s+" + _NUMBER + r"\s+" + _NUMBER + r"\s*s(\s+\*)?\s*$",
    re.IGNORECASE)

EPOCH_COLUMNS = ("epoch", "loss", "val_pointwise_mm", "val_distancewise_mm", "lr", "seconds")

# Runs palnet's command line from the module folder, whatever else is on the path.
_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
              "from palnet.cli import main; sys.exit(main(sys.argv[1:]))")


def parseEpochLine(line: str) -> Optional[Dict[str, float]]:
    """The numbers of one ``palnet train`` epoch line, or None for any other line.

    Keys: EPOCH_COLUMNS plus ``best`` (True when the line ends with ``*``: the
    validation error improved and these weights are kept).
    """
    m = _EPOCH_LINE.match(line or "")
    if not m:
        return None
    row = {"epoch": int(m.group(1))}  # type: Dict[str, float]
    for key, text in zip(EPOCH_COLUMNS[1:], m.groups()[1:6]):
        row[key] = float(text)
    row["best"] = bool(m.group(7))
    return row


def parseErrorLine(line: str) -> Optional[str]:
    """The message of a ``palnet <command>: error: ...`` line, or None."""
    m = re.match(r"^\s*palnet \w+: (?:error: )?(.*)$", line or "")
    if not m or not m.group(1).strip():
        return None
    return m.group(1).strip()


def trainingCommand(python: str, packageParentDir: str, datasetDir: str, outputModelPath: str,
                    epochs: Optional[int] = None, extraArgs: Sequence[str] = ()) -> List[str]:
    """The argument list that runs ``palnet train`` with ``python``, unbuffered.

    ``packageParentDir`` is the folder that holds the ``palnet`` package (the module folder).
    """
    command = [python, "-u", "-c", _BOOTSTRAP, os.fspath(packageParentDir), "train",
               os.path.abspath(os.fspath(datasetDir)), "-o", os.path.abspath(os.fspath(outputModelPath))]
    if epochs is not None:
        command += ["--epochs", str(int(epochs))]
    return command + [str(a) for a in extraArgs]


class TrainingProcess:
    """A child process whose merged stdout/stderr lines can be read without blocking."""

    def __init__(self, command: Sequence[str], env: Optional[dict] = None, cwd: Optional[str] = None):
        environment = dict(os.environ if env is None else env)
        environment["PYTHONUNBUFFERED"] = "1"  # lines arrive as they are printed
        environment.setdefault("PYTHONIOENCODING", "utf-8")
        kwargs = {}
        if os.name == "nt":  # no console window pops up on Windows
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        self.command = list(command)
        self.stopRequested = False
        self._lines = queue.Queue()  # type: queue.Queue
        self._process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=environment, cwd=cwd, universal_newlines=True, encoding="utf-8", errors="replace",
            bufsize=1, **kwargs)
        self._reader = threading.Thread(target=self._read, name="palnet-train-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self._process.stdout
        for line in iter(stream.readline, ""):  # text mode: "\r" redraws also end a line
            self._lines.put(line.rstrip("\r\n"))
        stream.close()

    @property
    def pid(self) -> int:
        return self._process.pid

    def readLines(self) -> List[str]:
        """Every line printed since the last call (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._lines.get_nowait())
            except queue.Empty:
                return out

    def returncode(self) -> Optional[int]:
        """None while running; the exit status once the process ended and all output was read."""
        code = self._process.poll()
        if code is None or self._reader.is_alive():
            return None
        return code

    @property
    def running(self) -> bool:
        return self.returncode() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the process to end, then kill it if it does not within ``timeout`` seconds."""
        self.stopRequested = True
        if self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def wait(self, timeout: Optional[float] = None) -> int:
        code = self._process.wait(timeout)
        self._reader.join(timeout)
        return code


def defaultPythonExecutable() -> str:
    """The Python that runs training: Slicer's ``PythonSlicer`` launcher when there is one."""
    import shutil
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
        raise RuntimeError("PythonSlicer was not found on the PATH; cannot start training in the background")
    return sys.executable
