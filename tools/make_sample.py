"""Write the bundled sample scan: Resources/Samples/sample_face.ply + sample_face.mrk.json.

A held-out synthetic scan (seed >= 5000, never used for training or the
benchmark) small enough to ship (< 1 MB), derived from the ICT-FaceKit model
(MIT licence, (c) 2020 USC Institute for Creative Technologies).
Usage: python tools/make_sample.py [--ict PATH]
"""
import argparse
import json

from palnet.mesh_io import write_mesh
from palnet.landmark_io import write_landmarks
from palnet.resources import sample_landmarks_path, sample_scan_path
from palnet.synth import generate_scan, load_ict

FIRST_SEED = 5000
MAX_VERTICES = 25_000

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ict", default=None)
    args = ap.parse_args()
    ict = load_ict(args.ict)
    seed = FIRST_SEED
    while True:
        scan, lms, meta = generate_scan(seed, ict)
        if scan.n_vertices <= MAX_VERTICES and "forehead_cut_mm" in meta:
            break
        seed += 1
    out = sample_scan_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mesh(scan, out)
    write_landmarks(lms, sample_landmarks_path())
    meta.pop("identity_weights")
    (out.parent / "sample_face.meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    print("seed {}: {} vertices -> {}".format(seed, scan.n_vertices, out))
