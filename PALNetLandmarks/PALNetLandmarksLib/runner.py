"""The child process that predicts for the Slicer module, so that Slicer keeps painting meanwhile.

The module starts it with Slicer's own Python (``PythonSlicer``) through a ``qt.QProcess``
(see :mod:`PALNetLandmarksLib.background`). It talks back with one JSON object per stdout
line, each prefixed with ``palnet.progress.EVENT_PREFIX`` (other lines are plain log text)::

    {"event": "stage", "stage": "alignment", "fraction": 0.1}     predict: each pipeline stage, then measuring
    {"event": "scan", "done": 3, "total": 9, "scan": "a", "error": null}   batch: after each scan
    {"event": "done"}                                              the result file is written
    {"event": "error", "message": "scan.vtp: ..."}                 one line; exit status 2
    {"event": "cancelled"}                                         exit status 3

Cancel: the module creates the file given as ``--cancel``. Prediction checks it at each
stage; a batch is interrupted at once (a watcher thread raises KeyboardInterrupt in the
main thread, so ``predict_files`` kills its workers and still writes the summary).
Nothing here imports Slicer or Qt.
"""
import argparse
import json
import os
import signal
import sys
import threading
import time
from typing import List, Optional

from palnet.options import DEFAULT_SAMPLINGS, DEFAULT_SNAP
from palnet.progress import event_line, parse_event as parseEvent  # noqa: F401 (the module reads events with it)

EXIT_ERROR, EXIT_CANCELLED = 2, 3

# Runs this module from the module folder, whatever else is on the path: ``palnet`` then
# resolves to the module's own copy, never to another package of that name.
BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
             "from PALNetLandmarksLib.runner import main; sys.exit(main(sys.argv[1:]))")


class Cancelled(Exception):
    """The module asked the run to stop."""


def emit(event: str, **fields) -> None:
    sys.stdout.write(event_line(event, **fields) + "\n")
    sys.stdout.flush()


def command(python: str, moduleDir: str, args: List[str]) -> List[str]:
    """The argument list that runs this module's ``main(args)`` with ``python``, unbuffered."""
    return [python, "-u", "-c", BOOTSTRAP, os.fspath(moduleDir)] + [str(a) for a in args]


def readPolyDataMesh(path: str, name: str):
    """A VTK XML polydata file (the model node's world surface) as the Mesh the module would build."""
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader
    from palnet.errors import PalnetError
    from palnet.mesh_io import polydata_to_mesh
    reader = vtkXMLPolyDataReader()
    reader.SetFileName(path)
    reader.Update()
    polydata = reader.GetOutput()
    if polydata is None or polydata.GetNumberOfPoints() == 0:
        raise PalnetError("the exported surface has no points", name)
    # The same conversion as PALNetLandmarksLib.mrml.meshFromModelNode (in-process Apply).
    return polydata_to_mesh(polydata, units="mm", source=name, merge_identical_points=True)


def _checkCancel(cancelPath: Optional[str]) -> None:
    if cancelPath and os.path.exists(cancelPath):
        raise Cancelled()


def predictCommand(args) -> int:
    from palnet.modelfile import load_model
    from palnet.pipeline import predict
    cancel = args.cancel
    emit("stage", stage="loading", fraction=0.0)
    model = load_model(args.model)
    _checkCancel(cancel)
    mesh = readPolyDataMesh(args.mesh, args.name)

    def progress(stage: str, fraction: float) -> None:
        _checkCancel(cancel)
        emit("stage", stage=stage, fraction=float(fraction))

    start = time.perf_counter()
    prediction = predict(mesh, model, snap=args.snap, units=args.units, progress=progress, samplings=args.samplings)
    landmarks = prediction.landmarks
    extent = mesh.vertices.max(axis=0) - mesh.vertices.min(axis=0)
    result = {
        "labels": list(landmarks.labels),
        "points": [[float(v) for v in p] for p in landmarks.points],
        "confidence": None if landmarks.confidence is None else [float(c) for c in landmarks.confidence],
        "status": prediction.status, "message": prediction.message, "units": prediction.units,
        "fit_rms_mm": float(prediction.fit_rms_mm), "seconds": time.perf_counter() - start,
        "missing": list(prediction.missing), "diagonal": float((extent ** 2).sum() ** 0.5),
        "protocol": model.metadata.get("protocol") or {},
    }
    emit("stage", stage="measuring", fraction=1.0)
    _checkCancel(cancel)
    result["measurements"], result["measurementsError"] = measurementRows(prediction, mesh)
    _writeJson(args.result, result)
    emit("done")
    return 0


