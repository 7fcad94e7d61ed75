"""Predicting many scans: one output file each, a summary CSV, and no stop at a bad scan.

Outputs are written atomically (temporary file, then rename) and an existing
output is kept unless ``overwrite`` is set, so re-running a folder after
fixing a few scans only does those.
"""
import csv
import io as _io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional

import numpy as np

from .errors import PalnetError
from .mesh_io import MESH_EXTENSIONS, NOT_LANDMARK_FILES, read_mesh, scan_id_for
from .landmark_io import LANDMARK_FORMATS, atomic_write, write_landmarks
from .modelfile import Model
from .pipeline import Prediction, predict

SUMMARY_NAME = "palnet_summary.csv"
assert SUMMARY_NAME in NOT_LANDMARK_FILES  # evaluate must not take it for a landmark file
SUMMARY_FIELDS = ("scan", "input", "output", "status", "fit_rms_mm", "template_coverage", "mean_confidence",
                  "spikes_removed", "fragment_vertices_removed", "units", "seconds", "message")


@dataclass
class BatchItem:
    scan: str
    input: str
    output: str = ""
    status: str = ""
    fit_rms_mm: float = float("nan")
    template_coverage: float = float("nan")  # fraction of the face template within 5 mm of the scan
    mean_confidence: float = float("nan")
    spikes_removed: int = 0
    fragment_vertices_removed: int = 0  # vertices of loose pieces apart from the scan
    units: str = ""
    seconds: float = 0.0
    message: str = ""


def find_meshes(inputs: Iterable[str]) -> List[Path]:
    """Mesh files named directly or found (recursively) in folders, in a stable order."""
    found: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in MESH_EXTENSIONS))
        else:
            found.append(p)  # a missing or odd file is reported for that item, not here
    return found


def output_path(out_dir: Path, mesh_path: Path, fmt: str) -> Path:
    return Path(out_dir) / "{}.{}".format(scan_id_for(mesh_path), fmt)


def predict_one(mesh_path: Path, out_file: Path, model: Model, fmt: str, snap: str, units: str,
                png: Optional[Path] = None) -> Prediction:
    mesh = read_mesh(mesh_path)
    pred = predict(mesh, model, snap=snap, units=units)
    write_landmarks(pred.landmarks, out_file, fmt)
    if png is not None:
        from .render import render_landmarks
        rot = pred.alignment.rotation  # canonical axes (y up, z front) seen in the scan's frame
        render_landmarks(mesh, pred.landmarks, png, views=("front", "side"), up=rot[1], front=rot[2],
                         title="{} ({})".format(mesh_path.name, pred.status))
    return pred


def predict_files(inputs: Iterable[str], out_dir, model: Model, fmt: str = "mrk.json", snap: str = "nearest",
                  units: str = "auto", overwrite: bool = False, png: Optional[str] = None,
                  progress: Optional[Callable] = None, jobs: int = 1) -> List[BatchItem]:
    """Predict every scan; returns one row per scan and writes the summary CSV into ``out_dir``.

    ``jobs`` > 1 predicts that many scans at once in worker processes; rows keep the input order.
    """
    if fmt not in LANDMARK_FORMATS:
        raise PalnetError("unknown output format {!r} (use {})".format(fmt, ", ".join(LANDMARK_FORMATS)))
    meshes = find_meshes(inputs)
    if not meshes:
        raise PalnetError("no mesh files ({}) found".format(" ".join(MESH_EXTENSIONS)), ", ".join(map(str, inputs)))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = []
    for mesh_path in meshes:
        picture = None
        if png:
            picture = Path(png) if len(meshes) == 1 else Path(png).with_name(
                "{}_{}.png".format(Path(png).stem, scan_id_for(mesh_path)))
        tasks.append((mesh_path, output_path(out_dir, mesh_path, fmt), fmt, snap, units, overwrite, picture))
    jobs = max(1, min(int(jobs or 1), len(tasks)))
    done: dict = {}  # task index -> row

    def record(i: int, row: BatchItem) -> None:
        done[i] = row
        if progress:
            progress(len(done), len(tasks), row.scan, row.message if row.status == "error" else None)

    try:
        if jobs > 1:
            _predict_parallel(tasks, model, jobs, record)
        else:
            for i, task in enumerate(tasks):
                record(i, _predict_item(model, *task))
    finally:  # the summary lists what was done, even after an interruption
        rows = [done[i] for i in sorted(done)]
        write_summary(rows, out_dir / SUMMARY_NAME)
    return rows


