"""Robustness matrix: the same heads in any pose, units, crop and with spikes, against
the realistic default pose.

Usage: python tools/bench_robust.py [--seed 1000] [--n 500] [--spikes 0.02] [--sizes 0.75,1.3] [--jobs 2]
       [--out robust.json]

For each seed (held-out seeds are 1000 and above) two scans of the same head are
generated (``palnet.synth.generate_scan``): the reference, as in the test set
(realistic pose, mm, the default random crop, no spikes), and a variant: a
uniformly random rotation and position, units mm/cm/m, crop face/head/shoulders
(the nine combinations in turn) and ``--spikes`` of its vertices turned into
spikes; with ``--sizes LO,HI`` the variant's head is also scaled about its centre by a factor
drawn for each seed between LO and HI (evenly in its logarithm: a child's face, a larger one),
its errors scaled back to the head's own size. Both are predicted exactly as ``palnet predict``
does. Reported: the
point-wise error of both sets over the landmarks both placed (a crop may leave some
missing), their difference (the target: within 0.3 mm),
the same per units, per crop and per size, and flips: a variant whose predicted left-right
(mean of the *_L minus the *_R landmarks) or up-down (glabella minus menton)
direction points against the truth's.
"""
import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

UNITS = ("mm", "cm", "m")
CROPS = ("face", "head", "shoulders")
SIZE_BINS = (("under 0.9", 0.0, 0.9), ("0.9-1.1", 0.9, 1.1), ("over 1.1", 1.1, np.inf))
_W: dict = {}


def _init(model_path, spikes):
    from palnet.modelfile import load_model
    from palnet.resources import default_model_path
    from palnet.synth import load_ict
    _W.update(model=load_model(model_path or default_model_path()), ict=load_ict(), spikes=spikes)


def _axes(points: np.ndarray, labels):
    idx = {lab: i for i, lab in enumerate(labels)}
    left = [idx[lab] for lab in labels if lab.endswith("_L")]
    right = [idx[lab[:-2] + "_R"] for lab in labels if lab.endswith("_L")]
    lateral = np.nanmean(points[left], axis=0) - np.nanmean(points[right], axis=0)  # missing ones left out
    vertical = points[idx["g"]] - points[idx["me"]]
    return lateral, vertical


def _one(task):
    from palnet.datatypes import Mesh
    from palnet.pipeline import predict
    from palnet.synth import generate_scan
    seed, units, crop, size = task
    out = {"seed": seed, "units": units, "crop": crop, "size": size}
    for name, kw in (("reference", {}),
                     ("variant", dict(pose="any", units=units, crop=crop, spikes=_W["spikes"]))):
        try:
            mesh, truth, _ = generate_scan(seed, _W["ict"], **kw)
            points, factor = truth.points, size if name == "variant" else 1.0
            if factor != 1.0:
                centre = mesh.vertices.mean(axis=0)
                mesh = Mesh((mesh.vertices - centre) * factor + centre, mesh.triangles, mesh.units, mesh.source)
                points = (points - centre) * factor + centre
            t0 = time.perf_counter()
            pred = predict(mesh, _W["model"])
            seconds = time.perf_counter() - t0
            scale = {"mm": 1.0, "cm": 10.0, "m": 1000.0}[truth.units] / factor  # errors in mm, at the head's size
            err = np.linalg.norm(pred.landmarks.points - points, axis=1) * scale
            lat_p, up_p = _axes(pred.landmarks.points, truth.labels)
            lat_t, up_t = _axes(truth.points, truth.labels)
            out[name] = {"pointwise_mm": float(np.nanmean(err)), "errors_mm": [float(e) for e in err],
                         "status": pred.status, "seconds": seconds,
                         "n_vertices": mesh.n_vertices, "fit_rms_mm": pred.alignment.rms_mm,
                         "inlier_fraction": pred.alignment.inlier_fraction, "spikes_removed": pred.spikes_removed,
                         "flip_lr": bool(lat_p @ lat_t < 0), "flip_ud": bool(up_p @ up_t < 0)}
        except Exception as exc:  # one failure is a result, not the end of the run
            out[name] = {"error": "{}: {}".format(type(exc).__name__, exc)}
    return out


def _paired(row):
    """(reference, variant) point-wise mm over the landmarks both placed (a missing one, NaN,
    has no error: a face-only crop lacks the ears that the whole head shows)."""
    ref, var = np.array(row["reference"]["errors_mm"]), np.array(row["variant"]["errors_mm"])
    both = np.isfinite(ref) & np.isfinite(var)
    return float(ref[both].mean()), float(var[both].mean())


