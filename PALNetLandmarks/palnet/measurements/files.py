"""Measuring landmark files: a cohort in, one CSV table out.

Each landmark file is read in the units it states; a scan (mesh) paired with it, in the same
frame and units as its landmark file (as ``palnet predict`` writes them), gives the surface arcs.
A file that cannot be read costs only its own row: its one-line message is returned with the
others, and the rest are measured. The table is never written over an existing file unless
asked (``overwrite``).

Wide table: one row per face, columns ``face, file``, then per measurement ``<id>``,
``<id>_se`` (and ``<id>_z`` with norms). Long table: one row per face and measurement,
columns LONG_COLUMNS. Empty cells are empty values (a missing landmark, no scan for an arc).
"""
import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

from ..errors import PalnetError
from ..landmark_io import atomic_write, landmark_stem, read_landmarks
from .compute import SAMPLES, Measurement, measure_many
from .definitions import Definitions, load_definitions
from .norms import as_norms

MEASUREMENTS_NAME = "palnet_measurements.csv"  # what ``palnet predict --measure`` writes in its output folder
LONG_COLUMNS = ("face", "file", "measurement", "name", "kind", "value", "units", "se", "z", "landmarks", "reference",
                "note")
MESH_BATCH = 8  # faces with a scan measured (their scans in memory) at once

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class FaceResult:
    """One landmark file's measurements, or why it has none (``error``, one line naming the file).
    ``warning``: measured, but something was wrong (e.g. its scan could not be read)."""

    face: str
    file: str
    scan: Optional[str] = None
    measurements: List[Measurement] = field(default_factory=list)
    error: str = ""
    warning: str = ""
    labels: Tuple[str, ...] = ()  # the landmark labels the file has


def find_landmark_inputs(inputs: Sequence[PathLike]) -> List[Path]:
    """Landmark files named directly or found below folders (recursively), each once, in order."""
    from ..mesh_io import find_landmark_files
    found = []  # type: List[Path]
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found.extend(f for f in find_landmark_files(p) if f.name != MEASUREMENTS_NAME)
        else:
            found.append(p)  # a missing or unreadable file gets its own message when read
    seen, unique = set(), []
    for p in found:
        key = os.path.normcase(os.path.abspath(str(p)))
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def pair_scans(files: Sequence[Path], scan: Optional[PathLike]) -> List[Optional[Path]]:
    """The scan of each landmark file: ``scan`` itself for a single file, or, for a folder of
    scans, the one with the same scan id (``S01.ply`` or ``S01/scan.ply`` for ``S01.mrk.json``)."""
    from ..mesh_io import MESH_EXTENSIONS, scan_id_for
    if scan is None:
        return [None] * len(files)
    s = Path(scan)
    if not s.exists():
        raise PalnetError("scan not found", s)
    if not s.is_dir():
        if len(files) != 1:
            raise PalnetError("one scan for {} landmark files: give a folder of scans instead (paired by scan "
                              "name)".format(len(files)), s)
        return [s]
    meshes = {}  # type: Dict[str, Path]
    for root, dirs, names in os.walk(str(s)):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            p = Path(root) / name
            if not name.startswith(".") and p.suffix.lower() in MESH_EXTENSIONS:
                meshes.setdefault(scan_id_for(p), p)
    return [meshes.get(scan_id_for(f)) for f in files]


def face_names(files: Sequence[Path]) -> List[str]:
    """A name per file for the table: its scan id, or, where two files share one, its path
    (without the landmark extension) below the folder they share."""
    from ..mesh_io import scan_id_for
    ids = [scan_id_for(f) for f in files]
    if len(set(ids)) == len(ids):
        return ids
    absolute = [os.path.abspath(str(f)) for f in files]
    try:
        base = os.path.commonpath([os.path.dirname(a) for a in absolute])
    except ValueError:
        base = ""
    out = []
    for sid, a in zip(ids, absolute):
        if ids.count(sid) == 1 or not base:
            out.append(sid)
        else:
            rel = os.path.relpath(os.path.join(os.path.dirname(a), landmark_stem(a)), base)
            out.append(rel.replace(os.sep, "/"))
    return out