def _predict_item(model: Model, mesh_path: Path, out_file: Path, fmt: str, snap: str, units: str,
                  overwrite: bool, picture: Optional[Path]) -> BatchItem:
    """One scan of a batch; every failure becomes the row's status and message."""
    row = BatchItem(scan=scan_id_for(mesh_path), input=str(mesh_path), output=str(out_file))
    t0 = time.perf_counter()
    if out_file.exists() and not overwrite:
        row.status, row.message = "skipped", "output exists (use --overwrite to replace it)"
    else:
        try:
            pred = predict_one(mesh_path, out_file, model, fmt, snap, units, picture)
            row.status, row.fit_rms_mm, row.units = pred.status, pred.fit_rms_mm, pred.units
            row.template_coverage = pred.alignment.inlier_fraction
            if pred.landmarks.confidence is not None:
                row.mean_confidence = float(np.mean(pred.landmarks.confidence))
            row.spikes_removed, row.message = pred.spikes_removed, pred.message
            row.fragment_vertices_removed = pred.fragments_removed
        except PalnetError as exc:
            row.status, row.message = "error", str(exc)
        except MemoryError:
            row.status, row.message = "error", "{}: not enough memory for this scan".format(mesh_path)
        except Exception as exc:  # a batch never dies on one scan; the row says what happened
            row.status, row.message = "error", "{}: {}: {}".format(mesh_path, type(exc).__name__, exc)
    row.seconds = time.perf_counter() - t0
    return row


CRASHED = "the program crashed while reading or predicting this file (damaged file?)"


def _predict_parallel(tasks: list, model: Model, jobs: int, record: Callable) -> None:
    """Run tasks in ``jobs`` worker processes; a worker that dies (a reader crashing on a
    damaged file) costs only its own scan: the scans it may have held are retried one
    by one in fresh processes, and the one that crashes again is reported."""
    import multiprocessing as mp
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool
    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")

    def executor(n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(n, mp_context=ctx, initializer=_set_worker_model, initargs=(model,))

    queue, suspects = list(range(len(tasks))), []
    while queue:
        ex = executor(jobs)
        running: dict = {}
        try:
            while queue or running:
                while queue and len(running) < 2 * jobs:
                    i = queue.pop(0)
                    running[ex.submit(_worker_item, tasks[i])] = i
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    row = fut.result()  # raises BrokenProcessPool when a worker died
                    record(running.pop(fut), row)
        except BrokenProcessPool:
            for fut, i in sorted(running.items(), key=lambda item: item[1]):
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    record(i, fut.result())  # finished before the crash: not run again
                else:
                    suspects.append(i)
        finally:
            ex.shutdown(wait=True)
        for i in suspects:  # each alone: only the culprit fails again
            solo = executor(1)
            try:
                record(i, solo.submit(_worker_item, tasks[i]).result())
            except BrokenProcessPool:
                mesh_path, out_file = tasks[i][0], tasks[i][1]
                record(i, BatchItem(scan=scan_id_for(mesh_path), input=str(mesh_path), output=str(out_file),
                                    status="error", message="{}: {}".format(mesh_path, CRASHED)))
            finally:
                solo.shutdown(wait=True)
        suspects = []


_WORKER_MODEL: Optional[Model] = None


def _set_worker_model(model: Model) -> None:
    global _WORKER_MODEL
    _WORKER_MODEL = model


def _worker_item(task) -> BatchItem:
    return _predict_item(_WORKER_MODEL, *task)


def _number(x: float) -> str:
    return "" if not np.isfinite(x) else "{:.3f}".format(x)


def write_summary(rows: List[BatchItem], path: Path) -> None:
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SUMMARY_FIELDS)
    for r in rows:
        w.writerow([r.scan, r.input, r.output, r.status, _number(r.fit_rms_mm), _number(r.template_coverage),
                    _number(r.mean_confidence), r.spikes_removed, r.fragment_vertices_removed, r.units,
                    "{:.3f}".format(r.seconds), r.message])
    text = buf.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
