"""Measurements of faces: values, standard errors and z-scores, vectorised over faces and samples.

Every value comes from its definition directly: a distance is ``|b - a|``; a projected
distance ``(b - a) . axis`` on an axis of the face frame (below); an angle the angle at the
middle landmark; a ratio ``scale * numerator / denominator``; an arc the length along the scan's
surface (:mod:`.surface`); an asymmetry the root mean square of the landmarks' asymmetry
vectors (:mod:`.asymmetry`). Lengths are in mm whatever the units of the landmark file.

A measurement with a missing landmark (absent label or NaN coordinates) is empty (None),
never a number; its ``note`` says which landmark.

Face frame: x, the subject's left, is the sum of ``left - right`` over every pair of mirrored
landmarks the face has; y, up, is the mean of the definitions' ``frame.upper`` landmarks minus
the mean of ``frame.lower`` (those present), made perpendicular to x; z = x cross y points
forward, out of the face.

Standard error: each landmark's position is taken as uncertain by an isotropic 3D Gaussian
with SD ``s`` (mm, :func:`sd_from_confidence`); ``samples`` perturbed copies of the face
(NumPy's default generator, ``seed``; the same draws for every face with the same labels, so
a face measured alone or in a cohort gets the same numbers) are measured like the face, and
the SE is their standard deviation. An arc's SE is propagated to first order instead (its
sampled copies, used by a ratio of an arc, are drawn from that). Without an SD for its
landmarks a measurement's SE is None.
"""
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..datatypes import Landmarks, Mesh
from .asymmetry import asymmetry_magnitudes, mirror_index, rms
from .definitions import Definitions, MeasurementDefinition, load_definitions
from .norms import as_norms
from .surface import SurfaceGraph, arc_se

SAMPLES = 200
CHUNK_CONFIGS = 20000  # configurations measured at once (faces x (samples + 1)): about 25 MB of points
# A palnet confidence is the calibrated chance that the landmark is within this distance of the truth.
CONFIDENCE_RADIUS_MM = 2.0
CONFIDENCE_RANGE = (0.002, 0.999)  # confidences outside are taken as these: SD between about 10 and 0.5 mm


@dataclass
class Measurement:
    """One measurement of one face. ``value``, ``se`` and ``z`` are None when they cannot be
    had (a missing landmark, no scan for an arc, no confidence for the SE, no norm for z)."""

    id: str
    name: str
    kind: str
    value: Optional[float]
    units: str
    se: Optional[float] = None
    z: Optional[float] = None
    landmarks: Tuple[str, ...] = ()
    reference: Optional[str] = None
    group: str = ""
    note: str = ""


# ---------------------------------------------------------------- confidence -> positional SD

_TABLE = {}  # type: Dict[str, np.ndarray]


def _chance_table() -> Tuple[np.ndarray, np.ndarray]:
    """P(|e| <= r) for e ~ N(0, s^2 I_3), as a function of u = r / s (the Maxwell distribution)."""
    if not _TABLE:
        u = np.linspace(0.05, 12.0, 4000)
        erf = np.array([math.erf(x / math.sqrt(2.0)) for x in u])
        _TABLE["u"] = u
        _TABLE["p"] = erf - np.sqrt(2.0 / np.pi) * u * np.exp(-0.5 * u * u)
    return _TABLE["u"], _TABLE["p"]


def sd_from_confidence(confidence, radius_mm: float = CONFIDENCE_RADIUS_MM) -> np.ndarray:
    """Positional SD (mm, per axis) of landmarks whose confidence is the chance of lying within
    ``radius_mm`` of the truth, taking the error as an isotropic 3D Gaussian: the SD ``s`` for
    which that chance is the confidence. 0.5 -> 1.30 mm, 0.8 -> 0.93 mm, 0.95 -> 0.71 mm;
    confidences are clipped to CONFIDENCE_RANGE first (a confidence of 0, a landmark where the
    scan has no surface, gives about 10 mm). NaN stays NaN."""
    c = np.asarray(confidence, dtype=np.float64)
    u, p = _chance_table()
    clipped = np.clip(c, *CONFIDENCE_RANGE)
    sd = radius_mm / np.interp(np.where(np.isfinite(clipped), clipped, 0.5), p, u)
    return np.where(np.isfinite(c), sd, np.nan)


