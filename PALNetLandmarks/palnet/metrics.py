"""How far predicted landmarks are from the true ones: the PAL-Net error figures.

- point-wise error: Euclidean distance between predicted and true position of each
  landmark, averaged over scans per landmark, then averaged over landmarks;
- distance-wise error: per scan, the mean over all landmark pairs i < j of
  ``|d_pred(i, j) - d_true(i, j)|``, then averaged over scans. It ignores where the
  face sits and looks only at its shape, so a rigid shift of all landmarks costs 0;
- per-landmark statistics, per-region means, success detection rates (SDR).

Array functions take stacked points ``(S, L, 3)`` in millimetres. A NaN point is a
landmark that is not there: missing in a prediction it is counted in ``missing``;
missing in the truth it is not evaluated, but a prediction placed there anyway is
counted in ``extra`` (a landmark on anatomy the scan lacks, such as the ears of a
face-only capture, when the truth leaves out what the scan does not show). Either way
it is left out of every mean. Reports are plain dicts of floats, ints, strings and
lists (NaN becomes None), ready for ``json.dumps``.
"""
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import PalnetError

SDR_RADII_MM = (2.0, 3.0, 4.0)
OTHER_REGION = "other"


# ---------------------------------------------------------------------------
# Array level
# ---------------------------------------------------------------------------