def measurementRows(prediction, mesh):
    """(rows, None): palnet.measurements of the predicted landmarks, one dict per measurement
    (id, name, kind, value, units, se, z, landmarks); (None, None) where that module is
    missing; (None, message) when measuring failed (the landmarks are placed all the same)."""
    try:
        from palnet.measurements import measure
    except ImportError:
        return None, None
    from palnet.datatypes import Mesh
    try:
        surface = Mesh(mesh.vertices, mesh.triangles, units=prediction.units, source=mesh.source)
        found = measure(prediction.landmarks, mesh=surface)
    except Exception as exc:  # a measurement problem must not cost the user the landmarks
        return None, "measurements: {}: {}".format(type(exc).__name__, " ".join(str(exc).split()))

    def number(value):
        return None if value is None else float(value)
    return [{"id": m.id, "name": m.name, "kind": m.kind, "value": number(m.value), "units": m.units,
             "se": number(m.se), "z": number(m.z), "landmarks": list(m.landmarks)} for m in found], None


def batchCommand(args) -> int:
    from palnet.batch import predict_files
    from palnet.modelfile import load_model
    model = load_model(args.model)
    _watchCancel(args.cancel)

    def progress(done: int, total: int, scan: str, error: Optional[str] = None) -> None:
        emit("scan", done=done, total=total, scan=scan, error=error)

    rows = predict_files([args.input], args.output, model, fmt=args.format, snap=args.snap, units=args.units,
                         samplings=args.samplings,
                         overwrite=args.overwrite, progress=progress, isolate=True, rejected_hint=args.rejected_hint)
    _writeJson(args.result, [row.__dict__ for row in rows])
    # The batch's measurements table beside the summary (palnet predict --measure does the same).
    try:
        from palnet.batch import measure_outputs
        table, failures, note = measure_outputs(rows, args.output, args.overwrite)
        emit("measurements", table=str(table) if table else None, failures=list(failures), note=note)
    except Exception as exc:  # the landmarks are written whatever happens to the table
        emit("measurements", table=None, failures=["{}: {}".format(type(exc).__name__, exc)], note="")
    emit("done")
    return 0


def _watchCancel(cancelPath: Optional[str], interval: float = 0.1) -> None:
    """Interrupt the main thread as soon as the cancel file appears (the main thread may be waiting on workers)."""
    if not cancelPath:
        return
    # Cancel interrupts this process with SIGINT: it must raise KeyboardInterrupt even when the
    # process was started ignoring SIGINT (from a background shell, nohup, a service).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def watch() -> None:
        while not os.path.exists(cancelPath):
            time.sleep(interval)
        if os.name == "nt":
            import _thread
            _thread.interrupt_main()
        else:  # a real signal also wakes a main thread blocked on a lock
            os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=watch, name="palnet-cancel", daemon=True).start()


def _writeJson(path: str, value) -> None:
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="PALNetLandmarksLib.runner")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("predict", "batch"):
        s = sub.add_parser(name)
        s.add_argument("--model", required=True)
        s.add_argument("--snap", default=DEFAULT_SNAP)
        s.add_argument("--units", default="auto")
        s.add_argument("--samplings", type=int, default=DEFAULT_SAMPLINGS)
        s.add_argument("--result", required=True)
        s.add_argument("--cancel")
    pr = sub.choices["predict"]
    pr.add_argument("--mesh", required=True)
    pr.add_argument("--name", default="surface")
    b = sub.choices["batch"]
    b.add_argument("--input", required=True)
    b.add_argument("--output", required=True)
    b.add_argument("--format", default="mrk.json")
    b.add_argument("--overwrite", action="store_true")
    b.add_argument("--rejected-hint", default="")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    from palnet.errors import PalnetError
    try:
        return predictCommand(args) if args.command == "predict" else batchCommand(args)
    except (Cancelled, KeyboardInterrupt):
        emit("cancelled")
        return EXIT_CANCELLED
    except PalnetError as exc:
        emit("error", message=str(exc))
        return EXIT_ERROR
    except Exception as exc:  # anything else: one line for the panel, the traceback for the log
        import traceback
        traceback.print_exc(file=sys.stdout)
        emit("error", message="{}: {}".format(type(exc).__name__, " ".join(str(exc).split())))
        return EXIT_ERROR
