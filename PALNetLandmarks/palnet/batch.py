"""Predicting many scans: one output file each, a summary CSV, and no stop at a bad scan.

Nothing the user had is lost or replaced without ``overwrite``: outputs are written
atomically (temporary file, then rename) and an existing landmark file or picture is kept,
so re-running a folder after fixing a few scans only does those; every run adds its rows
to the summary after the earlier runs' rows; the outputs mirror the inputs' folders, so
two scans never share an output; and a lock file (palnet.folderlock) keeps a second run
out of a folder that one is writing into. Each scan is predicted in a worker process, so a
reader that crashes on a damaged file costs only that scan, and the workers end with the run.
"""
import csv
import io as _io
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Set

import numpy as np

from .arbitrate import BOTH, REGISTRATION
from .errors import PalnetError
from .folderlock import LOCK_NAME, release_lock, take_lock  # noqa: F401 (LOCK_NAME: callers know it from here)
from .mesh_io import MESH_EXTENSIONS, NOT_LANDMARK_FILES, read_mesh, scan_id_for
from .landmark_io import LANDMARK_FORMATS, atomic_write, write_landmarks
from .modelfile import Model
from .options import DEFAULT_SAMPLINGS, DEFAULT_SNAP
from .pipeline import Prediction, predict
from .status import ERROR, NOT_A_FACE, NOT_RUN, SKIPPED

log = logging.getLogger(__name__)

SUMMARY_NAME = "palnet_summary.csv"
assert SUMMARY_NAME in NOT_LANDMARK_FILES  # evaluate must not take it for a landmark file
SUMMARY_FIELDS = ("run", "scan", "input", "output", "status", "fit_rms_mm", "template_coverage", "mean_confidence",
                  "missing_landmarks", "from_registration", "spikes_removed", "fragment_vertices_removed", "units",
                  "seconds", "message")

# What a row of a scan that is not a face says its user can do; a caller without the
# command line's options (the Slicer module) gives its own.
KEEP_REJECTED_HINT = "--keep-rejected writes it"


@dataclass
class BatchItem:
    scan: str
    input: str
    output: str = ""  # empty for a scan that is not a face and so got no landmark file
    status: str = ""
    fit_rms_mm: float = float("nan")
    template_coverage: float = float("nan")  # fraction of the face template within 5 mm of the scan
    mean_confidence: float = float("nan")
    missing_landmarks: int = 0  # landmarks the scan does not show (written without a position)
    from_registration: int = 0  # landmarks moved towards the template registration (see palnet.arbitrate)
    spikes_removed: int = 0
    fragment_vertices_removed: int = 0  # vertices of loose pieces apart from the scan
    units: str = ""
    seconds: float = 0.0
    message: str = ""
    run: str = ""  # when the run that made this row started; tells runs apart in the summary


def _meshes_below(folder: Path) -> List[Path]:
    """Mesh files below ``folder``, sorted, leaving out hidden files and folders: a killed
    write's temporary file, macOS's ``._face.ply`` resource forks, ``.git`` and the like are no scans."""
    found = []
    for root, dirs, files in os.walk(str(folder)):  # symbolic links to folders are not followed
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root) / f for f in files
                     if not f.startswith(".") and Path(f).suffix.lower() in MESH_EXTENSIONS)
    return sorted(found)


