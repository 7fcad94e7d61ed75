"""Benchmark PAL-Net against its baselines on annotated scans, or time one prediction.

    python tools/benchmark.py --data DIR [--model M] [--n N] [--out report.json] [--baselines] [--jobs 2] [--png DIR]
    python tools/benchmark.py --speed SCAN [--model M] [--repeats 3]
    python tools/benchmark.py --consistency SCAN_OR_FOLDER... [--model M] [--png DIR] [--out report.json]

Accuracy mode: every (scan, landmark file) pair under DIR (a ``palnet synth``
folder: DIR/<id>/scan.ply + landmarks.mrk.json) is predicted by
  PAL-Net                  ``palnet.pipeline.predict`` with the model,
  (a) initial approx.      the mean landmarks after the automatic alignment, snapped
                           (taken from the same ``predict`` call, so its time is the
                           alignment stage's),
  (b) template registr.    rigid alignment + Coherent Point Drift (``--baselines``;
                           with the ICT-FaceKit mean face when that file is found,
                           ``--mean-face none`` for the model's face template only),
and scored with ``palnet.metrics``: point-wise and distance-wise error, SDR,
per-region and per-landmark tables, median seconds per scan, and the scans
whose alignment status is not "ok". A scan that raises is listed and the run
goes on. Work is spread over ``--jobs`` processes with one BLAS thread each.
A landmark file may name only some of the model's landmarks (a real scan annotated
in another scheme, a clinic's short list): the others are not judged. ``--png DIR``
draws each scan's annotated landmarks, PAL-Net's answer beside the truth.

Speed mode: ``palnet predict SCAN`` in a fresh Python process limited to one
core (``taskset -c 0`` where available, one BLAS/OpenMP thread); reports the
time inside that process from before ``palnet`` is imported to after the
landmarks are written (everything but the interpreter's own start-up: imports of
NumPy and SciPy, reading the model and the scan, prediction, writing), the peak
resident memory, and checks that torch was never imported.

Consistency mode (no landmarks needed, for real scans): mirror, re-mesh and crop
consistency of the answers on each scan (see tools/consistency.py), in mm.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
             "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List, Optional, Tuple  # noqa: E402

import numpy as np  # noqa: E402

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "PALNetLandmarks"
try:
    import palnet  # noqa: F401
except ImportError:  # a plain checkout without `pip install -e .`
    sys.path.insert(0, str(PACKAGE_DIR))

from palnet.errors import PalnetError  # noqa: E402
from palnet.options import DEFAULT_SAMPLINGS, DEFAULT_SNAP, NO_SNAP, SNAP_METHODS  # noqa: E402

METHODS = ("palnet", "initial", "registration")
TITLES = {"palnet": "PAL-Net", "initial": "(a) initial approximation (aligned mean landmarks)",
          "registration": "(b) template registration (rigid + CPD)"}
SHORT = {"palnet": "PAL-Net", "initial": "(a)", "registration": "(b)"}

_WORKER = {}  # type: Dict[str, Any]


# ---------------------------------------------------------------------------
# Accuracy
# ---------------------------------------------------------------------------

def _worker_init(model_path: str, baselines: bool, mean_face: Optional[np.ndarray], snap: str,
                 samplings: int = 1, png: Optional[str] = None) -> None:
    from palnet.modelfile import load_model
    _WORKER.update(model=load_model(model_path), baselines=baselines, mean_face=mean_face, snap=snap,
                   samplings=samplings, png=png)


TRUTH_COLOUR, ANSWER_COLOUR = (0.1, 0.75, 0.1), (0.85, 0.1, 0.1)


def truth_picture(mesh, pred, truth: np.ndarray, named: np.ndarray, labels: List[str], path: Path) -> None:
    """Front and side close-ups of the landmarks the truth file names: PAL-Net's answer in red and
    labelled, the truth in green (both in mm, the scan's frame), the face upright."""
    from palnet.datatypes import unit_scale
    from palnet.render import RenderOptions, render_landmarks
    ours = pred.landmarks.in_units("mm").points
    keep = named & np.isfinite(ours).all(axis=1) & np.isfinite(truth).all(axis=1)
    if not keep.any():
        return
    scale = unit_scale(pred.units, "mm")  # the mesh's numbers are in the units the prediction read it in
    shown = [lab for lab, k in zip(labels, keep) if k]
    points = np.vstack([ours[keep], truth[keep]])
    rot = pred.alignment.rotation  # canonical axes (y up, z front) seen in the scan's frame
    path.parent.mkdir(parents=True, exist_ok=True)
    render_landmarks((mesh.vertices * scale, mesh.triangles), points, path,
                     RenderOptions(views=("front", "side"), up=rot[1], front=rot[2], focus=points, margin=0.2,
                                   colors=[ANSWER_COLOUR] * len(shown) + [TRUTH_COLOUR] * len(shown),
                                   labels=[True] * len(shown) + [False] * len(shown),
                                   label_names=shown + [""] * len(shown),
                                   title="{} ({}): PAL-Net red, truth green".format(path.stem, pred.status)))


def _error_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, PalnetError) else "{}: {}".format(type(exc).__name__, exc)