def landmark_sd(landmarks: Landmarks, sd=None, default_sd: Optional[float] = None) -> Optional[np.ndarray]:
    """Per-landmark SD in mm: ``sd`` if given (one number, a sequence in label order, or a
    {label: mm} dict), else from the file's confidence, else ``default_sd``, else None."""
    n = len(landmarks.labels)
    if sd is not None:
        if isinstance(sd, dict):
            return np.array([float(sd.get(lab, np.nan)) for lab in landmarks.labels])
        arr = np.asarray(sd, dtype=np.float64)
        return np.full(n, float(arr)) if arr.ndim == 0 else arr.reshape(n)
    if landmarks.confidence is not None and len(landmarks.confidence) == n:
        return sd_from_confidence(landmarks.confidence)
    if default_sd is not None:
        return np.full(n, float(default_sd))
    return None


# ---------------------------------------------------------------- the plan: indices per measurement

class _Plan:
    """What to compute, as indices into one list of labels shared by every face of a batch."""

    def __init__(self, defs: Definitions, labels: List[str], protocol):
        self.defs, self.labels = defs, labels
        self.index = {lab: i for i, lab in enumerate(labels)}
        self.mirror = mirror_index(labels, protocol)
        right = [i for i, lab in enumerate(labels) if self.mirror[i] >= 0 and self.mirror[i] != i
                 and _side(lab, protocol) == "right"]
        self.pairs = (np.array(right, dtype=np.int64), self.mirror[right].astype(np.int64))
        self.upper = np.array([self.index[x] for x in defs.frame_upper], dtype=np.int64)
        self.lower = np.array([self.index[x] for x in defs.frame_lower], dtype=np.int64)
        known = set(protocol.labels) if protocol is not None else set()
        paired = self.mirror >= 0
        self.summarised = {}  # type: Dict[str, Tuple[str, ...]]  asymmetry id -> its landmarks
        for m in defs:
            if m.kind != "asymmetry":
                continue
            if m.landmarks:
                chosen = list(m.landmarks)
            elif m.region is not None:
                chosen = [lab for lab in labels if lab in known and protocol.region_of(lab) == m.region]
            else:
                chosen = [lab for lab in labels if lab in known] if known else list(labels)
            chosen = [lab for lab in chosen if paired[self.index[lab]]]
            partners = [labels[self.mirror[self.index[lab]]] for lab in chosen]  # a missing one empties it too
            self.summarised[m.id] = tuple(dict.fromkeys(chosen + partners))
        self.order = _ratio_order(defs)
        self.used = [self.landmarks_of(m) for m in defs]  # per measurement, the labels it depends on
        self.column = {m.id: k for k, m in enumerate(defs)}

    def landmarks_of(self, m: MeasurementDefinition) -> Tuple[str, ...]:
        if m.kind == "asymmetry":
            return self.summarised[m.id]
        if m.kind == "ratio":
            out = {}  # type: Dict[str, None]
            for part in m.of:
                out.update((lab, None) for lab in self.landmarks_of(self.defs[part]))
            return tuple(out)
        return m.landmarks

    def idx(self, labels: Sequence[str]) -> np.ndarray:
        return np.array([self.index[x] for x in labels], dtype=np.int64)


def _side(label: str, protocol) -> str:
    from ..protocol import side_from_label
    if protocol is not None and label in protocol:
        return protocol.definition(label).side
    return side_from_label(label)


def _ratio_order(defs: Definitions) -> List[str]:
    """Ratio ids, each after the ratios it divides."""
    done, order = set(), []  # type: set, List[str]

    def visit(mid: str) -> None:
        for part in defs[mid].of:
            if defs[part].kind == "ratio" and part not in done:
                visit(part)
        if mid not in done:
            done.add(mid)
            order.append(mid)

    for m in defs:
        if m.kind == "ratio":
            visit(m.id)
    return order


def face_frame(landmarks: Landmarks, definitions: Optional[Definitions] = None, protocol=None) -> np.ndarray:
    """The face frame of ``landmarks`` (module description): a 3x3 array whose rows are the unit
    x (the subject's left), y (up) and z (forward) axes in the landmarks' own coordinates;
    NaN when the face lacks a mirrored pair or every upper or lower frame landmark."""
    defs = definitions if definitions is not None else load_definitions()
    labels = list(dict.fromkeys(list(landmarks.labels) + defs.labels))
    plan = _Plan(defs, labels, protocol if protocol is not None else _default_protocol_for(labels))
    points = np.full((1, len(labels), 3), np.nan)
    points[0, :len(landmarks.labels)] = landmarks.points
    return _frame_axes(points, plan)[0]


