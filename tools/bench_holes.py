"""Holes beside landmarks: do they make the answer worse, and does the confidence follow?

Usage: python tools/bench_holes.py --data DIR [--n 60] [--radius 3,7] [--gap 0.5,3] [--per-scan 4]
                                   [--jobs 2] [--out holes.json]

For each annotated scan in DIR (DIR/<id>/scan.ply + landmarks.mrk.json, as `palnet synth`
writes them), up to ``--per-scan`` landmarks at least 30 mm apart (the ears left out) each get
a hole beside them: every vertex within a radius drawn from ``--radius`` (mm) of a centre whose
distance to the landmark is that radius plus a gap drawn from ``--gap`` (so the hole's edge passes
that far from the landmark, which stays on the surface). The scan and its holed copy are both
predicted as `palnet predict` does. Reported for the landmarks beside a hole: the mean error
and the share within 2 mm with and without the hole, the mean confidence (the calibrated chance
of lying within 2 mm) with and without, and how often the holed ones are reported missing; and
the error of the other landmarks, with and without. Seeded by the scan's place in the sorted
list: the same call gives the same holes.
"""
import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

EAR_PREFIXES = ("t_", "sa_", "sba_", "pa_", "obs_")
_W: dict = {}


def _init(model_path):
    from palnet.modelfile import load_model
    from palnet.resources import default_model_path
    _W["model"] = load_model(model_path or default_model_path())


def _range(text):
    lo, hi = (float(x) for x in text.split(","))
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError("give LOW,HIGH with 0 <= LOW <= HIGH, not {!r}".format(text))
    return lo, hi


def cut_holes(vertices, triangles, landmarks, labels, rng, per_scan, radius, gap):
    """(vertices, triangles) with a hole beside each of up to ``per_scan`` landmarks, and
    [(landmark index, radius, gap)] of the holes made."""
    v = np.asarray(vertices, dtype=np.float64)
    candidates = [i for i, lab in enumerate(labels)
                  if not lab.startswith(EAR_PREFIXES) and np.isfinite(landmarks[i]).all()]
    rng.shuffle(candidates)
    targets = []
    for i in candidates:
        if len(targets) < per_scan and all(np.linalg.norm(landmarks[i] - landmarks[j]) > 30.0 for j in targets):
            targets.append(i)
    drop, made = np.zeros(len(v), bool), []
    for i in targets:
        r, g = rng.uniform(*radius), rng.uniform(*gap)
        ring = np.flatnonzero(np.abs(np.linalg.norm(v - landmarks[i], axis=1) - (r + g)) < 0.5)
        if not len(ring):
            continue
        drop |= np.linalg.norm(v - v[rng.choice(ring)], axis=1) < r
        made.append((int(i), float(r), float(g)))
    from palnet.geometry import drop_unused
    kept = np.asarray(triangles)[~drop[np.asarray(triangles)].any(axis=1)]
    nv, nt = drop_unused(v, kept)
    return nv, nt, made


def _one(task):
    from palnet.datatypes import Mesh
    from palnet.landmark_io import read_landmarks
    from palnet.mesh_io import read_mesh
    from palnet.pipeline import predict
    number, folder, per_scan, radius, gap = task
    mesh = read_mesh(os.path.join(folder, "scan.ply"))
    truth = read_landmarks(os.path.join(folder, "landmarks.mrk.json"))
    labels = list(truth.labels)
    v, t, holes = cut_holes(mesh.vertices, mesh.triangles, truth.points, labels, np.random.default_rng(number),
                            per_scan, radius, gap)
    out = {"scan": Path(folder).name, "holes": holes}
    for name, m in (("plain", mesh), ("holed", Mesh(v, t, mesh.units, mesh.source))):
        pred = predict(m, _W["model"])
        err = np.linalg.norm(pred.landmarks.points - truth.points, axis=1)
        out[name] = {"errors_mm": [None if not np.isfinite(e) else float(e) for e in err],
                     "confidence": [float(c) for c in pred.landmarks.confidence], "status": pred.status}
    return out


