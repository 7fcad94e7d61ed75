"""Training in a background process: the command line and the log parser.

Training runs ``palnet train`` in a separate Python process so Slicer's GUI never
freezes; the process itself is a :class:`PALNetLandmarksLib.background.ChildProcess`
(``qt.QProcess``, read from a timer). Nothing here imports Slicer or Qt.
"""
import os
import re
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