def measure_files(files: Sequence[PathLike], scans: Optional[Sequence[Optional[PathLike]]] = None,
                  definitions: Optional[Definitions] = None, norms=None, group: Optional[str] = None,
                  samples: int = SAMPLES, seed: int = 0, default_sd: Optional[float] = None,
                  progress: Optional[Callable] = None) -> List[FaceResult]:
    """Measure each landmark file (with its scan, if any); one FaceResult per file, in order."""
    defs = definitions if definitions is not None else load_definitions()
    norm_table = as_norms(norms)
    if norm_table is not None:
        norm_table.for_group(group, defs)  # a bad group is one error before anything is read
    files = [Path(f) for f in files]
    scans = list(scans) if scans is not None else [None] * len(files)
    names = face_names(files)
    results = [FaceResult(n, str(f), None if s is None else str(s)) for n, f, s in zip(names, files, scans)]
    faces = {}  # type: Dict[int, object]
    for i, f in enumerate(files):
        try:
            faces[i] = read_landmarks(f)
            results[i].labels = tuple(faces[i].labels)
        except PalnetError as exc:
            results[i].error = str(exc)
        except (OSError, ValueError) as exc:
            results[i].error = "{}: cannot read: {}".format(f, exc)
    plain = [i for i in faces if scans[i] is None]
    with_scan = [i for i in faces if scans[i] is not None]
    done = len(files) - len(faces)  # the unreadable ones

    def run(indices: List[int], meshes: List) -> None:
        nonlocal done
        if not indices:
            return
        answers = measure_many([faces[i] for i in indices], defs, meshes, norm_table, samples, seed,
                               default_sd=default_sd, group=group)
        for i, ms in zip(indices, answers):
            results[i].measurements = ms
        done += len(indices)
        if progress:
            progress(done, len(files), results[indices[-1]].face, None)

    step = 500  # progress every few hundred plain faces
    for k in range(0, len(plain), step):
        run(plain[k:k + step], [None] * len(plain[k:k + step]))
    for k in range(0, len(with_scan), MESH_BATCH):
        chunk = with_scan[k:k + MESH_BATCH]
        run(chunk, [_read_scan(results[i], faces[i]) for i in chunk])
    return results


def _read_scan(result: FaceResult, landmarks):
    """The scan of a face in its landmark file's units, or None (the reason in ``result.warning``)."""
    from ..mesh_io import read_mesh
    try:
        return read_mesh(result.scan, units=landmarks.units)
    except PalnetError as exc:
        result.warning = "{} (arcs left empty)".format(exc)
    except (OSError, ValueError, MemoryError) as exc:
        result.warning = "{}: cannot read the scan: {} (arcs left empty)".format(result.scan, exc)
    return None


# ---------------------------------------------------------------- tables

def _cell(x: Optional[float]) -> str:
    return "" if x is None else "{:.4f}".format(x)


def table_text(results: Sequence[FaceResult], definitions: Definitions, long: bool = False,
               with_z: bool = False) -> str:
    """The CSV text of the faces that were measured (see the module's description)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    done = [r for r in results if not r.error]
    if long:
        w.writerow(LONG_COLUMNS)
        for r in done:
            for m in r.measurements:
                w.writerow([r.face, r.file, m.id, m.name, m.kind, _cell(m.value), m.units, _cell(m.se), _cell(m.z),
                            " ".join(m.landmarks), m.reference or "", m.note])
        return buf.getvalue()
    header = ["face", "file"]
    for m in definitions:
        header += [m.id, m.id + "_se"] + ([m.id + "_z"] if with_z else [])
    w.writerow(header)
    for r in done:
        row = [r.face, r.file]
        for m in r.measurements:
            row += [_cell(m.value), _cell(m.se)] + ([_cell(m.z)] if with_z else [])
        w.writerow(row)
    return buf.getvalue()


def write_table(results: Sequence[FaceResult], path: PathLike, definitions: Definitions, long: bool = False,
                with_z: bool = False, overwrite: bool = False) -> Path:
    """Write the table atomically; an existing file is kept (PalnetError) unless ``overwrite``."""
    path = Path(path)
    check_output(path, overwrite)
    text = table_text(results, definitions, long, with_z)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def check_output(path: PathLike, overwrite: bool) -> None:
    """A PalnetError, before any work, when the table could not or should not be written there."""
    path = Path(path)
    if path.is_dir():
        raise PalnetError("is a folder: give the name of the table to write (e.g. measurements.csv)", path)
    if path.exists() and not overwrite:
        raise PalnetError("exists; use --overwrite to replace it", path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise PalnetError("cannot write: folder {} does not exist".format(parent), path)


def summary_line(results: Sequence[FaceResult], definitions: Definitions) -> Tuple[int, int, int]:
    """(faces measured, faces failed, values per face on average)."""
    done = [r for r in results if not r.error]
    values = sum(sum(m.value is not None for m in r.measurements) for r in done)
    return len(done), len(results) - len(done), int(round(values / len(done))) if done else 0