def summarise(rows):
    near, other = [], []
    for r in rows:
        beside = {i for i, _, _ in r["holes"]}
        for i in range(len(r["plain"]["errors_mm"])):
            pair = (r["plain"]["errors_mm"][i], r["holed"]["errors_mm"][i],
                    r["plain"]["confidence"][i], r["holed"]["confidence"][i])
            (near if i in beside else other).append(pair)

    def stats(pairs):
        a = np.array([[np.nan if x is None else x for x in p] for p in pairs], dtype=np.float64).reshape(-1, 4)
        both = np.isfinite(a[:, 0]) & np.isfinite(a[:, 1])
        b = a[both]
        return {"n": int(len(a)), "missing_when_holed": int((~np.isfinite(a[:, 1]) & np.isfinite(a[:, 0])).sum()),
                "error_mm": [float(b[:, 0].mean()), float(b[:, 1].mean())] if len(b) else None,
                "within_2mm": [float((b[:, 0] < 2).mean()), float((b[:, 1] < 2).mean())] if len(b) else None,
                "confidence": [float(b[:, 2].mean()), float(b[:, 3].mean())] if len(b) else None}

    return {"beside_a_hole": stats(near), "others": stats(other)}


def annotated_folders(data, n: int) -> list:
    """The first ``n`` folders DIR/<id> (sorted by id) holding scan.ply + landmarks.mrk.json, as
    ``palnet synth`` writes them; none is an error naming DIR (SystemExit)."""
    if not Path(data).is_dir():
        raise SystemExit("{}: no such folder".format(data))
    folders = sorted(str(d) for d in Path(data).iterdir()
                     if (d / "scan.ply").is_file() and (d / "landmarks.mrk.json").is_file())[:n]
    if not folders:
        raise SystemExit("{}: no annotated scans (DIR/<id>/scan.ply + landmarks.mrk.json)".format(data))
    return folders


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder of annotated scans (DIR/<id>/scan.ply + landmarks.mrk.json)")
    p.add_argument("--n", type=int, default=60, help="the first N scans (sorted by id)")
    p.add_argument("--radius", type=_range, default=(3.0, 7.0), help="hole radius range, mm (default 3,7)")
    p.add_argument("--gap", type=_range, default=(0.5, 3.0),
                   help="range of the distance from the landmark to the hole's edge, mm (default 0.5,3)")
    p.add_argument("--per-scan", type=int, default=4, help="holes per scan, each beside another landmark")
    p.add_argument("--model", default=None)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=None, help="also write every scan's errors and confidences as JSON")
    args = p.parse_args()
    folders = annotated_folders(args.data, args.n)
    tasks = [(k, f, args.per_scan, args.radius, args.gap) for k, f in enumerate(folders)]
    with ProcessPoolExecutor(max(1, args.jobs), initializer=_init, initargs=(args.model,)) as pool:
        rows = list(pool.map(_one, tasks))
    s = summarise(rows)
    print("{} scans, holes {}-{} mm across the radius, their edge {}-{} mm from the landmark".format(
        len(rows), args.radius[0], args.radius[1], args.gap[0], args.gap[1]))
    print("{:<16} {:>5} {:>22} {:>22} {:>22} {:>8}".format("landmarks", "n", "error mm (no hole/hole)",
                                                          "within 2 mm", "confidence", "missing"))
    for name, st in (("beside a hole", s["beside_a_hole"]), ("all others", s["others"])):
        print("{:<16} {:>5} {:>22} {:>22} {:>22} {:>8}".format(
            name, st["n"], "{:.2f} / {:.2f}".format(*st["error_mm"]), "{:.2f} / {:.2f}".format(*st["within_2mm"]),
            "{:.2f} / {:.2f}".format(*st["confidence"]), st["missing_when_holed"]))
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "summary": s, "scans": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