def summarise(rows):
    ok = [r for r in rows if "error" not in r["reference"] and "error" not in r["variant"]]
    pairs = np.array([_paired(r) for r in ok]).reshape(-1, 2)
    ref, var = pairs[:, 0], pairs[:, 1]
    s = {"n": len(rows), "n_compared": len(ok),
         "errors": [r for r in rows if r not in ok],
         "reference_mm": float(ref.mean()), "variant_mm": float(var.mean()),
         "difference_mm": float(var.mean() - ref.mean()),
         "median_abs_paired_difference_mm": float(np.median(np.abs(var - ref))),
         "flips_lr": sum(r["variant"]["flip_lr"] for r in ok), "flips_ud": sum(r["variant"]["flip_ud"] for r in ok),
         "reference_flips": sum(r["reference"]["flip_lr"] or r["reference"]["flip_ud"] for r in ok),
         "variant_not_ok": sum(r["variant"]["status"] != "ok" for r in ok),
         "reference_not_ok": sum(r["reference"]["status"] != "ok" for r in ok)}
    for key, values in (("units", UNITS), ("crop", CROPS)):
        s["by_" + key] = {}
        for v in values:
            sel = [i for i, r in enumerate(ok) if r[key] == v]
            if sel:
                s["by_" + key][v] = {"n": len(sel), "reference_mm": float(ref[sel].mean()),
                                     "variant_mm": float(var[sel].mean()),
                                     "difference_mm": float(var[sel].mean() - ref[sel].mean())}
    s["by_size"] = {}
    for label, lo, hi in SIZE_BINS:
        sel = [i for i, r in enumerate(ok) if lo <= r.get("size", 1.0) < hi]
        if sel and any(r.get("size", 1.0) != 1.0 for r in ok):
            s["by_size"][label] = {"n": len(sel), "reference_mm": float(ref[sel].mean()),
                                   "variant_mm": float(var[sel].mean()),
                                   "difference_mm": float(var[sel].mean() - ref[sel].mean())}
    return s


def _sizes(text: str, seed: int, n: int) -> list:
    if not text:
        return [1.0] * n
    lo, hi = (float(x) for x in text.split(","))
    if not 0.0 < lo <= hi:
        raise SystemExit("--sizes: two factors LO,HI with 0 < LO <= HI, not {}".format(text))
    rng = np.random.default_rng(seed)
    return [float(x) for x in np.exp(rng.uniform(np.log(lo), np.log(hi), n))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--spikes", type=float, default=0.02)
    ap.add_argument("--model", default=None)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=None, help="write every scan's figures and the summary as JSON here")
    ap.add_argument("--sizes", default="", metavar="LO,HI",
                    help="also scale each variant's head by a factor between LO and HI (e.g. 0.75,1.3)")
    args = ap.parse_args()
    combos = [(u, c) for u in UNITS for c in CROPS]
    sizes = _sizes(args.sizes, args.seed, args.n)
    tasks = [(s, *combos[i % len(combos)], sizes[i]) for i, s in enumerate(range(args.seed, args.seed + args.n))]
    t0 = time.perf_counter()
    rows = []
    with ProcessPoolExecutor(args.jobs, initializer=_init, initargs=(args.model, args.spikes)) as pool:
        for i, row in enumerate(pool.map(_one, tasks, chunksize=2), 1):
            rows.append(row)
            if i % 25 == 0 or i == len(tasks):
                print("{}/{} scans, {:.0f} s".format(i, len(tasks), time.perf_counter() - t0), flush=True)
    s = summarise(rows)
    s["wall_seconds"] = time.perf_counter() - t0
    s["spikes"] = args.spikes
    s["sizes"] = args.sizes or None
    print("\nheads: {n_compared} of {n}; reference (realistic pose, mm) {reference_mm:.3f} mm, variant (any "
          "rotation, units, crop, spikes{sized}) {variant_mm:.3f} mm: difference {difference_mm:+.3f} mm "
          "(median paired |difference| {median_abs_paired_difference_mm:.3f} mm)".format(
              sized=", size {}".format(args.sizes) if args.sizes else "", **s))
    print("flips: left-right {flips_lr}, up-down {flips_ud} of {n_compared} variants (reference: {reference_flips}); "
          "status not ok: variant {variant_not_ok}, reference {reference_not_ok}".format(**s))
    for key in ("by_units", "by_crop", "by_size"):
        for v, d in s[key].items():
            print("  {:<10} n={:<4} reference {:.3f}  variant {:.3f}  difference {:+.3f} mm".format(
                v, d["n"], d["reference_mm"], d["variant_mm"], d["difference_mm"]))
    for r in s["errors"]:
        print("error: seed {}: {}".format(r["seed"], r["reference"].get("error") or r["variant"].get("error")))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": s, "scans": rows}, f, indent=1)
        print("wrote " + os.fspath(args.out))


if __name__ == "__main__":
    main()
