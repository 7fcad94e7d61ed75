"""How the way landmarks are put onto the scan matters on fine and coarse meshes.

Usage: python tools/bench_snap.py --data DIR [--n 40] [--fractions 1,0.1,0.03] [--jobs 2] [--out snap.json]

Each annotated scan in DIR (DIR/<id>/scan.ply + landmarks.mrk.json, as `palnet synth` writes
them) is predicted as it is and after VTK's quadric decimation to each of ``--fractions`` of its
triangles (1 = as it is), with every snap: the closest surface point, the nearest vertex, the
mean of the 12 nearest vertices and none. Quadric decimation places the vertices it keeps anew,
so a coarse copy has no vertex left where the generator put one. Reported per fraction and
snap: the mean point-wise error (mm) against the scan's true landmarks, which lie on the
original surface, and the median edge of the meshes.
"""
import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

SNAPS = ("surface", "nearest", "mean-k", "none")
_W: dict = {}


def _init(model_path):
    from palnet.modelfile import load_model
    from palnet.resources import default_model_path
    _W["model"] = load_model(model_path or default_model_path())


def decimated(mesh, fraction: float):
    """``mesh`` with about ``fraction`` of its triangles (VTK's quadric decimation)."""
    from vtkmodules.vtkFiltersCore import vtkQuadricDecimation
    from palnet.mesh_io import mesh_to_polydata, polydata_to_mesh
    f = vtkQuadricDecimation()
    f.SetInputData(mesh_to_polydata(mesh))
    f.SetTargetReduction(1.0 - fraction)
    f.Update()
    return polydata_to_mesh(f.GetOutput(), mesh.units, mesh.source)


def median_edge(mesh) -> float:
    v, t = mesh.vertices, mesh.triangles
    return float(np.median(np.linalg.norm(v[t[:, 0]] - v[t[:, 1]], axis=1)))


def scan_row(task):
    """{"<fraction>/<snap>": mean error mm, "<fraction>/edge": median edge mm} of one scan."""
    mesh_path, lm_path, fractions = task
    from palnet.landmark_io import read_landmarks
    from palnet.mesh_io import read_mesh
    from palnet.pipeline import predict
    mesh = read_mesh(mesh_path)
    truth = read_landmarks(lm_path).in_units("mm").points
    row = {}
    for fraction in fractions:
        m = mesh if fraction >= 1.0 else decimated(mesh, fraction)
        row["{:g}/edge".format(fraction)] = median_edge(m)
        for snap in SNAPS:
            p = predict(m, _W["model"], snap=snap)
            row["{:g}/{}".format(fraction, snap)] = float(np.nanmean(
                np.linalg.norm(p.landmarks.in_units("mm").points - truth, axis=1)))
    return row


def summarise(rows, fractions):
    out = []
    for fraction in fractions:
        key = "{:g}".format(fraction)
        out.append(dict({"fraction": fraction, "median_edge_mm": float(np.median([r[key + "/edge"] for r in rows]))},
                        **{snap: float(np.mean([r[key + "/" + snap] for r in rows])) for snap in SNAPS}))
    return out


def main(argv=None):
    from palnet.mesh_io import find_scan_pairs
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--fractions", default="1,0.1,0.03")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    fractions = [float(x) for x in args.fractions.split(",")]
    pairs = find_scan_pairs(args.data)[:args.n]
    tasks = [(str(m), str(lm), fractions) for _, m, lm in pairs]
    with ProcessPoolExecutor(max(1, args.jobs), initializer=_init, initargs=(args.model,)) as pool:
        rows = list(pool.map(scan_row, tasks))
    table = summarise(rows, fractions)
    print("{} scans; mean point-wise error (mm)".format(len(rows)))
    print("{:>9} {:>10}".format("fraction", "edge mm") + "".join("{:>10}".format(s) for s in SNAPS))
    for t in table:
        print("{:>9g} {:>10.2f}".format(t["fraction"], t["median_edge_mm"]) +
              "".join("{:>10.3f}".format(t[s]) for s in SNAPS))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"data": args.data, "n_scans": len(rows), "table": table}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