def _frame_axes(points: np.ndarray, plan: "_Plan") -> np.ndarray:
    """Axes (N, 3, 3) of stacked configurations (N, L, 3): rows x (left), y (up), z (forward);
    NaN where the face lacks a mirrored pair or all of the upper or lower frame landmarks."""
    r, l = plan.pairs
    diff = points[:, l] - points[:, r]
    ok = np.isfinite(diff).all(axis=2)
    x = np.where(ok[..., None], diff, 0.0).sum(axis=1)
    x[~ok.any(axis=1)] = np.nan
    y = _nanmean_rows(points[:, plan.upper]) - _nanmean_rows(points[:, plan.lower])
    x = _unit(x)
    y = _unit(y - x * np.einsum("ni,ni->n", y, x)[:, None])
    z = np.cross(x, y)
    return np.stack([x, y, z], axis=1)


def _nanmean_rows(p: np.ndarray) -> np.ndarray:
    ok = np.isfinite(p).all(axis=2)
    n = ok.sum(axis=1)
    s = np.where(ok[..., None], p, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n > 0)[:, None], s / np.maximum(n, 1)[:, None], np.nan)


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, v / n, np.nan)


def _values(points: np.ndarray, plan: _Plan, arcs: Optional[np.ndarray] = None) -> np.ndarray:
    """Every measurement of stacked configurations: (N, L, 3) mm -> (N, M), NaN where empty.
    ``arcs`` (N, M) holds the arc columns (computed on the scan elsewhere)."""
    defs = plan.defs
    n = points.shape[0]
    out = np.full((n, len(defs)), np.nan)
    col = {m.id: k for k, m in enumerate(defs)}
    frame = vectors = None
    for k, m in enumerate(defs):
        if m.kind in ("distance", "projected", "angle"):
            p = points[:, plan.idx(m.landmarks)]
            if m.kind == "distance":
                out[:, k] = np.linalg.norm(p[:, 1] - p[:, 0], axis=1)
            elif m.kind == "projected":
                if frame is None:
                    frame = _frame_axes(points, plan)
                out[:, k] = np.einsum("ni,ni->n", p[:, 1] - p[:, 0], frame[:, "xyz".index(m.axis)])
            else:
                u, v = p[:, 0] - p[:, 1], p[:, 2] - p[:, 1]
                cross = np.linalg.norm(np.cross(u, v), axis=1)
                dot = np.einsum("ni,ni->n", u, v)
                ang = np.degrees(np.arctan2(cross, dot))
                degenerate = (np.linalg.norm(u, axis=1) == 0) | (np.linalg.norm(v, axis=1) == 0)
                out[:, k] = np.where(degenerate, np.nan, ang)
        elif m.kind == "asymmetry":
            if vectors is None:
                vectors = asymmetry_magnitudes(points, plan.mirror)
            chosen = plan.summarised[m.id]
            out[:, k] = rms(vectors[:, plan.idx(chosen)]) if chosen else np.nan
        elif m.kind == "arc" and arcs is not None:
            out[:, k] = arcs[:, k]
    for mid in plan.order:
        m = defs[mid]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = out[:, col[m.of[0]]] / out[:, col[m.of[1]]] * m.scale
        out[:, col[mid]] = np.where(np.isfinite(ratio), ratio, np.nan)
    return out


# ---------------------------------------------------------------- faces

def _default_protocol_for(labels: Sequence[str]):
    """The shipped protocol when it knows every label, else one made from the labels (mirrors by suffix)."""
    from ..protocol import Protocol, default_protocol
    proto = default_protocol()
    if all(lab in proto for lab in labels):
        return proto
    return Protocol.from_labels(list(dict.fromkeys(labels)))


def measure(landmarks: Landmarks, definitions: Optional[Definitions] = None, mesh: Optional[Mesh] = None,
            norms=None, samples: int = SAMPLES, seed: int = 0, sd=None, default_sd: Optional[float] = None,
            group: Optional[str] = None, protocol=None) -> List[Measurement]:
    """The measurements of one face, in the order of the definitions (default: the shipped ones).

    ``landmarks``: in any units (the answer is in mm and degrees). ``mesh``: the scan, in the
    same frame (its own ``units``), for the arcs; without it arcs are empty. ``norms``: a
    :class:`~.norms.Norms` (or a CSV path) for z-scores, ``group`` choosing its group.
    ``samples``: perturbed copies for the SE (0: no SE). ``sd``: positional SD per landmark
    in mm (overrides the confidence; see :func:`landmark_sd`); ``default_sd``: for a file
    without confidence. ``protocol``: mirror pairs and regions (default: the shipped
    protocol when it has every label).
    """
    return measure_many([landmarks], definitions, [mesh], norms, samples, seed, sd, default_sd, group,
                        protocol)[0]


