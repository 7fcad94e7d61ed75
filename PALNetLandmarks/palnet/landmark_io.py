"""Landmark files: Slicer's .mrk.json and .fcsv, a plain .csv and PAL-Net's .txt.

Coordinates in every landmark file are in the frame and units of the mesh file
they belong to, which 3D Slicer reads as LPS. Files are written in LPS; files
that say they are RAS are converted to LPS when read.

Every file states its length unit: ``"coordinateUnits"`` in .mrk.json (as
Slicer writes it), a ``# CoordinateUnits = cm`` comment line in .fcsv and .txt,
a ``units`` column in .csv. Readers honour it (mm, cm, m; Slicer's um is
converted to mm) and refuse any other value; a file that states none is in mm,
as Slicer assumes.

Confidence travels in the control point description for the Slicer formats:
``describe("Soft tissue nasion", 0.87)`` gives ``"Soft tissue nasion;
confidence 0.87"`` and reading splits it back into the description
(``"Soft tissue nasion"``) and ``Landmarks.confidence``. The .csv format has
``confidence`` and ``description`` columns instead; .txt keeps labels and
points only.

A landmark the scan does not show (a cut, a hole: see pipeline.missing_landmarks) has no
position: NaN coordinates in ``Landmarks.points``. Each format says so in its own way, and
reading gives NaN back: in .mrk.json the control point has ``"positionStatus": "missing"``
(Slicer's own state: the point is listed, unplaced); .fcsv has no such state, so the row is
left out and a ``# Missing = label, label`` comment line names it (Slicer skips the line);
.csv leaves x, y and z empty; .txt writes ``label<TAB>missing``. Control points that are
``"undefined"`` (not placed yet) are skipped, as before.
"""
import csv
import io as _stdio
import json
import math
import os
import re
import uuid
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import PalnetError
from .datatypes import UNITS_PER_MM, Landmarks

PathLike = Union[str, "os.PathLike[str]"]

from .options import LANDMARK_FORMATS  # noqa: E402  (re-exported)

MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/"
                  "Markups/Resources/Schema/markups-schema-v1.0.3.json#")
FCSV_COLUMNS = "id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"
# Identity orientation in RAS, written in LPS, as Slicer writes it.
_LPS_ORIENTATION = [-1.0, -0.0, -0.0, -0.0, -1.0, -0.0, 0.0, 0.0, 1.0]
_CONFIDENCE = re.compile(r"(?:^|[;,]\s*|\s)confidence\s*[:=]?\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$",
                         re.IGNORECASE)
_TXT_POINT = re.compile(r"^(.*?)\s*\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*,\s*([^,()]+?)\s*\)\s*$")
_UNITS_COMMENT = re.compile(r"^#\s*coordinateunits\s*[=:]\s*(.*?)\s*$", re.IGNORECASE)
# Units a file may state -> (the units palnet keeps, factor applied to the numbers). Slicer's
# schema allows um besides mm; palnet has no um scans, so such points are taken to mm.
FILE_UNITS = {"mm": ("mm", 1.0), "cm": ("cm", 1.0), "m": ("m", 1.0), "um": ("mm", 0.001)}


# ---------------------------------------------------------------- helpers

def describe(name: str, confidence: Optional[float] = None) -> str:
    """Description text for a control point: ``"Full name; confidence 0.87"``."""
    name = " ".join(str(name or "").split())
    if confidence is None or not math.isfinite(float(confidence)) or _CONFIDENCE.search(name):
        return name
    conf = "confidence {}".format(format(float(confidence), ".3g"))
    return "{}; {}".format(name, conf) if name else conf


def split_description(text: str) -> Tuple[str, Optional[float]]:
    """Inverse of :func:`describe`: ``(name, confidence or None)``."""
    text = str(text or "").strip()
    m = _CONFIDENCE.search(text)
    if not m:
        return text, None
    return text[:m.start()].rstrip(" ;,"), float(m.group(1))


def landmark_format(path: PathLike) -> str:
    """The landmark format of a file name (one of LANDMARK_FORMATS), or a PalnetError."""
    name = os.path.basename(os.fspath(path)).lower()
    if name.endswith(".mrk.json") or name.endswith(".json"):
        return "mrk.json"
    for fmt in ("fcsv", "csv", "txt"):
        if name.endswith("." + fmt):
            return fmt
    raise PalnetError("unknown landmark file type (use .mrk.json, .fcsv, .csv or .txt)", path)