def annotated_truth(truth, labels: List[str], path) -> Tuple[np.ndarray, np.ndarray]:
    """The true points in mm in the order of ``labels`` and which of them the file names.

    A real scan is often annotated with some of the protocol's landmarks only (another
    scheme's points that match a few of ours, a clinic's short list): the labels the file
    does not name are not evaluated at all, neither as errors nor as landmarks placed where
    the truth has none. A label the file names without a position (``positionStatus``
    "missing") is the truth saying the scan does not show it, and is judged as such."""
    mm = truth.in_units("mm")
    index = {lab: i for i, lab in enumerate(mm.labels)}
    named = np.array([lab in index for lab in labels])
    if not named.any():
        raise PalnetError("names none of the model's {} landmarks (e.g. {})".format(
            len(labels), ", ".join(labels[:3])), path)
    points = np.full((len(labels), 3), np.nan)
    points[named] = mm.points[[index[lab] for lab, n in zip(labels, named) if n]]
    return points, named


def evaluate_scan(task) -> Dict[str, Any]:
    """Predict one scan with every method; nothing raised here escapes (each failure is recorded)."""
    from palnet.baselines import initial_approximation_baseline, template_registration_baseline
    from palnet.mesh_io import read_mesh
    from palnet.landmark_io import read_landmarks
    from palnet.pipeline import predict
    scan_id, mesh_path, landmark_path = task
    model = _WORKER["model"]
    labels = list(model.metadata["protocol"]["labels"])
    out = {"scan": scan_id, "truth": None, "points": {}, "seconds": {}, "status": {}, "errors": {}}
    try:
        mesh = read_mesh(mesh_path)
        out["truth"], out["annotated"] = annotated_truth(read_landmarks(landmark_path), labels, landmark_path)
    except Exception as exc:  # an unreadable pair is counted for every method
        for m in METHODS:
            out["errors"][m] = _error_text(exc)
        return out
    try:
        pred = predict(mesh, model, snap=_WORKER["snap"], samplings=_WORKER.get("samplings", 1))
        out["points"]["palnet"] = pred.landmarks.in_units("mm").points
        out["points"]["initial"] = initial_approximation_baseline(mesh, model, pred.units, pred.alignment,
                                                                  _WORKER["snap"]).in_units("mm").points
        out["seconds"]["palnet"] = pred.seconds
        out["seconds"]["initial"] = pred.timings.get("prepare", pred.seconds)
        out["status"]["palnet"] = out["status"]["initial"] = pred.status
        out["out_of_order"] = list(pred.out_of_order)
        out["from_registration"] = [lab for lab, src in zip(labels, pred.sources) if src in ("registration", "both")]
        out["from_others"] = [lab for lab, src in zip(labels, pred.sources) if src == "others"]
        status = pred.status
    except Exception as exc:
        out["errors"]["palnet"] = out["errors"]["initial"] = _error_text(exc)
        status = None
    if _WORKER.get("png") and status is not None:
        try:
            truth_picture(mesh, pred, out["truth"], out["annotated"], labels, Path(_WORKER["png"]) / (scan_id + ".png"))
        except Exception as exc:  # a picture that cannot be drawn costs only the picture
            print("{}: no picture ({})".format(scan_id, _error_text(exc)), file=sys.stderr)
    if _WORKER["baselines"]:
        try:
            t0 = time.perf_counter()
            lms = template_registration_baseline(mesh, model, mean_face=_WORKER["mean_face"], snap=_WORKER["snap"])
            out["seconds"]["registration"] = time.perf_counter() - t0
            out["points"]["registration"] = lms.in_units("mm").points
            # Same deterministic alignment as predict's; its status is that one's.
            out["status"]["registration"] = status if status is not None else "unknown"
        except Exception as exc:
            out["errors"]["registration"] = _error_text(exc)
    return out


