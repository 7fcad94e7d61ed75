"""Benchmarks of the measurements: their error from predicted landmarks, cohort speed, arc accuracy.

Usage:
  python tools/bench_measurements.py errors --pred PRED_DIR --truth DATA_DIR [--out report.json] [--markdown]
  python tools/bench_measurements.py cohort --pred PRED_DIR [--n 1000] [--repeats 3]
  python tools/bench_measurements.py arcs
  python tools/bench_measurements.py list [--definitions JSON]

``errors``: DATA_DIR is a ``palnet synth`` folder (DATA_DIR/<id>/scan.ply + landmarks.mrk.json),
PRED_DIR what ``palnet predict DATA_DIR -o PRED_DIR`` wrote. Every measurement (the arcs too,
along each scan) is computed from the predicted and from the true landmarks; per measurement
the table gives the mean, median, 95th percentile and maximum absolute error, the bias, the mean
true value, the mean standard error palnet gives and how often the error lies within 1.96 SE.

``cohort``: N landmark files (PRED_DIR's, copied round) measured by ``palnet measure`` in a
fresh process on one thread: the wall-clock time from start to table written, median of
``--repeats`` runs, and the CPU time of the measuring alone in this process.

``arcs``: the length error of surface arcs on a sphere and a cylinder (known geodesics), of
the edge-graph shortest path alone and after straightening.

``list``: the definitions as a markdown table (docs/measurements.md has it).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def errors(args) -> None:
    from palnet.landmark_io import read_landmarks
    from palnet.measurements import load_definitions, measure_many
    from palnet.measurements.files import find_landmark_inputs
    from palnet.mesh_io import find_scan_pairs, read_mesh, scan_id_for
    defs = load_definitions(args.definitions)
    truth = {sid: (mesh, lm) for sid, mesh, lm in find_scan_pairs(args.truth)}
    pred = {scan_id_for(p): p for p in find_landmark_inputs([args.pred])}
    scans = sorted(set(truth) & set(pred))
    if not scans:
        sys.exit("no scan of {} has a prediction in {}".format(args.truth, args.pred))
    shape = (len(scans), len(defs))
    pv, tv, se = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    rim = np.zeros(shape, dtype=bool)  # an arc whose path (predicted or true) runs along a hole or cut
    t0 = time.perf_counter()
    for s, sid in enumerate(scans):
        p, t = read_landmarks(pred[sid]), read_landmarks(truth[sid][1])
        mesh = read_mesh(truth[sid][0], units=t.units)
        got_p, got_t = measure_many([p, t], defs, [mesh, mesh], samples=args.samples)
        pv[s] = [np.nan if m.value is None else m.value for m in got_p]
        tv[s] = [np.nan if m.value is None else m.value for m in got_t]
        se[s] = [np.nan if m.se is None else m.se for m in got_p]
        rim[s] = [("edge of a hole" in a.note) or ("edge of a hole" in b.note) for a, b in zip(got_p, got_t)]
        if (s + 1) % 20 == 0:
            print("{}/{} scans, {:.0f} s".format(s + 1, len(scans), time.perf_counter() - t0), file=sys.stderr)
    err = pv - tv
    report = {"n_scans": len(scans), "pred": str(args.pred), "truth": str(args.truth), "samples": args.samples,
              "measurements": {}}
    for k, m in enumerate(defs):
        e, ok = err[:, k], np.isfinite(err[:, k])
        if not ok.any():
            report["measurements"][m.id] = {"name": m.name, "kind": m.kind, "units": m.units, "n": 0}
            continue
        a = np.abs(e[ok])
        s_k = se[ok, k]
        has_se = np.isfinite(s_k)
        report["measurements"][m.id] = {
            "name": m.name, "kind": m.kind, "units": m.units, "n": int(ok.sum()),
            "mean_abs": float(a.mean()), "median_abs": float(np.median(a)), "p95_abs": float(np.percentile(a, 95)),
            "max_abs": float(a.max()), "bias": float(e[ok].mean()), "mean_true": float(np.nanmean(tv[ok, k])),
            "mean_se": float(s_k[has_se].mean()) if has_se.any() else None,
            "within_1.96_se": float(np.mean(a[has_se] <= 1.96 * s_k[has_se])) if has_se.any() else None}
        if m.kind == "arc":
            clean = ok & ~rim[:, k]
            report["measurements"][m.id]["away_from_holes"] = {
                "n": int(clean.sum()), "mean_abs": float(np.abs(e[clean]).mean()) if clean.any() else None,
                "max_abs": float(np.abs(e[clean]).max()) if clean.any() else None}
    report["per_scan"] = {sid: {"pred": _json_row(pv[s]), "true": _json_row(tv[s]), "se": _json_row(se[s])}
                          for s, sid in enumerate(scans)}
    report["ids"] = defs.ids
    report["seconds"] = time.perf_counter() - t0
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(markdown(report) if args.markdown else text(report))


def _json_row(values):
    return [None if not np.isfinite(v) else round(float(v), 4) for v in values]


def _arc_lines(report):
    lines = []
    for mid, r in _rows(report):
        clean = r.get("away_from_holes")
        if clean and clean["n"]:
            lines.append("{}: {} of {} scans with no hole or cut along the path (predicted or true): mean abs "
                         "error {:.2f} mm, max {:.2f} mm".format(mid, clean["n"], r["n"], clean["mean_abs"],
                                                                 clean["max_abs"]))
    return lines


def _rows(report):
    for mid, r in report["measurements"].items():
        if r["n"]:
            yield mid, r


def text(report) -> str:
    lines = ["{} scans: error of each measurement from predicted landmarks ({} SE samples)".format(
        report["n_scans"], report["samples"]),
        "{:<27} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7}".format(
            "measurement", "units", "mean", "median", "p95", "max", "bias", "true", "mean SE", "<1.96SE")]
    for mid, r in _rows(report):
        lines.append("{:<27} {:>5} {:8.2f} {:8.2f} {:8.2f} {:8.2f} {:+8.2f} {:9.2f} {:>8} {:>7}".format(
            mid, r["units"] or "-", r["mean_abs"], r["median_abs"], r["p95_abs"], r["max_abs"], r["bias"],
            r["mean_true"], "-" if r["mean_se"] is None else "{:.2f}".format(r["mean_se"]),
            "-" if r["within_1.96_se"] is None else "{:.0f} %".format(100 * r["within_1.96_se"])))
    return "\n".join(lines + _arc_lines(report))


def markdown(report) -> str:
    lines = ["| measurement | units | mean abs error | median | 95th pct | max | bias | mean true value | mean SE | "
             "within 1.96 SE |", "|---|---|---|---|---|---|---|---|---|---|"]
    for mid, r in _rows(report):
        lines.append("| `{}` | {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:+.2f} | {:.1f} | {} | {} |".format(
            mid, r["units"] or "-", r["mean_abs"], r["median_abs"], r["p95_abs"], r["max_abs"], r["bias"],
            r["mean_true"], "-" if r["mean_se"] is None else "{:.2f}".format(r["mean_se"]),
            "-" if r["within_1.96_se"] is None else "{:.0f} %".format(100 * r["within_1.96_se"])))
    return "\n".join(lines + [""] + ["- " + x for x in _arc_lines(report)])


def cohort(args) -> None:
    from palnet.measurements.files import find_landmark_inputs, measure_files
    files = find_landmark_inputs([args.pred])
    if not files:
        sys.exit("no landmark files in {}".format(args.pred))
    work = Path(tempfile.mkdtemp(prefix="palnet_cohort_"))
    try:
        folder = work / "faces"
        folder.mkdir()
        copies = []
        for i in range(args.n):
            src = files[i % len(files)]
            dst = folder / "F{:05d}{}".format(i, "".join(src.suffixes[-2:]) if src.name.endswith(".mrk.json")
                                              else src.suffix)
            shutil.copyfile(str(src), str(dst))
            copies.append(dst)
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
        walls = []
        for r in range(args.repeats):
            out = work / "table{}.csv".format(r)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "palnet", "measure", str(folder), "-o", str(out), "-q"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
            walls.append(time.perf_counter() - t0)
            if proc.returncode != 0:
                sys.exit("palnet measure failed ({}): {}".format(proc.returncode, proc.stderr.strip()))
        c0 = time.process_time()
        results = measure_files(copies)
        cpu = time.process_time() - c0
        values = sum(m.value is not None for m in results[0].measurements)
        print("{} landmark files, {} values each: palnet measure (fresh process, 1 thread) median {:.2f} s "
              "(runs: {}); measuring alone {:.2f} s of CPU in this process".format(
                  args.n, values, float(np.median(walls)), ", ".join("{:.2f}".format(w) for w in walls), cpu))
    finally:
        shutil.rmtree(str(work), ignore_errors=True)


def arcs(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "Testing"))
    from test_measure_arcs import cylinder, icosphere  # the test's known surfaces
    from palnet.measurements.surface import SurfaceGraph
    rng = np.random.default_rng(0)
    print("| surface | vertices | median edge | arcs | edge paths: mean / max error | straightened: mean / max "
          "error | time per arc |")
    print("|---|---|---|---|---|---|---|")
    r = 90.0
    for sub in (3, 4, 5):
        mesh = icosphere(r, sub)
        ends, truths = [], []
        while len(ends) < 30:
            a, b = rng.normal(size=(2, 3))
            a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
            angle = np.arccos(np.clip(a @ b, -1, 1))
            if 0.2 < angle < np.radians(120):
                ends.append(np.array([a, b]) * r)
                truths.append(r * angle)
        _row("sphere r 90 mm", mesh, ends, np.array(truths), SurfaceGraph)
    rc = 60.0
    for around, rings in ((45, 30), (90, 60), (180, 120)):
        mesh = cylinder(rc, 200.0, around, rings)
        ends, truths = [], []
        for _ in range(30):
            t1, t2 = rng.uniform(0, 2 * np.pi, 2)
            z1, z2 = rng.uniform(30, 170, 2)
            turn = abs((t2 - t1 + np.pi) % (2 * np.pi) - np.pi)
            truths.append(np.hypot(rc * turn, z2 - z1))
            ends.append(np.array([[rc * np.cos(t1), rc * np.sin(t1), z1], [rc * np.cos(t2), rc * np.sin(t2), z2]]))
        _row("cylinder r 60 mm", mesh, ends, np.array(truths), SurfaceGraph)


def _row(name, mesh, ends, truths, SurfaceGraph) -> None:
    graph = SurfaceGraph(mesh)
    raw = np.array([a.length for a in graph.arcs(ends, straighten=False)])
    t0 = time.perf_counter()
    taut = np.array([a.length for a in graph.arcs(ends)])
    per_arc = (time.perf_counter() - t0) / len(ends)
    e_raw, e_taut = 100 * (raw - truths) / truths, 100 * (taut - truths) / truths
    print("| {} | {} | {:.1f} mm | {} | {:+.2f} / {:.2f} % | {:+.3f} / {:.3f} % | {:.2f} s |".format(
        name, mesh.n_vertices, graph.edge_mm, len(ends), e_raw.mean(), np.abs(e_raw).max(), e_taut.mean(),
        np.abs(e_taut).max(), per_arc))


def listing(args) -> None:
    from palnet.measurements import load_definitions
    defs = load_definitions(args.definitions)
    print("| id | name | kind | landmarks | units | Farkas | group |")
    print("|---|---|---|---|---|---|---|")
    for m in defs:
        if m.kind == "ratio":
            what = "{} x `{}` / `{}`".format("{:g}".format(m.scale), *m.of) if m.scale != 1 else "`{}` / `{}`".format(*m.of)
        elif m.kind == "asymmetry":
            what = "region {}".format(m.region) if m.region else ("all" if not m.landmarks else " ".join(m.landmarks))
        elif m.kind == "projected":
            what = "{} on {}".format(" ".join(m.landmarks), m.axis)
        else:
            what = " ".join(m.landmarks)
        print("| `{}` | {} | {} | {} | {} | {} | {} |".format(m.id, m.name, m.kind, what, m.units or "-",
                                                           m.reference or "", m.group))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    e = sub.add_parser("errors")
    e.add_argument("--pred", required=True)
    e.add_argument("--truth", required=True)
    e.add_argument("--definitions", default=None)
    e.add_argument("--samples", type=int, default=200)
    e.add_argument("--out", default=None)
    e.add_argument("--markdown", action="store_true")
    e.set_defaults(func=errors)
    c = sub.add_parser("cohort")
    c.add_argument("--pred", required=True)
    c.add_argument("--n", type=int, default=1000)
    c.add_argument("--repeats", type=int, default=3)
    c.set_defaults(func=cohort)
    a = sub.add_parser("arcs")
    a.set_defaults(func=arcs)
    li = sub.add_parser("list")
    li.add_argument("--definitions", default=None)
    li.set_defaults(func=listing)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