def landmark_stem(path: PathLike) -> str:
    """The file name without its landmark extension (``S01.mrk.json`` -> ``S01``)."""
    name = os.path.basename(os.fspath(path))
    for ext in (".mrk.json", ".json", ".fcsv", ".csv", ".txt"):
        if name.lower().endswith(ext):
            return name[:-len(ext)]
    return os.path.splitext(name)[0]


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a new file beside ``path``, then move it over ``path``.

    A crash or error leaves the old file (if any) untouched, never half a file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise PalnetError("cannot write: folder {} does not exist".format(folder), path)
    tmp = os.path.join(folder, _temporary_name(os.path.basename(path)))
    try:
        # os.open with 0o666 honours the umask, unlike tempfile's 0o600.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise PalnetError("cannot write: {}".format(e.strerror or e), path) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _temporary_name(base: str) -> str:
    """atomic_write's temporary file for ``base``: hidden, and never a landmark file's name,
    since a run killed while writing leaves it in a folder that is later searched for them."""
    tag = uuid.uuid4().hex[:8]
    try:
        landmark_format(base)
    except PalnetError:
        # Not a landmark file: keep its extension last, as a writer may choose its format from it.
        return ".{}.{}.tmp{}".format(base, tag, _suffix(base))
    return ".{}.{}.tmp".format(base, tag)  # landmark (and summary) writers write text whatever the name


def _suffix(name: str) -> str:
    lower = name.lower()
    return ".mrk.json" if lower.endswith(".mrk.json") else os.path.splitext(name)[1]


def _read_text(path: PathLike) -> str:
    if not os.path.exists(path):
        raise PalnetError("file not found", path)
    if os.path.isdir(path):
        raise PalnetError("is a folder, not a landmark file", path)
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError:
        raise PalnetError("not a text file (cannot decode as UTF-8)", path) from None
    except OSError as e:
        raise PalnetError("cannot read: {}".format(e.strerror or e), path) from None


def _stated_units(value, path: PathLike, where: str = "") -> Optional[str]:
    """The units a file states (a key of FILE_UNITS), None when it states none; anything else
    is refused rather than guessed, since a wrong guess scales every point by 10 or 1000."""
    if isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value) \
            and value[1] == "UCUM":
        value = value[0]  # Slicer's coded form: [code, "UCUM", meaning]
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and value.strip() in FILE_UNITS:
        return value.strip()
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise PalnetError("{}unknown coordinate units {} (palnet reads {})".format(
        where + ": " if where else "", shown, ", ".join(FILE_UNITS)), path)


class _UnitsSeen:
    """The one unit a text file states, however many times it states it."""

    def __init__(self, path: PathLike):
        self.path, self.units, self.where = path, None, ""

    def add(self, value, where: str) -> None:
        units = _stated_units(value, self.path, where)
        if units is None:
            return
        if self.units is not None and units != self.units:
            raise PalnetError("{}: units {!r} differ from {!r} stated at {}".format(
                where, units, self.units, self.where), self.path)
        if self.units is None:
            self.units, self.where = units, where


def _number(text: str, what: str, where: str, path: PathLike) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise PalnetError("{}: {} {!r} is not a number".format(where, what, text), path) from None


def _finish(labels: List[str], points: List[Sequence[float]], descriptions: List[str],
            confidence: List[Optional[float]], where: List[str], path: PathLike,
            stated: Optional[str], missing: Optional[List[bool]] = None) -> Landmarks:
    """Validate what a reader collected and build the Landmarks, in the units the file states.
    ``missing``: the points the file marks as missing (NaN, see the module notes)."""
    units, factor = FILE_UNITS[stated or "mm"]
    if not labels:
        raise PalnetError("contains no landmarks", path)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    gone = np.zeros(len(pts), bool) if missing is None else np.asarray(missing, bool)
    if gone.all():
        raise PalnetError("contains no landmarks with a position (all {} are missing)".format(len(pts)), path)
    unnamed = [i for i, lab in enumerate(labels) if not str(lab).strip()]
    if unnamed:
        raise PalnetError("{}: a landmark without a label".format(where[unnamed[0]]), path)
    bad = np.flatnonzero(~np.isfinite(pts).all(axis=1) & ~gone)
    if bad.size:
        i = int(bad[0])
        raise PalnetError("{}: landmark {!r} has a NaN or infinite coordinate".format(where[i], labels[i]), path)
    seen, dups = set(), []
    for lab in labels:
        if lab in seen and lab not in dups:
            dups.append(lab)
        seen.add(lab)
    if dups:
        raise PalnetError("duplicate landmark label(s): {}".format(", ".join(repr(d) for d in dups)), path)
    conf = None
    if any(c is not None for c in confidence):
        conf = np.array([np.nan if c is None else c for c in confidence], dtype=np.float64)
    desc = list(descriptions) if any(descriptions) else None
    return Landmarks(labels, pts * factor if factor != 1.0 else pts, conf, desc, units)