def summarise(results: List[Dict[str, Any]], methods: List[str], labels: List[str], protocol) -> Dict[str, Any]:
    """Per method: the metrics report over the scans it predicted, times, failures."""
    from palnet.metrics import evaluate_arrays
    usable = [r for r in results if r["truth"] is not None]
    summary = {}
    for m in methods:
        done = [r for r in usable if m in r["points"]]
        entry = {"n_scans": len(done),
                 "errors": [{"scan": r["scan"], "error": r["errors"][m]} for r in results if m in r["errors"]],
                 "alignment_failures": [{"scan": r["scan"], "status": r["status"][m]}
                                        for r in done if r["status"].get(m) != "ok"],
                 "median_seconds": float(np.median([r["seconds"][m] for r in done])) if done else None,
                 "report": None}
        if m == "palnet":  # the scans whose answer broke the anatomical order, or leant on a stand-in
            for key in ("out_of_order", "from_registration", "from_others"):
                entry[key] = [{"scan": r["scan"], "landmarks": r[key]} for r in done if r.get(key)]
        if done:
            pred = np.stack([r["points"][m] for r in done])
            truth = np.stack([r["truth"] for r in done])
            named = np.stack([r.get("annotated", np.ones(len(labels), dtype=bool)) for r in done])
            pred[~named] = np.nan  # a landmark the truth file does not name is not judged
            cols = np.flatnonzero(named.any(axis=0))  # the labels some truth file names
            entry["report"] = evaluate_arrays(pred[:, cols], truth[:, cols], [labels[k] for k in cols],
                                              protocol=protocol, scan_ids=[r["scan"] for r in done])
        summary[m] = entry
    return summary


def comparison(summary: Dict[str, Any]) -> Dict[str, Any]:
    """How much lower PAL-Net's point-wise error is than each baseline's (mm and %)."""
    def err(m):
        entry = summary.get(m)
        return None if entry is None or entry["report"] is None else entry["report"]["pointwise_mm"]
    ours = err("palnet")
    out = {}
    for m in ("initial", "registration"):
        theirs = err(m)
        if ours is not None and theirs is not None:
            out[m] = {"mm": theirs - ours, "percent": 100.0 * (theirs - ours) / theirs if theirs else None}
    return out


def comparison_line(comp: Dict[str, Any]) -> str:
    parts = []
    for m in ("initial", "registration"):
        c = comp.get(m)
        if c is None:
            continue
        verb = "beats" if c["mm"] >= 0 else "trails"
        pct = "" if c["percent"] is None else " ({:.1f} %)".format(abs(c["percent"]))
        parts.append("{} {} by {:.2f} mm{}".format(verb, SHORT[m], abs(c["mm"]), pct))
    return "PAL-Net " + ", ".join(parts) if parts else "PAL-Net: nothing to compare"


def _fmt(x, digits=3) -> str:
    return "-" if x is None else "{:.{}f}".format(x, digits)