def measure_many(faces: Sequence[Landmarks], definitions: Optional[Definitions] = None,
                 meshes: Optional[Sequence[Optional[Mesh]]] = None, norms=None, samples: int = SAMPLES,
                 seed: int = 0, sd=None, default_sd: Optional[float] = None, group: Optional[str] = None,
                 protocol=None) -> List[List[Measurement]]:
    """:func:`measure` for many faces at once (much faster than one by one); one list per face."""
    defs = definitions if definitions is not None else load_definitions()
    faces = list(faces)
    if meshes is None:
        meshes = [None] * len(faces)
    if len(meshes) != len(faces):
        raise ValueError("{} meshes for {} faces".format(len(meshes), len(faces)))
    samples = max(0, int(samples))
    union = {}  # type: Dict[str, None]  the faces' labels first: most faces then fill the first columns in order
    for f in faces:
        union.update((lab, None) for lab in f.labels)
    union.update((lab, None) for lab in defs.labels)
    if protocol is None:
        protocol = _default_protocol_for(list(union))
    union.update((lab, None) for lab in protocol.labels)  # a face lacking one of them misses it
    labels = list(union)
    plan = _Plan(defs, labels, protocol)
    norm_table = as_norms(norms)
    lookup = norm_table.for_group(group, defs) if norm_table is not None else {}

    per_face = max(1, CHUNK_CONFIGS // (samples + 1))
    noise_cache = {}  # type: Dict[Tuple[str, ...], np.ndarray]
    results = []
    for start in range(0, len(faces), per_face):
        chunk = faces[start:start + per_face]
        results.extend(_measure_chunk(chunk, meshes[start:start + per_face], plan, samples, seed, sd, default_sd,
                                      lookup, noise_cache))
    return results


def _measure_chunk(faces, meshes, plan: _Plan, samples: int, seed: int, sd, default_sd, lookup,
                   noise_cache) -> List[List[Measurement]]:
    defs = plan.defs
    n_lab = len(plan.labels)
    base = np.full((len(faces), n_lab, 3), np.nan)
    sds = np.full((len(faces), n_lab), np.nan)
    sampled = []  # type: List[int]  faces with an SD for every landmark: those get perturbed copies
    for f, face in enumerate(faces):
        mm = face.in_units("mm")
        cols = plan.idx(mm.labels)
        base[f, cols] = mm.points
        s = landmark_sd(face, sd, default_sd)
        if s is not None:
            sds[f, cols] = s
            if samples > 1 and np.isfinite(s).all():
                sampled.append(f)
    arcs, arc_notes, arc_se = _arcs(faces, meshes, base, plan, sds, samples, seed)
    values = _values(base, plan, arcs[:, 0])
    se = np.where(np.isfinite(arc_se), arc_se, np.nan)
    if sampled:
        # The perturbed copies in single precision: they only feed the standard errors, and
        # half the bytes make the cohort twice as fast.
        copies = np.empty((len(sampled), samples, n_lab, 3), dtype=np.float32)
        copies[:] = base[sampled, None]
        for j, f in enumerate(sampled):
            labels = tuple(faces[f].labels)
            if labels not in noise_cache:
                noise_cache[labels] = np.random.default_rng(seed).standard_normal(
                    (samples, len(labels), 3)).astype(np.float32)
            cols = plan.idx(labels)
            noise = noise_cache[labels] * sds[f, cols][None, :, None].astype(np.float32)
            if np.array_equal(cols, np.arange(len(cols))):
                copies[j, :, :len(cols)] += noise
            else:
                copies[j][:, cols] += noise
        got = _values(copies.reshape(-1, n_lab, 3), plan, arcs[sampled, 1:].reshape(-1, len(defs)))
        with np.errstate(invalid="ignore"):
            spread = np.std(got.reshape(len(sampled), samples, len(defs)), axis=1, ddof=1)
        se[sampled] = np.where(np.isfinite(se[sampled]), se[sampled], spread)
    present = np.isfinite(base).all(axis=2)
    # Which landmarks each measurement uses, as a matrix: the faces' missing counts in one product.
    uses = np.zeros((len(defs), n_lab), dtype=bool)
    for k, m in enumerate(defs):
        uses[k, plan.idx(plan.used[k])] = True
    lacking = (~present).astype(np.int64) @ uses.T.astype(np.int64)  # (F, M)
    values = np.where(lacking > 0, np.nan, values)
    se = np.where(np.isfinite(values), se, np.nan)
    z = np.full_like(values, np.nan)
    for k, m in enumerate(defs):
        if m.id in lookup:
            mean, sd_norm = lookup[m.id]
            z[:, k] = (values[:, k] - mean) / sd_norm
    out = []
    for f in range(len(faces)):
        value_list, se_list, z_list = (_or_none(a) for a in (values[f], se[f], z[f]))
        notes = [""] * len(defs)
        for k in np.flatnonzero(lacking[f] > 0):
            missing = [lab for lab in plan.used[k] if not present[f, plan.index[lab]]]
            notes[k] = "missing landmark{} {}".format("s" if len(missing) > 1 else "", ", ".join(missing))
        for k in np.flatnonzero((lacking[f] == 0) & ~np.isfinite(values[f])):
            m = defs.measurements[k]
            if m.kind == "arc" and arc_notes[f].get(m.id):
                notes[k] = arc_notes[f][m.id]
            elif m.kind == "ratio":
                notes[k] = _ratio_note(defs, m, arc_notes[f])
            else:
                notes[k] = _empty_note(m)
        for mid, note in arc_notes[f].items():  # notes on arcs that have a value (a hole along the path)
            k = plan.column[mid]
            if not notes[k]:
                notes[k] = note
        out.append([Measurement(m.id, m.name, m.kind, value_list[k], m.units, se_list[k], z_list[k], plan.used[k],
                                m.reference, m.group, notes[k]) for k, m in enumerate(defs)])
    return out


def _or_none(row: np.ndarray) -> list:
    return [x if x == x else None for x in row.tolist()]  # NaN -> None


def _empty_note(m: MeasurementDefinition) -> str:
    if m.kind == "projected":
        return "no face frame (needs a left-right pair of landmarks and the frame's upper and lower landmarks)"
    if m.kind == "angle":
        return "two of its landmarks coincide"
    if m.kind == "asymmetry":
        return "fewer than 3 landmarks with their mirror partner"
    return "could not be computed"


def _ratio_note(defs: Definitions, m: MeasurementDefinition, arc_notes: Dict[str, str]) -> str:
    for part in m.of:
        if part in arc_notes:
            return "{}: {}".format(part, arc_notes[part])
    return "its denominator is 0" if m.of else "could not be computed"


def _arcs(faces, meshes, base: np.ndarray, plan: _Plan, sds: np.ndarray, samples: int, seed: int):
    """Arc columns (F, 1 + samples, M): the value, then copies drawn from its SE for the
    ratios of arcs (NaN elsewhere); a note per face and arc; arc SEs (F, M)."""
    defs = plan.defs
    columns = np.full((len(faces), samples + 1, len(defs)), np.nan)
    ses = np.full((len(faces), len(defs)), np.nan)
    notes = [dict() for _ in faces]  # type: List[Dict[str, str]]
    arc_defs = [(k, m) for k, m in enumerate(defs) if m.kind == "arc"]
    if not arc_defs:
        return columns, notes, ses
    rng = np.random.default_rng(seed + 1)
    draws = rng.standard_normal((samples, len(arc_defs)))
    graphs = {}  # type: Dict[int, object]  one per scan, for faces that share one (predicted and true)
    for f, (face, mesh) in enumerate(zip(faces, meshes)):
        if mesh is None:
            for k, m in arc_defs:
                notes[f][m.id] = "no scan given (an arc is measured along the scan's surface)"
            continue
        todo = [(k, m) for k, m in arc_defs if np.isfinite(base[f, plan.idx(m.landmarks)]).all()]
        if not todo:
            continue
        try:
            if id(mesh) not in graphs:
                graphs[id(mesh)] = SurfaceGraph(mesh.in_units("mm"))
            graph = graphs[id(mesh)]
        except ValueError as exc:
            for k, m in todo:
                notes[f][m.id] = str(exc)
            continue
        found = graph.arcs([base[f, plan.idx(m.landmarks)] for k, m in todo])
        for (k, m), arc in zip(todo, found):
            if arc.note:
                notes[f][m.id] = arc.note
            if arc.length is None:
                continue
            columns[f, :, k] = arc.length
            se = arc_se(arc, sds[f][plan.idx(m.landmarks)])
            if se is not None:
                ses[f, k] = se
                j = [kk for kk, _ in arc_defs].index(k)
                columns[f, 1:, k] = arc.length + se * draws[:, j]
    return columns, notes, ses


def as_dicts(measurements: Sequence[Measurement]) -> List[Dict[str, Union[str, float, None, list]]]:
    """Plain dicts (JSON-ready) of measurements."""
    return [{"id": m.id, "name": m.name, "kind": m.kind, "value": m.value, "units": m.units, "se": m.se, "z": m.z,
             "landmarks": list(m.landmarks), "reference": m.reference, "group": m.group, "note": m.note}
            for m in measurements]