def _as_points(a, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim < 2 or a.shape[-1] != 3:
        raise ValueError("{} must have shape (..., L, 3), got {}".format(name, a.shape))
    return a


def _check_pair(pred, truth):
    pred = _as_points(pred, "pred")
    truth = _as_points(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError("pred {} and truth {} differ in shape".format(pred.shape, truth.shape))
    return pred, truth


def pointwise_errors(pred, truth) -> np.ndarray:
    """Distance between each predicted and true landmark: ``(..., L, 3) -> (..., L)``.

    NaN where either point is NaN.
    """
    pred, truth = _check_pair(pred, truth)
    return np.linalg.norm(pred - truth, axis=-1)


def distancewise_errors(pred, truth) -> np.ndarray:
    """Distance-wise error of each scan: ``(S, L, 3) -> (S,)``.

    For each scan, the mean of ``|d_pred(i, j) - d_true(i, j)|`` over the pairs
    i < j whose four points are all present; NaN for a scan with no such pair.
    """
    pred, truth = _check_pair(pred, truth)
    if pred.ndim != 3:
        raise ValueError("expected stacked points (S, L, 3), got {}".format(pred.shape))
    i, j = np.triu_indices(pred.shape[1], k=1)
    d_pred = np.linalg.norm(pred[:, i] - pred[:, j], axis=-1)  # (S, P)
    d_true = np.linalg.norm(truth[:, i] - truth[:, j], axis=-1)
    diff = np.abs(d_pred - d_true)
    valid = np.isfinite(diff)
    count = valid.sum(axis=1)
    total = np.where(valid, diff, 0.0).sum(axis=1)
    out = np.full(pred.shape[0], np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out


def distancewise_error(pred, truth) -> float:
    """Distance-wise error of one scan, points ``(L, 3)``: mean over pairs of the
    absolute difference of inter-landmark distances (NaN if no complete pair)."""
    pred, truth = _check_pair(pred, truth)
    if pred.ndim != 2:
        raise ValueError("expected one scan's points (L, 3), got {}".format(pred.shape))
    return float(distancewise_errors(pred[None], truth[None])[0])


def success_detection_rates(errors, radii_mm: Sequence[float] = SDR_RADII_MM) -> Dict[str, Optional[float]]:
    """Fraction of the present (non-NaN) errors that are <= each radius, keyed ``'2mm'``..."""
    e = np.asarray(errors, dtype=np.float64).reshape(-1)
    e = e[np.isfinite(e)]
    r = np.asarray(radii_mm, dtype=np.float64)
    if e.size == 0:
        return {_radius_key(x): None for x in r}
    rates = (e[None, :] <= r[:, None]).mean(axis=1)
    return {_radius_key(x): float(v) for x, v in zip(r, rates)}


def _radius_key(r: float) -> str:
    return "{:g}mm".format(float(r))


# ---------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------

def _num(x) -> Optional[float]:
    """A JSON-safe float: NaN and infinities become None."""
    x = float(x)
    return x if np.isfinite(x) else None


def _nan_stats(errors: np.ndarray):
    """Column-wise mean, std (population), median, max, ignoring NaN, without
    the warnings NumPy gives for all-NaN columns (those come back NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return (np.nanmean(errors, axis=0), np.nanstd(errors, axis=0),
                np.nanmedian(errors, axis=0), np.nanmax(errors, axis=0))


def _nanmean(a: np.ndarray, axis=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def _resolve_protocol(protocol):
    """``protocol``, else the shipped default one, else None (everything is 'other')."""
    if protocol is not None:
        return protocol
    try:
        from .protocol import default_protocol
    except ImportError:
        return None
    return default_protocol()


def _regions_for(labels: Sequence[str], protocol):
    """Region of each label and the order regions are reported in."""
    if protocol is None:
        return [OTHER_REGION] * len(labels), [OTHER_REGION]
    known = set(protocol.labels)
    regions = [protocol.region_of(lab) if lab in known else OTHER_REGION for lab in labels]
    regions = [OTHER_REGION if r is None else str(r) for r in regions]
    order = []  # the protocol's own order first, then any others, 'other' last
    try:
        declared = [str(r) for r in protocol.regions]
    except TypeError:
        declared = []
    for r in declared + regions:
        if r in regions and r not in order and r != OTHER_REGION:
            order.append(r)
    if OTHER_REGION in regions:
        order.append(OTHER_REGION)
    return regions, order


def evaluate_arrays(pred, truth, labels: Sequence[str], protocol=None,
                    scan_ids: Optional[Sequence[str]] = None,
                    radii_mm: Sequence[float] = SDR_RADII_MM) -> Dict[str, Any]:
    """All error figures for stacked predictions and truths ``(S, L, 3)`` in mm.

    ``labels`` names the L landmarks; ``protocol`` assigns them to regions (default:
    the shipped protocol; labels it does not know go to region 'other').
    ``scan_ids`` names the S scans in ``per_scan`` (default '0', '1', ...).
    """
    pred, truth = _check_pair(pred, truth)
    if pred.ndim != 3:
        raise ValueError("expected stacked points (S, L, 3), got {}".format(pred.shape))
    n_scans, n_landmarks = pred.shape[:2]
    labels = [str(x) for x in labels]
    if len(labels) != n_landmarks:
        raise ValueError("{} labels for {} landmarks".format(len(labels), n_landmarks))
    if scan_ids is None:
        scan_ids = [str(s) for s in range(n_scans)]
    scan_ids = [str(x) for x in scan_ids]
    if len(scan_ids) != n_scans:
        raise ValueError("{} scan ids for {} scans".format(len(scan_ids), n_scans))

    truth_present = np.isfinite(truth).all(axis=-1)  # (S, L): evaluated at all
    placed = np.isfinite(pred).all(axis=-1)
    missing = truth_present & ~placed  # (S, L): prediction absent
    extra = ~truth_present & placed  # (S, L): placed where the truth has no landmark
    errors = pointwise_errors(pred, truth)  # NaN where either side is absent
    dist = distancewise_errors(pred, truth)

    mean, std, median, maxi = _nan_stats(errors)
    n_present = np.isfinite(errors).sum(axis=0)
    n_missing = missing.sum(axis=0)
    n_extra = extra.sum(axis=0)

    regions, region_order = _regions_for(labels, _resolve_protocol(protocol))
    region_index = np.array([region_order.index(r) for r in regions], dtype=np.int64)
    # A region's figure is the mean of its landmarks' means, like the overall point-wise error.
    has_mean = np.isfinite(mean)
    sums = np.bincount(region_index[has_mean], weights=mean[has_mean], minlength=len(region_order))
    counts = np.bincount(region_index[has_mean], minlength=len(region_order))
    region_means = np.full(len(region_order), np.nan)
    np.divide(sums, counts, out=region_means, where=counts > 0)

    per_landmark = {}
    for k, lab in enumerate(labels):
        per_landmark[lab] = {
            "mean": _num(mean[k]), "std": _num(std[k]),
            "median": _num(median[k]), "max": _num(maxi[k]),
            "n": int(n_present[k]), "missing": int(n_missing[k]), "extra": int(n_extra[k]), "region": regions[k],
        }

    scan_pointwise = _nanmean(errors, axis=1)
    per_scan = [
        {"scan": scan_ids[s], "pointwise_mm": _num(scan_pointwise[s]),
         "distancewise_mm": _num(dist[s]), "missing": int(missing[s].sum()), "extra": int(extra[s].sum())}
        for s in range(n_scans)
    ]

    return {
        "n_scans": int(n_scans),
        "n_landmarks": int(n_landmarks),
        "n_predictions": int(np.isfinite(errors).sum()),
        "missing": int(missing.sum()),
        "extra": int(extra.sum()),
        "units": "mm",
        "pointwise_mm": _num(_nanmean(mean)) if has_mean.any() else None,
        "distancewise_mm": _num(_nanmean(dist)) if np.isfinite(dist).any() else None,
        "sdr": success_detection_rates(errors, radii_mm),
        "per_region": {r: _num(v) for r, v in zip(region_order, region_means)},
        "per_landmark": per_landmark,
        "per_scan": per_scan,
    }


# Same order of preference as palnet.mesh_io uses when one folder holds a scan in several formats.
_FORMAT_PREFERENCE = (".mrk.json", ".fcsv", ".csv", ".txt")


def _format_rank(path) -> int:
    name = os.path.basename(os.fspath(path)).lower()
    return next((k for k, ext in enumerate(_FORMAT_PREFERENCE) if name.endswith(ext)),
                len(_FORMAT_PREFERENCE))


def _scan_key(path: str, root: str, scan_id_for) -> str:
    """Where a landmark file's scan lies below ``root``, as ``palnet predict`` mirrors it: the
    folders down to the file, then the scan id. ``a/S01.mrk.json`` and ``a/S01/landmarks.mrk.json``
    are both ``a/S01``: a generic name stands for its folder, as a generic mesh name does."""
    sid = scan_id_for(path)
    rel = os.path.relpath(os.path.dirname(path), root)
    parts = [] if rel == os.curdir else rel.replace(os.sep, "/").split("/")
    if parts and parts[-1] == sid and not os.path.basename(path).startswith(sid + "."):
        parts.pop()
    return "/".join(parts + [sid])


def _inside(path: str, folder: str) -> bool:
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # another drive
        return False


def _files_by_scan(directory, find_landmark_files, scan_id_for, skip: Optional[str] = None):
    """``({key: file}, {key: [files]})``: one landmark file per scan key (see _scan_key), the
    preferred format when one folder holds a scan in several (``S01.mrk.json`` and
    ``S01.csv``); and the keys whose files lie in different folders (``a/S01.mrk.json`` and
    ``a/S01/landmarks.mrk.json``), which nothing tells apart. Files below ``skip`` are left out."""
    root = os.path.abspath(os.fspath(directory))
    found = {}  # type: Dict[str, List[str]]
    for path in find_landmark_files(directory):
        path = os.fspath(path)
        full = os.path.abspath(path)
        if skip is not None and _inside(full, skip):
            continue
        found.setdefault(_scan_key(full, root, scan_id_for), []).append(path)
    files, clashes = {}, {}
    for key, paths in found.items():
        if len({os.path.dirname(p) for p in paths}) == 1:
            files[key] = min(paths, key=lambda p: (_format_rank(p), p))
        else:
            clashes[key] = sorted(paths)
    return files, clashes


def _pair_scans(truth: Dict[str, str], pred: Dict[str, str], truth_clashes: Dict[str, List[str]],
                pred_clashes: Dict[str, List[str]]):
    """Pair true and predicted scan keys: the same key (the same place below both folders)
    first; then, where the folders are laid out differently (truth ``study/S01.mrk.json``,
    the prediction of ``palnet predict study`` ``S01.mrk.json``), by scan id, but only where
    each side has that id once. Returns ``({name: (truth key, pred key)}, unmatched truth
    keys, unmatched pred keys, ambiguous)``, ambiguous being ``{scan id: (truth keys, pred keys)}``
    of the files that could be one of several."""
    pairs = {k: (k, k) for k in set(truth) & set(pred)}
    groups = {}  # type: Dict[str, Tuple[List[str], List[str]]]
    for side, keys in ((0, list(truth) + list(truth_clashes)), (1, list(pred) + list(pred_clashes))):
        for key in keys:
            groups.setdefault(key.rsplit("/", 1)[-1], ([], []))[side].append(key)
    unmatched_truth, unmatched_pred, ambiguous = [], [], {}
    for sid, (t_keys, p_keys) in groups.items():
        if len(t_keys) == 1 and len(p_keys) == 1 and t_keys[0] in truth and p_keys[0] in pred:
            if t_keys[0] != p_keys[0]:
                pairs[sid] = (t_keys[0], p_keys[0])
            continue
        t_left = sorted(k for k in t_keys if k not in pairs)
        p_left = sorted(k for k in p_keys if k not in pairs)
        if (t_left and p_left) or any(k in truth_clashes for k in t_left) or any(k in pred_clashes for k in p_left):
            ambiguous[sid] = (t_left, p_left)
        else:
            unmatched_truth += t_left
            unmatched_pred += p_left
    return pairs, sorted(unmatched_truth), sorted(unmatched_pred), ambiguous


def evaluate_dirs(pred_dir, truth_dir, protocol=None,
                  radii_mm: Sequence[float] = SDR_RADII_MM, definitions=None,
                  measurements: bool = True) -> Dict[str, Any]:
    """Compare every predicted landmark file with the true one of the same scan.

    Files are paired by where they lie below the two folders (``a/S01.mrk.json`` with
    ``a/S01.mrk.json``; a generic name such as ``a/S01/landmarks.mrk.json`` stands for its
    folder, as ``palnet predict`` names its outputs), then, where the two folders are laid
    out differently, by scan id (file name without the landmark extension, or the folder
    name for generic names) when each side has that id only once; landmarks are paired by
    label. Each scan is judged on the labels its truth file names (a short list of
    annotations is judged on that list), and a prediction lacking one counts as missing. Each file is read in the units it states and both sides are converted to mm.
    Scans on one side only are listed in ``unmatched_truth`` / ``unmatched_pred``; files that
    could belong to more than one scan, left out rather than guessed, in ``ambiguous``; scans
    whose predicted landmarks are far larger or smaller than the true ones (a file whose
    numbers are not in the units it states) in ``size_mismatch``. One folder inside the other
    (predictions written into the data folder) is left out of the outer one. With
    ``measurements`` the error of each measurement of ``definitions`` (default: the shipped
    standard set) is in ``measurements`` (see :func:`measurement_errors`).
    """
    from .mesh_io import find_landmark_files, read_landmarks, scan_id_for

    for d in (pred_dir, truth_dir):
        if not os.path.isdir(d):
            raise PalnetError("not a directory", d)
    pred_abs, truth_abs = os.path.abspath(os.fspath(pred_dir)), os.path.abspath(os.fspath(truth_dir))
    nested = pred_abs != truth_abs
    find_landmark_files = _without_tables(find_landmark_files)
    truth_files, truth_clashes = _files_by_scan(truth_dir, find_landmark_files, scan_id_for,
                                                pred_abs if nested and _inside(pred_abs, truth_abs) else None)
    pred_files, pred_clashes = _files_by_scan(pred_dir, find_landmark_files, scan_id_for,
                                              truth_abs if nested and _inside(truth_abs, pred_abs) else None)
    if not truth_files and not truth_clashes:
        raise PalnetError("no landmark files found", truth_dir)
    if not pred_files and not pred_clashes:
        raise PalnetError("no landmark files found", pred_dir)
    pairs, unmatched_truth, unmatched_pred, ambiguous = _pair_scans(truth_files, pred_files, truth_clashes,
                                                                    pred_clashes)
    if not pairs:
        raise PalnetError("no predicted landmark file in {} pairs with a true one in {}: none lies at the same "
                          "place below its folder or has the same scan name{}".format(
                              os.fspath(pred_dir), os.fspath(truth_dir),
                              " ({} ambiguous)".format(len(ambiguous)) if ambiguous else ""))
    matched = sorted(pairs)

    # Each file in the units it states, then both sides in mm: a scan annotated in cm and
    # predicted in cm compares as it would in mm.
    truths_read = [read_landmarks(truth_files[pairs[s][0]]) for s in matched]
    preds_read = [read_landmarks(pred_files[pairs[s][1]]) for s in matched]
    truths = [t.in_units("mm") for t in truths_read]
    preds = [p.in_units("mm") for p in preds_read]

    protocol = _resolve_protocol(protocol)
    seen = {}  # type: Dict[str, None]
    for t in truths:
        seen.update((lab, None) for lab in t.labels)
    # Protocol order first so tables read like the protocol; user labels after, as found.
    in_protocol = [] if protocol is None else [lab for lab in protocol.labels if lab in seen]
    taken = set(in_protocol)
    labels = in_protocol + [lab for lab in seen if lab not in taken]
    column = {lab: k for k, lab in enumerate(labels)}

    shape = (len(matched), len(labels), 3)
    truth_pts = np.full(shape, np.nan)
    pred_pts = np.full(shape, np.nan)
    for s, (t, p) in enumerate(zip(truths, preds)):  # a loop over files, not landmarks
        truth_pts[s, [column[lab] for lab in t.labels]] = t.points
        # Only the labels this scan's truth names are judged: one another scan's truth names and
        # this one does not was not annotated here (a file marks what the scan lacks as missing).
        named = set(t.labels)
        wanted = [k for k, lab in enumerate(p.labels) if lab in named]
        pred_pts[s, [column[p.labels[k]] for k in wanted]] = p.points[wanted]

    report = evaluate_arrays(pred_pts, truth_pts, labels, protocol=protocol,
                             scan_ids=matched, radii_mm=radii_mm)
    if measurements:
        try:
            report["measurements"] = measurement_errors(preds, truths, definitions,
                                                        protocol if hasattr(protocol, "definition") else None)
        except ImportError:  # palnet.protocol is not there (as _resolve_protocol allows): no mirror pairs
            pass
    report["pred_dir"] = os.fspath(pred_dir)
    report["truth_dir"] = os.fspath(truth_dir)
    report["unmatched_truth"] = unmatched_truth
    report["unmatched_pred"] = unmatched_pred
    report["ambiguous"] = [
        {"scan": sid, "truth": _relative(t_keys, truth_files, truth_clashes, truth_dir),
         "pred": _relative(p_keys, pred_files, pred_clashes, pred_dir)}
        for sid, (t_keys, p_keys) in sorted(ambiguous.items())]
    report["size_mismatch"] = [
        {"scan": sid, "ratio": round(r, 3), "pred_units": p.units, "truth_units": t.units}
        for sid, t, p, r in zip(matched, truths_read, preds_read, _size_ratios(pred_pts, truth_pts))
        if np.isfinite(r) and not 1.0 / SIZE_MISMATCH < r < SIZE_MISMATCH]
    return report


def _without_tables(find_landmark_files):
    """``find_landmark_files`` leaving out the measurement tables ``palnet predict --measure`` writes."""
    from .measurements.files import MEASUREMENTS_NAME

    def find(directory):
        return [p for p in find_landmark_files(directory) if os.path.basename(os.fspath(p)) != MEASUREMENTS_NAME]
    return find


def measurement_errors(preds, truths, definitions=None, protocol=None) -> Dict[str, Any]:
    """The error of each measurement computed from predicted rather than true landmarks.

    ``preds``, ``truths``: lists of Landmarks, one pair per scan (any units). Per measurement:
    name, units, ``n`` scans with both values, ``missing`` (true value but no predicted one),
    the mean absolute error, its median, SD and maximum, the bias (mean of predicted minus
    true) and the mean true value, in the measurement's units (mm, degrees, index points).
    Arcs need the scans and are left out here (``n`` 0); tools/bench_measurements.py has them.
    """
    from .measurements import load_definitions, measure_many
    defs = definitions if definitions is not None else load_definitions()
    got_pred = measure_many(preds, defs, samples=0, protocol=protocol)
    got_true = measure_many(truths, defs, samples=0, protocol=protocol)
    shape = (len(preds), len(defs))
    pv, tv = np.full(shape, np.nan), np.full(shape, np.nan)
    for s, (mp, mt) in enumerate(zip(got_pred, got_true)):
        pv[s] = [np.nan if m.value is None else m.value for m in mp]
        tv[s] = [np.nan if m.value is None else m.value for m in mt]
    return measurement_error_table(pv, tv, defs)


def measurement_error_table(pred_values: np.ndarray, true_values: np.ndarray, definitions) -> Dict[str, Any]:
    """:func:`measurement_errors` from values ``(S, M)`` (NaN: empty) in the order of ``definitions``."""
    err = pred_values - true_values
    both = np.isfinite(err)
    missing = (np.isfinite(true_values) & ~np.isfinite(pred_values)).sum(axis=0)
    mean, std, median, maxi = _nan_stats(np.abs(err))
    bias, true_mean = _nanmean(err, axis=0), _nanmean(true_values, axis=0)
    out = {}  # type: Dict[str, Any]
    for k, m in enumerate(definitions):
        n = int(both[:, k].sum())
        out[m.id] = {"name": m.name, "kind": m.kind, "units": m.units, "n": n, "missing": int(missing[k]),
                     "mean_abs": _num(mean[k]) if n else None, "std_abs": _num(std[k]) if n else None,
                     "median_abs": _num(median[k]) if n else None, "max_abs": _num(maxi[k]) if n else None,
                     "bias": _num(bias[k]) if n else None, "mean_true": _num(true_mean[k]) if n else None}
    return out


def format_measurement_errors(table: Dict[str, Any]) -> List[str]:
    """The measurement errors as text lines (measurements nothing was measured for are left out)."""
    rows = [(mid, r) for mid, r in table.items() if r["n"]]
    if not rows:
        return []
    w = max([len("Measurement")] + [len(mid) for mid, _ in rows])
    lines = ["", "{:<{w}}  {:>5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>9}".format(
        "Measurement", "Units", "Mean abs", "Median", "Max", "Bias", "True mean", w=w)]
    for mid, r in rows:
        lines.append("{:<{w}}  {:>5}  {}  {}  {}  {}  {}".format(
            mid, r["units"] or "-", _fmt(r["mean_abs"], 9), _fmt(r["median_abs"], 9), _fmt(r["max_abs"], 9),
            _fmt(r["bias"], 9), _fmt(r["mean_true"], 9), w=w))
    left = [mid for mid, r in table.items() if not r["n"]]
    if left:
        lines.append("Not evaluated (no value on both sides; arcs need the scans): {}".format(_name_list(left)))
    return lines


def _relative(keys: List[str], files: Dict[str, str], clashes: Dict[str, List[str]], directory) -> List[str]:
    """The files of ``keys`` as paths below ``directory``, for a report."""
    paths = [p for k in keys for p in ([files[k]] if k in files else clashes[k])]
    return sorted(os.path.relpath(os.path.abspath(p), os.path.abspath(os.fspath(directory))).replace(os.sep, "/")
                  for p in paths)


# Predicted landmarks this many times larger or smaller than the true ones are not a poor
# prediction (that moves points over the same face) but numbers in other units than their file
# states, e.g. a file written in cm that says mm: the report says so instead of only
# printing an error 10 or 1000 times too large.
SIZE_MISMATCH = 3.0


def _size_ratios(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per scan, the RMS spread of the predicted landmarks about their centroid over that of
    the true ones, on the landmarks both have (NaN with fewer than 3)."""
    both = np.isfinite(pred).all(axis=-1) & np.isfinite(truth).all(axis=-1)
    out = np.full(len(pred), np.nan)
    for s in range(len(pred)):
        if both[s].sum() >= 3:
            p, t = pred[s, both[s]], truth[s, both[s]]
            spread_t = np.sqrt(((t - t.mean(axis=0)) ** 2).sum(axis=1).mean())
            if spread_t > 0:
                out[s] = np.sqrt(((p - p.mean(axis=0)) ** 2).sum(axis=1).mean()) / spread_t
    return out


# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------

def _fmt(x, width: int = 8, digits: int = 3) -> str:
    return ("{:>%d.%df}" % (width, digits)).format(x) if x is not None else "{:>{}}".format("-", width)


def _name_list(names: List[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (", ... ({} more)".format(len(names) - limit) if len(names) > limit else "")


def format_report(report: Dict[str, Any]) -> str:
    """The report as text: the two figures and SDRs, then region and landmark tables."""
    lines = []
    head = "PAL-Net evaluation: {} scan(s), {} landmark(s)".format(report["n_scans"], report["n_landmarks"])
    if report.get("missing"):
        head += ", {} missing prediction(s)".format(report["missing"])
    if report.get("extra"):
        head += ", {} placed where the truth has none".format(report["extra"])
    lines.append(head)
    if report.get("truth_dir") is not None:
        lines.append("  predictions: {}".format(report.get("pred_dir")))
        lines.append("  truth:       {}".format(report.get("truth_dir")))
    lines.append("Point-wise error:    {} mm".format(_fmt(report["pointwise_mm"], 0)))
    lines.append("Distance-wise error: {} mm".format(_fmt(report["distancewise_mm"], 0)))
    sdr = ["{} {}".format(k, "-" if v is None else "{:.1f}%".format(100.0 * v))
           for k, v in report["sdr"].items()]
    lines.append("Success detection rate: " + "   ".join(sdr))
    for key, what in (("unmatched_truth", "true scans without a prediction"),
                      ("unmatched_pred", "predicted scans without a truth")):
        names = report.get(key) or []
        if names:
            lines.append("{} {}: {}".format(len(names), what, _name_list(names)))
    ambiguous = report.get("ambiguous") or []
    if ambiguous:
        lines.append("{} scan name(s) whose files could not be paired one to one, left out: {}".format(
            len(ambiguous), _name_list(["{} (true {}; predicted {})".format(
                a["scan"], ", ".join(a["truth"]) or "none", ", ".join(a["pred"]) or "none") for a in ambiguous])))
    odd = report.get("size_mismatch") or []
    if odd:
        lines.append("{} scan(s) whose predicted landmarks differ in size from the true ones by more than {:g}x: "
                     "check the units their files state: {}".format(len(odd), SIZE_MISMATCH, _name_list([
                         "{} ({:.3g}x, predicted {}, true {})".format(
                             r["scan"], r["ratio"], r["pred_units"], r["truth_units"]) for r in odd])))

    per_landmark = report["per_landmark"]
    n_in_region = {}  # type: Dict[str, int]
    for row in per_landmark.values():
        n_in_region[row.get("region")] = n_in_region.get(row.get("region"), 0) + 1
    rw = max([len("Region")] + [len(r) for r in report["per_region"]])
    lines += ["", "{:<{w}}  {:>9}  {:>9}".format("Region", "Landmarks", "Mean (mm)", w=rw)]
    for region, value in report["per_region"].items():
        lines.append("{:<{w}}  {:>9d}  {}".format(region, n_in_region.get(region, 0), _fmt(value, 9), w=rw))

    lw = max([len("Landmark")] + [len(lab) for lab in per_landmark])
    lines += ["", "{:<{w}}  {:>8}  {:>8}  {:>8}  {:>8}  {:>7}  {:>5}".format(
        "Landmark", "Mean", "Std", "Median", "Max", "Missing", "Extra", w=lw)]
    for lab, row in per_landmark.items():
        lines.append("{:<{w}}  {}  {}  {}  {}  {:>7d}  {:>5d}".format(
            lab, _fmt(row["mean"]), _fmt(row["std"]), _fmt(row["median"]), _fmt(row["max"]),
            int(row.get("missing", 0)), int(row.get("extra", 0)), w=lw))
    if report.get("measurements"):
        lines += format_measurement_errors(report["measurements"])
    return "\n".join(lines) + "\n"