def _rows_for_writing(landmarks: Landmarks, path: PathLike):
    if landmarks.units not in UNITS_PER_MM:
        raise PalnetError("cannot write landmarks in unknown units {!r} (use {})".format(
            landmarks.units, ", ".join(UNITS_PER_MM)), path)
    pts = np.asarray(landmarks.points, dtype=np.float64)
    gone = np.isnan(pts).all(axis=1)  # missing: no position (see the module notes)
    bad = np.flatnonzero(~np.isfinite(pts).all(axis=1) & ~gone)
    if bad.size:
        raise PalnetError("cannot write landmark {!r}: NaN or infinite coordinate".format(
            landmarks.labels[int(bad[0])]), path)
    if gone.all():
        raise PalnetError("no landmark has a position (all {} are missing)".format(len(pts)), path)
    n = len(landmarks)
    descs = landmarks.descriptions if landmarks.descriptions is not None else [""] * n
    conf = landmarks.confidence if landmarks.confidence is not None else [None] * n
    return pts, list(descs), list(conf), gone


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _num(x: float) -> str:
    return repr(float(x))  # shortest text that reads back to the same double


# ---------------------------------------------------------------- readers

def _read_mrk_json(text: str, path: PathLike) -> Landmarks:
    try:
        doc = json.loads(text)
    except ValueError as e:
        line = getattr(e, "lineno", None)
        raise PalnetError("not valid JSON{}: {}".format(
            " (line {})".format(line) if line else "", getattr(e, "msg", e)), path) from None
    except RecursionError:  # the decoder recurses once per level of nesting
        raise PalnetError("not a Slicer markups file (JSON nested too deeply)", path) from None
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not isinstance(markups, list):
        raise PalnetError("not a Slicer markups file (no \"markups\" list)", path)
    fiducials = [m for m in markups if isinstance(m, dict) and m.get("type", "Fiducial") == "Fiducial"]
    if not fiducials:
        raise PalnetError("contains no point list (markups of type \"Fiducial\")", path)
    markup = fiducials[0]
    system = str(markup.get("coordinateSystem", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise PalnetError("unknown coordinateSystem {!r} (expected LPS or RAS)".format(system), path)
    stated = _stated_units(markup.get("coordinateUnits"), path, "coordinateUnits")
    cps = markup.get("controlPoints", [])
    if not isinstance(cps, list):
        raise PalnetError("\"controlPoints\" is not a list", path)
    labels, points, descs, confs, where, gone = [], [], [], [], [], []
    for i, cp in enumerate(cps):
        at = "control point {}".format(i + 1)
        if not isinstance(cp, dict):
            raise PalnetError("{} is not an object".format(at), path)
        status = str(cp.get("positionStatus", "defined")).lower()
        if status == "undefined":
            continue  # a point to be placed later carries no position
        if status == "missing":  # a point the scan does not show: listed, without a position
            points.append([math.nan] * 3)
            gone.append(True)
        else:
            pos = cp.get("position")
            if not isinstance(pos, list) or len(pos) != 3:
                raise PalnetError("{}: \"position\" must be a list of 3 numbers".format(at), path)
            points.append([_number(v, "coordinate", at, path) for v in pos])
            gone.append(False)
        labels.append(str(cp.get("label", "")))
        desc, conf = split_description(cp.get("description", ""))
        descs.append(desc)
        confs.append(conf)
        where.append(at)
    lm = _finish(labels, points, descs, confs, where, path, stated, gone)
    if system == "RAS":
        lm.points[:, :2] *= -1.0
    return lm


def _read_fcsv(text: str, path: PathLike) -> Landmarks:
    columns = FCSV_COLUMNS.split(",")
    system = "LPS"  # what Slicer assumes when the header does not say
    stated = _UnitsSeen(path)
    labels, points, descs, confs, where, gone = [], [], [], [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            m = _UNITS_COMMENT.match(line.strip())
            if m:
                stated.add(m.group(1), "line {}".format(lineno))
                continue
            key, _, value = line[1:].partition("=")
            key, value = key.strip().lower(), value.strip()
            if key == "missing":  # landmarks the scan does not show: no row, no position
                for label in (x.strip() for x in next(csv.reader([value]), [])):
                    if label:
                        labels.append(label)
                        points.append([math.nan] * 3)
                        descs.append("")
                        confs.append(0.0)
                        where.append("line {}".format(lineno))
                        gone.append(True)
            elif key == "coordinatesystem":
                mapped = {"0": "RAS", "1": "LPS", "RAS": "RAS", "LPS": "LPS"}.get(value.upper())
                if mapped is None:
                    raise PalnetError("line {}: unknown CoordinateSystem {!r}".format(lineno, value), path)
                system = mapped
            elif key == "columns":
                columns = [c.strip() for c in value.split(",")]
            continue
        at = "line {}".format(lineno)
        row = next(csv.reader([line]))
        col = dict(zip(columns, row))
        undeclared = [k for k in ("x", "y", "z") if k not in columns]
        if undeclared:
            raise PalnetError("{}: the columns line names no {} column".format(at, "/".join(undeclared)), path)
        if not all(k in col for k in ("x", "y", "z")) or ("label" in columns and "label" not in col):
            raise PalnetError("{}: expected {} comma-separated values, found {} (is the line cut short?)".format(
                at, len(columns), len(row)), path)
        points.append([_number(col[k], k, at, path) for k in ("x", "y", "z")])
        labels.append(col.get("label", ""))
        desc, conf = split_description(col.get("desc", ""))
        descs.append(desc)
        confs.append(conf)
        where.append(at)
        gone.append(False)
    lm = _finish(labels, points, descs, confs, where, path, stated.units, gone)
    if system == "RAS":
        lm.points[:, :2] *= -1.0
    return lm


def _read_csv(text: str, path: PathLike) -> Landmarks:
    stated = _UnitsSeen(path)
    rows = []
    for n, r in enumerate(csv.reader(_stdio.StringIO(text)), 1):
        if not r or not any(c.strip() for c in r):
            continue
        if r[0].lstrip().startswith("#"):
            m = _UNITS_COMMENT.match(",".join(r).strip())
            if m:
                stated.add(m.group(1), "line {}".format(n))
            continue
        rows.append((n, r))
    columns = ["label", "x", "y", "z", "confidence", "description"]
    if rows and {"x", "y", "z"} <= {c.strip().lower() for c in rows[0][1]}:
        columns = [c.strip().lower() for c in rows[0][1]]
        columns = ["label" if c in ("name", "landmark") else c for c in columns]
        rows = rows[1:]
    labels, points, descs, confs, where, gone = [], [], [], [], [], []
    for lineno, row in rows:
        at = "line {}".format(lineno)
        col = dict(zip(columns, (c.strip() for c in row)))
        if not all(k in col for k in ("label", "x", "y", "z")):
            raise PalnetError("{}: expected label,x,y,z, found {} value(s)".format(at, len(row)), path)
        empty = not (col["x"] or col["y"] or col["z"])  # a landmark the scan does not show
        points.append([math.nan] * 3 if empty else [_number(col[k], k, at, path) for k in ("x", "y", "z")])
        gone.append(empty)
        labels.append(col["label"])
        conf = col.get("confidence", "")
        confs.append(_number(conf, "confidence", at, path) if conf else None)
        descs.append(col.get("description", ""))
        stated.add(col.get("units"), at)
        where.append(at)
    return _finish(labels, points, descs, confs, where, path, stated.units, gone)


def _read_txt(text: str, path: PathLike) -> Landmarks:
    stated = _UnitsSeen(path)
    labels, points, where, gone = [], [], [], []
    first = True
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            m = _UNITS_COMMENT.match(stripped)
            if m:
                stated.add(m.group(1), "line {}".format(lineno))
            continue
        if not stripped:
            continue
        if first and stripped.lower().startswith("landmark name"):
            first = False
            continue
        first = False
        at = "line {}".format(lineno)
        m = _TXT_POINT.match(stripped)
        parts = stripped.split("\t") if "\t" in stripped else stripped.split()
        if not m and len(parts) >= 2 and parts[-1].lower() == "missing":  # no position
            labels.append(" ".join(parts[:-1]).strip())
            points.append([math.nan] * 3)
            where.append(at)
            gone.append(True)
            continue
        if m:
            name, xyz = m.group(1), m.group(2, 3, 4)
        else:  # also accept "name<TAB>x<TAB>y<TAB>z" / "name x y z"
            parts = stripped.split("\t") if "\t" in stripped else stripped.split()
            if len(parts) < 4:
                raise PalnetError("{}: expected 'name<TAB>(x, y, z)', found {!r}".format(at, stripped[:60]), path)
            name, xyz = " ".join(parts[:-3]), parts[-3:]
        points.append([_number(v, "coordinate", at, path) for v in xyz])
        labels.append(name.strip())
        where.append(at)
        gone.append(False)
    n = len(labels)
    return _finish(labels, points, [""] * n, [None] * n, where, path, stated.units, gone)


_READERS = {"mrk.json": _read_mrk_json, "fcsv": _read_fcsv, "csv": _read_csv, "txt": _read_txt}


def read_landmarks(path: PathLike, units: Optional[str] = None) -> Landmarks:
    """Read a landmark file (.mrk.json, .fcsv, .csv, .txt) into LPS coordinates.

    The points come in the units the file states (``Landmarks.units``; mm when it
    states none), or converted to ``units`` (mm, cm or m) when given.
    Slicer control points whose position is undefined or missing are skipped.
    """
    if units is not None and units not in UNITS_PER_MM:  # fail before reading
        raise PalnetError("unknown length unit {!r} asked for (use {})".format(units, ", ".join(UNITS_PER_MM)), path)
    fmt = landmark_format(path)
    lm = _READERS[fmt](_read_text(path), path)
    return lm if units is None or units == lm.units else lm.in_units(units)


# ---------------------------------------------------------------- writers

def _mrk_json_text(landmarks: Landmarks, path: PathLike) -> str:
    pts, descs, conf, gone = _rows_for_writing(landmarks, path)
    control_points = [{
        "id": str(i + 1),
        "label": landmarks.labels[i],
        "description": describe(descs[i], conf[i]),
        "associatedNodeID": "",
        "position": [0.0, 0.0, 0.0] if gone[i] else [float(v) for v in pts[i]],
        "orientation": list(_LPS_ORIENTATION),
        "selected": True,
        "locked": False,
        "visibility": True,
        "positionStatus": "missing" if gone[i] else "defined",
    } for i in range(len(landmarks))]
    doc = {
        "@schema": MARKUPS_SCHEMA,
        "markups": [{
            "type": "Fiducial",
            "coordinateSystem": "LPS",
            "coordinateUnits": landmarks.units,
            "locked": False,
            "fixedNumberOfControlPoints": False,
            "labelFormat": "%N-%d",
            "lastUsedControlPointNumber": len(control_points),
            "controlPoints": control_points,
            "measurements": [],
            "display": {
                "visibility": True, "opacity": 1.0,
                "color": [0.4, 1.0, 1.0], "selectedColor": [1.0, 0.5, 0.5], "activeColor": [0.4, 1.0, 0.0],
                "propertiesLabelVisibility": False, "pointLabelsVisibility": True, "textScale": 3.0,
                "glyphType": "Sphere3D", "glyphScale": 3.0, "glyphSize": 5.0, "useGlyphScale": True,
                "sliceProjection": False, "snapMode": "toVisibleSurface",
            },
        }],
    }
    text = json.dumps(doc, indent=4, ensure_ascii=False, allow_nan=False)
    # Short lists of numbers on one line, as Slicer writes them.
    return re.sub(r"\[\s+([-+0-9.eE,\s]+?)\s+\]",
                  lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text) + "\n"


def _fcsv_text(landmarks: Landmarks, path: PathLike) -> str:
    pts, descs, conf, gone = _rows_for_writing(landmarks, path)
    out = _stdio.StringIO()
    out.write("# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n")
    # Slicer skips comment lines it does not know; palnet reads these back.
    out.write("# CoordinateUnits = {}\n".format(landmarks.units))
    if gone.any():
        line = _stdio.StringIO()
        csv.writer(line, lineterminator="").writerow([_one_line(landmarks.labels[i]) for i in np.flatnonzero(gone)])
        out.write("# Missing = {}\n".format(line.getvalue()))
    out.write("# columns = {}\n".format(FCSV_COLUMNS))
    writer = csv.writer(out, lineterminator="\n")
    for i, label in enumerate(landmarks.labels):
        if gone[i]:
            continue
        writer.writerow([str(i + 1)] + [_num(v) for v in pts[i]] + ["0", "0", "0", "1", "1", "1", "0",
                        _one_line(label), describe(descs[i], conf[i]), ""])
    return out.getvalue()


def _csv_text(landmarks: Landmarks, path: PathLike) -> str:
    pts, descs, conf, gone = _rows_for_writing(landmarks, path)
    has_conf = landmarks.confidence is not None
    has_desc = landmarks.descriptions is not None
    out = _stdio.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    # A column rather than a comment line: spreadsheets and CSV readers keep it with the rows.
    writer.writerow(["label", "x", "y", "z"] + (["confidence"] if has_conf else [])
                    + (["description"] if has_desc else []) + ["units"])
    for i, label in enumerate(landmarks.labels):
        row = [label] + (["", "", ""] if gone[i] else [_num(v) for v in pts[i]])
        if has_conf:
            row.append(_num(conf[i]) if conf[i] is not None and math.isfinite(conf[i]) else "")
        if has_desc:
            row.append(_one_line(descs[i]))
        writer.writerow(row + [landmarks.units])
    return out.getvalue()


def _txt_text(landmarks: Landmarks, path: PathLike) -> str:
    pts, _, _, gone = _rows_for_writing(landmarks, path)
    lines = ["# CoordinateUnits = {}".format(landmarks.units)]
    lines += ["{}\tmissing".format(_one_line(label)) if gone[i] else
              "{}\t({}, {}, {})".format(_one_line(label), *(_num(v) for v in pts[i]))
              for i, label in enumerate(landmarks.labels)]
    return "\n".join(lines) + "\n"


_WRITERS = {"mrk.json": _mrk_json_text, "fcsv": _fcsv_text, "csv": _csv_text, "txt": _txt_text}


def write_landmarks(landmarks: Landmarks, path: PathLike, fmt: Optional[str] = None) -> Path:
    """Write landmarks (LPS, the mesh file's frame) atomically; ``fmt`` defaults to the extension.

    Numbers are written as they are, and the file states ``landmarks.units``
    (see the module notes). Returns the path written.
    """
    if fmt is None:
        fmt = landmark_format(path)
    fmt = fmt.lower().lstrip(".")
    if fmt == "json":
        fmt = "mrk.json"
    if fmt not in _WRITERS:
        raise PalnetError("unknown landmark format {!r} (use {})".format(fmt, ", ".join(LANDMARK_FORMATS)), path)
    if len(landmarks) == 0:
        raise PalnetError("no landmarks to write", path)
    text = _WRITERS[fmt](landmarks, path)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)

    atomic_write(path, write)
    return Path(path)


# ---------------------------------------------------------------- checks

def _short_list(items: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (" (+{} more)".format(len(items) - limit) if len(items) > limit else "")


def check_labels(landmarks: Landmarks, expected_labels: Sequence[str], path: Optional[PathLike] = None,
                 allow_extra: bool = False) -> Landmarks:
    """The landmarks reordered to ``expected_labels``; missing or unknown labels are an error."""
    expected = list(expected_labels)
    have = set(landmarks.labels)
    missing = [lab for lab in expected if lab not in have]
    wanted = set(expected)
    unknown = [] if allow_extra else [lab for lab in landmarks.labels if lab not in wanted]
    if missing or unknown:
        parts = []
        if missing:
            parts.append("missing landmark(s) {}".format(_short_list(missing)))
        if unknown:
            parts.append("unknown landmark(s) {}".format(_short_list(unknown)))
        raise PalnetError("; ".join(parts) + " (expected {} labels)".format(len(expected)), path)
    return landmarks.select(expected, None if path is None else os.fspath(path))
