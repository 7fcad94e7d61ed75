"""Training in a background process: the command line and the reader of its epoch events.

Training runs ``palnet train --events`` in a separate Python process so Slicer's GUI never
freezes; the process itself is a :class:`PALNetLandmarksLib.background.ChildProcess`
(``qt.QProcess``, read from a timer). After each epoch's log line the process prints that epoch
as an event line (``@palnet {"event": "epoch", ...}``, see palnet.progress), which is what
:func:`parseEpochLine` reads. Nothing here imports Slicer or Qt.
"""
import os
import re
from typing import Dict, List, Optional, Sequence

from palnet.progress import parse_event

EPOCH_COLUMNS = ("epoch", "loss", "val_pointwise_mm", "val_distancewise_mm", "lr", "seconds")

# Runs palnet's command line from the module folder, whatever else is on the path.
_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
              "from palnet.cli import main; sys.exit(main(sys.argv[1:]))")


def parseEpochLine(line: str) -> Optional[Dict[str, float]]:
    """The numbers of one epoch event of ``palnet train --events``, or None for any other line
    (the human log lines included).

    Keys: EPOCH_COLUMNS plus ``best`` (True when the validation error improved and these
    weights are kept).
    """
    event = parse_event(line or "")
    if event is None or event["event"] != "epoch":
        return None
    try:
        row = {"epoch": int(event["epoch"])}  # type: Dict[str, float]
        for key in EPOCH_COLUMNS[1:]:
            row[key] = float(event[key])
    except (KeyError, TypeError, ValueError):
        return None
    row["best"] = bool(event.get("best", False))
    return row


def parseErrorLine(line: str) -> Optional[str]:
    """The message of a ``palnet <command>: error: ...`` line, or None."""
    m = re.match(r"^\s*palnet \w+: (?:error: )?(.*)$", line or "")
    if not m or not m.group(1).strip():
        return None
    return m.group(1).strip()


def trainingCommand(python: str, packageParentDir: str, datasetDir: str, outputModelPath: str,
                    epochs: Optional[int] = None, extraArgs: Sequence[str] = ()) -> List[str]:
    """The argument list that runs ``palnet train --events`` with ``python``, unbuffered.

    ``packageParentDir`` is the folder that holds the ``palnet`` package (the module folder).
    """
    command = [python, "-u", "-c", _BOOTSTRAP, os.fspath(packageParentDir), "train",
               os.path.abspath(os.fspath(datasetDir)), "-o", os.path.abspath(os.fspath(outputModelPath)), "--events"]
    if epochs is not None:
        command += ["--epochs", str(int(epochs))]
    return command + [str(a) for a in extraArgs]