def summary_table(summary: Dict[str, Any]) -> str:
    rows = ["{:<10} {:>6} {:>10} {:>10} {:>7} {:>7} {:>7} {:>9} {:>10} {:>7}".format(
        "Method", "Scans", "Point mm", "Dist mm", "SDR2", "SDR3", "SDR4", "Median s", "Align.fail", "Errors")]
    for m, e in summary.items():
        rep = e["report"] or {}
        sdr = rep.get("sdr", {})
        pct = ["-" if sdr.get(k) is None else "{:.1f}%".format(100 * sdr[k]) for k in ("2mm", "3mm", "4mm")]
        rows.append("{:<10} {:>6d} {:>10} {:>10} {:>7} {:>7} {:>7} {:>9} {:>10d} {:>7d}".format(
            SHORT[m], e["n_scans"], _fmt(rep.get("pointwise_mm")), _fmt(rep.get("distancewise_mm")), *pct,
            _fmt(e["median_seconds"], 2), len(e["alignment_failures"]), len(e["errors"])))
    return "\n".join(rows)


def method_text(m: str, entry: Dict[str, Any]) -> str:
    from palnet.metrics import format_report
    lines = ["=" * 78, TITLES[m], "=" * 78]
    if entry["report"] is not None:
        text = format_report(entry["report"])
        first, _, rest = text.partition("\n")
        lines.append(first.replace("PAL-Net evaluation", SHORT[m] + " evaluation", 1))
        lines.append(rest.rstrip("\n"))
    lines.append("Median time per scan: {} s".format(_fmt(entry["median_seconds"], 3)))
    fails = entry["alignment_failures"]
    lines.append("Alignment failures (status != ok): {}{}".format(
        len(fails), "" if not fails else ": " + ", ".join("{} ({})".format(f["scan"], f["status"]) for f in fails)))
    for key, text in (("out_of_order", "Out of anatomical order"), ("from_registration", "From the registration"),
                      ("from_others", "Placed from the other landmarks")):
        if key in entry:
            lines.append("{}: {} scan(s){}".format(text, len(entry[key]), "".join(
                "; {} ({})".format(f["scan"], ", ".join(f["landmarks"])) for f in entry[key])))
    for e in entry["errors"]:
        lines.append("  error on {}: {}".format(e["scan"], e["error"]))
    return "\n".join(lines)


def _mean_face(arg: str, model) -> Optional[np.ndarray]:
    """The mean face for baseline (b): the ICT-FaceKit neutral head if found, else None."""
    from palnet.baselines import ict_mean_face
    from palnet.pipeline import model_arrays
    if arg == "none":
        return None
    try:
        return ict_mean_face(model_arrays(model)[1], None if arg == "auto" else arg)
    except PalnetError as exc:
        if arg != "auto":
            raise
        print("note: no ICT-FaceKit mean face ({}); (b) registers the model's face template".format(exc),
              file=sys.stderr)
        return None