def find_meshes(inputs: Iterable[str]) -> List[Path]:
    """Mesh files named directly or found (recursively) in folders, in a stable order, each once."""
    found: List[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(_meshes_below(p))
        else:
            found.append(p)  # a missing or odd file is reported for that item, not here
    seen: Set[str] = set()
    unique = []
    for p in found:  # a file named and also inside a named folder is still one scan
        key = os.path.normcase(os.path.abspath(str(p)))
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def output_path(out_dir: Path, mesh_path: Path, fmt: str) -> Path:
    """Where a single scan's landmarks go: ``out_dir/<scan id>.<fmt>``."""
    return Path(out_dir) / "{}.{}".format(scan_id_for(mesh_path), fmt)


def output_paths(meshes: List[Path], inputs: Iterable[str], out_dir: Path, fmt: str) -> List[Path]:
    """One landmark file per mesh, mirroring the meshes' folders below the folder the inputs share.

    ``data/a/face.ply`` and ``data/b/face.ply`` (input ``data``) go to ``OUT/a/face.<fmt>`` and
    ``OUT/b/face.<fmt>``; a generic name takes its folder's name as before (``data/S01/scan.ply``
    -> ``OUT/S01.<fmt>``). Scans that would still share a file (``x.ply`` beside ``x.stl``) get
    their extension added, then a number, in input order, so no two scans ever share an output.
    """
    bases = []
    for item in inputs:
        p = Path(item)
        bases.append(os.path.abspath(str(p if p.is_dir() else p.parent)))
    try:
        common: Optional[str] = os.path.commonpath(bases) if bases else None
    except ValueError:  # different drives: nothing to mirror
        common = None
    taken: Set[str] = set()
    outputs = []
    for mesh in meshes:
        scan = scan_id_for(mesh)
        place = os.path.abspath(str(mesh.parent if scan == mesh.stem else mesh.parent.parent))
        rel = ""
        if common is not None:
            try:
                if os.path.commonpath([place, common]) == common:
                    rel = os.path.relpath(place, common)
            except ValueError:
                pass
        folder = Path(out_dir) / rel if rel not in ("", ".") else Path(out_dir)
        names = [scan, "{}_{}".format(scan, mesh.suffix.lstrip(".").lower())]
        out = next(p for p in (folder / "{}.{}".format(n, fmt) for n in _numbered(names)) if _key(p) not in taken)
        taken.add(_key(out))
        outputs.append(out)
    return outputs


def _numbered(names: List[str]):
    yield from names
    n = 2
    while True:
        yield "{}_{}".format(names[-1], n)
        n += 1


def _key(path: Path) -> str:
    return str(path).lower()  # some file systems ignore case: A.ply and a.ply would share a file


def predict_one(mesh_path: Path, out_file: Path, model: Model, fmt: str, snap: str, units: str,
                png: Optional[Path] = None, keep_rejected: bool = True,
                samplings: int = DEFAULT_SAMPLINGS) -> Prediction:
    """Read, predict and write one scan (and its picture); a scan that is not a face is
    written only with ``keep_rejected``. ``samplings``: see :func:`palnet.pipeline.predict`."""
    mesh = read_mesh(mesh_path)
    pred = predict(mesh, model, snap=snap, units=units, samplings=samplings)
    if pred.status == NOT_A_FACE and not keep_rejected:
        return pred
    Path(out_file).parent.mkdir(parents=True, exist_ok=True)
    write_landmarks(pred.landmarks, out_file, fmt)
    if png is not None:
        from .render import RenderOptions, render_landmarks
        rot = pred.alignment.rotation  # canonical axes (y up, z front) seen in the scan's frame
        options = RenderOptions(views=("front", "side"), up=rot[1], front=rot[2],
                                title="{} ({})".format(mesh_path.name, pred.status))
        Path(png).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(png, lambda tmp: render_landmarks(mesh, pred.landmarks, tmp, options))
    return pred


def predict_files(inputs: Iterable[str], out_dir, model: Model, fmt: str = "mrk.json", snap: str = DEFAULT_SNAP,
                  units: str = "auto", overwrite: bool = False, png: Optional[str] = None,
                  progress: Optional[Callable] = None, jobs: int = 1, keep_rejected: bool = False,
                  isolate: bool = True, rejected_hint: str = KEEP_REJECTED_HINT,
                  samplings: int = DEFAULT_SAMPLINGS) -> List[BatchItem]:
    """Predict every scan; returns one row per scan and adds them to the summary CSV in ``out_dir``.

    ``jobs`` scans are predicted at once, each in a worker process (``isolate``, the default,
    even for one job: a scan that crashes its process is then only that scan's error);
    ``isolate=False`` with one job predicts in this process, for hosts that cannot start
    workers. Rows keep the input order. A scan that is not a face gets no landmark file
    unless ``keep_rejected``, and its row's message then ends with ``rejected_hint``.
    Raises PalnetError, before predicting anything, when ``out_dir`` is a file or another
    run holds its lock. Interrupted (KeyboardInterrupt or any exception), the summary
    still gets a row per scan, ``not run`` for those not done.
    """
    if fmt not in LANDMARK_FORMATS:
        raise PalnetError("unknown output format {!r} (use {})".format(fmt, ", ".join(LANDMARK_FORMATS)))
    inputs = [str(i) for i in inputs]
    meshes = find_meshes(inputs)
    if not meshes:
        raise PalnetError("no mesh files ({}) found".format(" ".join(MESH_EXTENSIONS)), ", ".join(inputs))
    out_dir = _output_folder(out_dir)
    outputs = output_paths(meshes, inputs, out_dir, fmt)
    tasks = []
    for mesh_path, out_file in zip(meshes, outputs):
        picture = None
        if png:
            picture = Path(png) if len(meshes) == 1 else _picture_path(Path(png), out_file, out_dir, fmt)
        tasks.append((mesh_path, out_file, fmt, snap, units, overwrite, picture, keep_rejected, rejected_hint,
                      samplings))
    jobs = max(1, min(int(jobs or 1), len(tasks)))
    run = datetime.now().isoformat(sep=" ", timespec="milliseconds")
    done: Dict[int, BatchItem] = {}  # task index -> row

    def record(i: int, row: BatchItem) -> None:
        row.run = run
        done[i] = row
        if progress:
            progress(len(done), len(tasks), row.scan, row.message if row.status == ERROR else None)

    lock = take_lock(out_dir)
    try:
        if isolate or jobs > 1:
            _predict_parallel(tasks, model, jobs, record)
        else:
            for i, task in enumerate(tasks):
                record(i, _predict_item(model, *task))
    finally:  # the summary lists every scan, even after an interruption
        try:
            rows = [done[i] for i in sorted(done)]
            listed = [done.get(i) or BatchItem(scan=scan_id_for(t[0]), input=str(t[0]), status=NOT_RUN, run=run,
                                               message="the run was stopped before this scan was done")
                      for i, t in enumerate(tasks)]
            write_summary(listed, out_dir / SUMMARY_NAME, run)
        finally:
            release_lock(lock)
    return rows


def _picture_path(png: Path, out_file: Path, out_dir: Path, fmt: str) -> Path:
    """``--png pic.png`` for many scans: ``pic_<scan>.png``, in the output's sub-folder beside pic.png."""
    rel = out_file.relative_to(out_dir)
    return png.parent / rel.parent / "{}_{}.png".format(png.stem, rel.name[: -len(fmt) - 1])


def _output_folder(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PalnetError("is a file, not a folder: give a folder for the landmark files", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PalnetError("cannot create the output folder ({})".format(exc.strerror or exc), out) from None
    return out


def _predict_item(model: Model, mesh_path: Path, out_file: Path, fmt: str, snap: str, units: str,
                  overwrite: bool, picture: Optional[Path], keep_rejected: bool = False,
                  rejected_hint: str = KEEP_REJECTED_HINT, samplings: int = DEFAULT_SAMPLINGS) -> BatchItem:
    """One scan of a batch; every failure becomes the row's status and message."""
    row = BatchItem(scan=scan_id_for(mesh_path), input=str(mesh_path), output=str(out_file))
    t0 = time.perf_counter()
    notes = []
    if out_file.exists() and not overwrite:
        row.status, row.message = SKIPPED, "output exists (use --overwrite to replace it)"
    else:
        if picture is not None and picture.exists() and not overwrite:
            notes.append("picture {} exists, kept (use --overwrite to replace it)".format(picture))
            picture = None
        try:
            pred = predict_one(mesh_path, out_file, model, fmt, snap, units, picture, keep_rejected=keep_rejected,
                               samplings=samplings)
            row.status, row.fit_rms_mm, row.units = pred.status, pred.fit_rms_mm, pred.units
            row.template_coverage = pred.alignment.inlier_fraction
            if pred.landmarks.confidence is not None:
                row.mean_confidence = float(np.mean(pred.landmarks.confidence))
            row.spikes_removed, row.fragment_vertices_removed = pred.spikes_removed, pred.fragments_removed
            row.missing_landmarks = len(pred.missing)
            row.from_registration = sum(source in (REGISTRATION, BOTH) for source in pred.sources)
            if pred.message:
                notes.insert(0, pred.message)
            if pred.status == NOT_A_FACE and not keep_rejected:
                row.output = ""
                notes.append("no landmark file written ({})".format(rejected_hint) if rejected_hint
                             else "no landmark file written")
            row.message = "; ".join(notes)
        except PalnetError as exc:
            row.status, row.message = ERROR, str(exc)
        except MemoryError:
            row.status, row.message = ERROR, "{}: not enough memory for this scan".format(mesh_path)
        except Exception as exc:  # a batch never dies on one scan; the row says what happened
            row.status, row.message = ERROR, "{}: {}: {}".format(mesh_path, type(exc).__name__, exc)
    row.seconds = time.perf_counter() - t0
    return row


CRASHED = "the program crashed while reading or predicting this file (damaged file?)"


def _predict_parallel(tasks: list, model: Model, jobs: int, record: Callable) -> None:
    """Run tasks in ``jobs`` worker processes; a worker that dies (a reader crashing on a
    damaged file) costs only its own scan: the scans it may have held are retried one
    by one in fresh processes, and the one that crashes again is reported. Interrupted,
    the workers are killed at once: none goes on writing after the run has ended."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool
    ctx = mp.get_context("spawn" if os.name == "nt" else "fork")
    others = set(mp.active_children())  # not this batch's to stop

    def executor(n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(model, os.getpid()))

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
        except BaseException:
            _kill_workers(ex, others, [tasks[i] for i in running.values()])
            raise
        ex.shutdown(wait=True)
        for i in suspects:  # each alone: only the culprit fails again
            solo = executor(1)
            try:
                row = solo.submit(_worker_item, tasks[i]).result()
            except BrokenProcessPool:
                mesh_path, out_file = tasks[i][0], tasks[i][1]
                row = BatchItem(scan=scan_id_for(mesh_path), input=str(mesh_path), output=str(out_file), status=ERROR,
                                message="{}: {}".format(mesh_path, CRASHED))
            except BaseException:
                _kill_workers(solo, others, [tasks[i]])
                raise
            solo.shutdown(wait=True)
            record(i, row)
        suspects = []


def _kill_workers(ex, others: set, tasks: list) -> None:
    import multiprocessing as mp
    # A worker started just as the interruption came may not be in the executor's list yet;
    # left alive, it would keep the interpreter's exit waiting for it.
    processes = set((getattr(ex, "_processes", None) or {}).values()) | (set(mp.active_children()) - others)
    manager = getattr(ex, "_executor_manager_thread", None)
    for p in processes:
        p.kill()
    ex.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        p.join(5)
    if manager is not None:
        # Left running, it may close its pipes just as the interpreter's exit handler uses them.
        manager.join(5)
    for task in tasks:  # a worker killed while writing leaves its temporary file (landmark_io.atomic_write's)
        for target in (task[1], task[6]):
            if target is None or not target.parent.is_dir():
                continue
            prefix = ".{}.".format(target.name)
            for name in os.listdir(str(target.parent)):
                if name.startswith(prefix) and ".tmp" in name[len(prefix):]:
                    try:
                        os.remove(str(target.parent / name))
                    except OSError:
                        pass


_WORKER_MODEL: Optional[Model] = None


def _init_worker(model: Model, parent: int) -> None:
    """Set up a worker: the model, the parent's signals left to the parent, and an end
    with the parent however it ends (even ``kill -9``), instead of writing on unseen."""
    import signal
    import threading
    global _WORKER_MODEL
    _WORKER_MODEL = model
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the command line's handler, inherited through fork
    if os.name == "nt":
        return
    try:  # Linux: the kernel kills the worker as soon as the parent dies
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch_parent() -> None:  # elsewhere, and if the parent died before prctl: it is reparented
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch_parent, daemon=True).start()


def _worker_item(task) -> BatchItem:
    return _predict_item(_WORKER_MODEL, *task)


# ---------------------------------------------------------------- measurements of a batch

def measure_outputs(rows: List[BatchItem], out_dir, overwrite: bool = False, definitions=None,
                    progress: Optional[Callable] = None):
    """Measure the landmark files of a batch (``rows`` from :func:`predict_files`, skipped scans'
    kept files included), each with its scan for the arcs, into ``out_dir/palnet_measurements.csv``.

    An existing table is kept unless ``overwrite``. Returns ``(table path or None, one line per
    file that could not be measured, a line saying what was done)``."""
    from .measurements import load_definitions
    from .measurements.files import MEASUREMENTS_NAME, measure_files, summary_line, write_table
    out_dir = Path(out_dir)
    table = out_dir / MEASUREMENTS_NAME
    if table.exists() and not overwrite:
        return None, [], "measurements: {} exists, kept (use --overwrite to replace it)".format(table)
    done = [r for r in rows if r.output and r.status not in (ERROR, NOT_RUN) and Path(r.output).is_file()]
    if not done:
        return None, [], "measurements: no landmark file to measure"
    defs = definitions if definitions is not None else load_definitions()
    lock = take_lock(out_dir)
    try:
        results = measure_files([r.output for r in done], [r.input for r in done], defs, progress=progress)
        measured, _, values = summary_line(results, defs)
        if measured:
            write_table(results, table, defs, overwrite=True)
    finally:
        release_lock(lock)
    problems = [res.error or res.warning for res in results if res.error or res.warning]
    return (table if measured else None), problems, "measurements of {} scan(s) ({} of {} each on average) in {}".format(
        measured, values, len(defs), table if measured else "no table (nothing could be measured)")


# ---------------------------------------------------------------- the summary

def _number(x: float) -> str:
    return "" if not np.isfinite(x) else "{:.3f}".format(x)


def write_summary(rows: List[BatchItem], path: Path, run: str = "") -> None:
    """Add ``rows`` to the summary at ``path``, after the rows of earlier runs.

    An earlier summary without the ``run`` column (or with fewer columns) is carried
    over with those cells empty; a file in any other format is renamed to
    ``palnet_summary.csv.1`` (or ``.2``...) first, never overwritten.
    """
    earlier = _earlier_summary(Path(path))
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if not earlier:
        w.writerow(SUMMARY_FIELDS)
    for r in rows:
        w.writerow([run or r.run, r.scan, r.input, r.output, r.status, _number(r.fit_rms_mm),
                    _number(r.template_coverage), _number(r.mean_confidence), r.missing_landmarks, r.from_registration,
                    r.spikes_removed, r.fragment_vertices_removed, r.units, "{:.3f}".format(r.seconds), r.message])
    text = earlier + buf.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _earlier_summary(path: Path) -> str:
    """The rows already in ``path`` as text in the current format, header included ("" if none)."""
    if not path.is_file():
        return ""
    try:
        with open(path, "r", encoding="utf-8", newline="") as f:
            text = f.read()
    except OSError as exc:
        raise PalnetError("cannot read the summary of earlier runs ({})".format(exc.strerror or exc), path) \
            from None
    except UnicodeDecodeError:
        text = None
    if text is not None and not text.strip():
        return ""
    header = next(csv.reader(_io.StringIO(text)), []) if text is not None else []
    if header == list(SUMMARY_FIELDS):
        return text if text.endswith("\n") else text + "\n"
    if "scan" in header and set(header) <= set(SUMMARY_FIELDS):  # an earlier palnet's summary
        buf = _io.StringIO()
        w = csv.DictWriter(buf, SUMMARY_FIELDS, restval="", extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(csv.DictReader(_io.StringIO(text)))
        return buf.getvalue()
    n = 1
    while path.with_name("{}.{}".format(path.name, n)).exists():
        n += 1
    aside = path.with_name("{}.{}".format(path.name, n))
    try:
        os.replace(str(path), str(aside))
    except OSError as exc:
        raise PalnetError("cannot move aside a file that is not a palnet summary ({})".format(
            exc.strerror or exc), path) from None
    log.warning("%s is not a palnet summary: kept as %s, a new summary started", path, aside.name)
    return ""