def run_accuracy(args) -> int:
    from palnet.mesh_io import find_scan_pairs
    from palnet.modelfile import load_model
    from palnet.protocol import Protocol, default_protocol
    from palnet.resources import default_model_path
    model_path = Path(args.model) if args.model else default_model_path()
    model = load_model(model_path)
    pairs = find_scan_pairs(args.data)
    if args.n:
        pairs = pairs[:args.n]
    if not pairs:
        raise PalnetError("no (scan, landmark file) pairs found", args.data)
    labels = list(model.metadata["protocol"]["labels"])
    try:
        protocol = Protocol.from_dict(model.metadata["protocol"])
    except Exception:  # a protocol the metrics cannot read only loses the region names
        protocol = default_protocol() if set(labels) == set(default_protocol().labels) else None
    mean_face = _mean_face(args.mean_face, model) if args.baselines else None
    methods = list(METHODS) if args.baselines else ["palnet", "initial"]
    tasks = [(sid, str(m), str(lm)) for sid, m, lm in pairs]
    jobs = max(1, min(args.jobs, len(tasks)))
    t0 = time.perf_counter()
    init_args = (str(model_path), args.baselines, mean_face, args.snap, args.samplings, args.png)
    results = []
    if jobs == 1:
        _worker_init(*init_args)
        iterator = map(evaluate_scan, tasks)
        pool = None
    else:
        pool = mp.get_context("spawn" if os.name == "nt" else "fork").Pool(jobs, _worker_init, init_args)
        iterator = pool.imap(evaluate_scan, tasks)
    try:
        for k, r in enumerate(iterator, 1):
            results.append(r)
            bad = ", ".join(sorted(r["errors"]))
            print("[{}/{}] {}{}".format(k, len(tasks), r["scan"], "  errors: " + bad if bad else ""),
                  file=sys.stderr, flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    wall = time.perf_counter() - t0

    summary = summarise(results, methods, labels, protocol)
    comp = comparison(summary)
    for m in methods:
        print(method_text(m, summary[m]))
        print()
    print("Summary: {} scans in {}, model {}, {} job(s), {:.1f} s".format(
        len(tasks), args.data, model_path, jobs, wall))
    if args.baselines:
        print("(b) template: {}".format("ICT-FaceKit mean face" if mean_face is not None else "model face template"))
    print(summary_table(summary))
    print(comparison_line(comp))
    if args.out:
        report = {"data": str(args.data), "model": str(model_path), "n_scans": len(tasks), "jobs": jobs,
                  "wall_seconds": wall, "snap": args.snap, "samplings": args.samplings,
                  "registration_template": None if not args.baselines else
                  ("ict_mean_face" if mean_face is not None else "model_template"),
                  "methods": summary, "comparison": comp, "comparison_line": comparison_line(comp)}
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print("wrote {}".format(args.out))
    return 1 if any(summary[m]["errors"] for m in methods) else 0


# ---------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------

# Runs in the fresh process: time `palnet predict` from inside, then report as JSON.
_SPEED_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from palnet.cli import main
argv = json.loads(sys.argv[1])
rc = main(argv)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("@@SPEED@@" + json.dumps({"rc": rc, "seconds": seconds, "ru_maxrss": peak, "platform": sys.platform,
                                "torch_imported": "torch" in sys.modules}))
"""


def _single_core_env() -> Dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                "NUMEXPR_NUM_THREADS"):
        env[var] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_DIR)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def speed_once(scan: str, model: Optional[str], out_dir: str) -> Dict[str, Any]:
    argv = ["predict", scan, "-o", out_dir, "--overwrite", "-q"] + (["--model", model] if model else [])
    cmd = [sys.executable, "-c", _SPEED_CHILD, json.dumps(argv)]
    pinned = sys.platform.startswith("linux") and shutil.which("taskset") is not None
    if pinned:
        cmd = ["taskset", "-c", "0"] + cmd
    proc = subprocess.run(cmd, env=_single_core_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("@@SPEED@@")), None)
    if proc.returncode != 0 or line is None:
        raise PalnetError("palnet predict failed (exit {}): {}".format(
            proc.returncode, (proc.stderr.strip().splitlines() or ["no output"])[-1]), scan)
    res = json.loads(line[len("@@SPEED@@"):])
    # ru_maxrss is in kilobytes on Linux, bytes on macOS.
    res["peak_mib"] = res["ru_maxrss"] / (1024.0 ** 2 if res["platform"] == "darwin" else 1024.0)
    res["pinned_to_cpu0"] = pinned
    if res["torch_imported"]:
        raise AssertionError("torch was imported by palnet predict")
    if res["rc"] != 0:
        raise PalnetError("palnet predict returned {}".format(res["rc"]), scan)
    return res


def run_speed(args) -> int:
    runs = []
    with tempfile.TemporaryDirectory(prefix="palnet_speed_") as tmp:
        for _ in range(max(1, args.repeats)):
            runs.append(speed_once(args.speed, args.model, tmp))
    secs = [r["seconds"] for r in runs]
    result = {"scan": str(args.speed), "model": args.model or "default", "repeats": len(runs),
              "median_seconds": float(np.median(secs)), "min_seconds": float(np.min(secs)),
              "peak_mib": float(max(r["peak_mib"] for r in runs)), "pinned_to_cpu0": runs[0]["pinned_to_cpu0"],
              "torch_imported": False, "runs": runs}
    print("palnet predict {} ({} fresh process(es), one core{}):".format(
        args.speed, len(runs), ", taskset -c 0" if result["pinned_to_cpu0"] else ""))
    print("  time in process, imports to landmarks written: median {:.3f} s, min {:.3f} s".format(
        result["median_seconds"], result["min_seconds"]))
    print("  peak resident memory: {:.0f} MiB".format(result["peak_mib"]))
    print("  torch imported: no")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print("wrote {}".format(args.out))
    return 0


def run_consistency(args) -> int:
    """Label-free checks on each scan; one line per scan and check, then the means."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import consistency
    from palnet.mesh_io import MESH_EXTENSIONS, read_mesh
    from palnet.modelfile import load_model
    from palnet.resources import default_model_path
    model = load_model(args.model or default_model_path())
    checks = tuple(c.strip() for c in args.checks.split(",") if c.strip())
    unknown = [c for c in checks if c not in consistency.CHECKS]
    if unknown:
        raise PalnetError("unknown check(s) {} (use {})".format(", ".join(unknown), ", ".join(consistency.CHECKS)))
    scans = []
    for item in args.consistency:
        p = Path(item)
        scans += sorted(q for q in p.rglob("*") if q.is_file() and any(
            q.name.lower().endswith(e) for e in MESH_EXTENSIONS)) if p.is_dir() else [p]
    results = []
    for path in scans[:args.n] if args.n else scans:
        try:
            name = path.parent.name if path.stem.lower() in ("scan", "mesh", "face") else path.stem
            r = consistency.check_scan(read_mesh(path), model, checks=checks, png_dir=args.png, name=name)
        except PalnetError as exc:
            print("{}: {}".format(path, exc))
            continue
        r["scan"] = str(path)
        results.append(r)
        parts = ["{} {}".format(c, "{:.2f} mm (max {:.1f})".format(r[c]["mean_mm"], r[c]["max_mm"])
                                if "mean_mm" in r[c] else r[c]["error"]) for c in consistency.CHECKS if c in r]
        print("{}: {}; {}".format(path.name, r["status"], ", ".join(parts)))
    summary = consistency.summarise(results)
    for check, s in summary.items():
        print("{:<10} mean {:.2f} mm, worst scan {:.2f} mm ({} scans)".format(check, s["mean_mm"], s["worst_scan_mm"],
                                                                         s["n_scans"]))
    if args.out:
        Path(args.out).write_text(json.dumps({"scans": results, "summary": summary}, indent=1) + "\n")
    return 0 if results else 2


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--data", help="folder of annotated scans (DIR/<id>/scan.ply + landmarks.mrk.json)")
    what.add_argument("--speed", metavar="SCAN", help="time `palnet predict SCAN` on one core")
    what.add_argument("--consistency", nargs="+", metavar="SCAN",
                      help="label-free checks (mirror, decimate, subdivide, crop, smaller, larger) on these scans "
                           "or folders")
    ap.add_argument("--png", default=None, help="a picture of each scan's answer in this folder (--data: close-ups "
                    "of the annotated landmarks, PAL-Net red and the truth green)")
    ap.add_argument("--checks", default="mirror,decimate,subdivide,crop,smaller,larger",
                    help="--consistency: which checks, comma-separated (default all)")
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--n", type=int, default=None, help="only the first N scans (sorted by id)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--baselines", action="store_true", help="also run baseline (b), template registration")
    ap.add_argument("--mean-face", default="auto",
                    help="template for (b): 'auto' (ICT-FaceKit neutral head if found, else the model's "
                         "face template), 'none' (the model's face template), or an ICT-FaceKit file")
    ap.add_argument("--snap", default=DEFAULT_SNAP, choices=SNAP_METHODS + (NO_SNAP,),
                    help="--data: how PAL-Net's and the baselines' points are put on the scan (default {})".format(
                        DEFAULT_SNAP))
    ap.add_argument("--samplings", type=int, default=DEFAULT_SAMPLINGS,
                    help="--data: PAL-Net's surface samplings per scan, averaged (default {})".format(DEFAULT_SAMPLINGS))
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes timed in --speed mode (default 3)")
    return ap


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.consistency:
            return run_consistency(args)
        return run_speed(args) if args.speed else run_accuracy(args)
    except PalnetError as exc:
        print("benchmark: error: {}".format(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
