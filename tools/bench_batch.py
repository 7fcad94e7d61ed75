"""A batch of N scans of which 5 are broken: it must finish, list the 5 with reasons, keep the rest.

Usage: python tools/bench_batch.py DATA_DIR WORK_DIR [--n 100] [--jobs 2]

DATA_DIR is a ``palnet synth`` folder (DATA_DIR/<id>/scan.ply). The first N-5
scans are linked (or copied) into WORK_DIR/scans next to 5 broken files (empty,
not a mesh, NaN coordinates, a PLY cut off in the middle, a single triangle);
``palnet predict`` then runs on the folder and the summary is checked.
"""
import argparse
import csv
import os
import shutil
import sys
import time
from pathlib import Path

from palnet.batch import SUMMARY_NAME
from palnet.cli import main as palnet_main

PLY_NAN = ("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
           "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\nnan 1 0\n0 inf 1\n3 0 1 2\n")
ONE_TRIANGLE = ("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
                "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data")
    ap.add_argument("work")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    work = Path(args.work)
    if work.exists():
        sys.exit("{}: exists; give a new folder".format(work))
    scans = work / "scans"
    scans.mkdir(parents=True)
    good = sorted(Path(args.data).glob("*/scan.ply"))[: args.n - 5]
    for p in good:
        dst = scans / (p.parent.name + ".ply")
        try:
            os.link(p, dst)
        except OSError:
            shutil.copyfile(p, dst)
    (scans / "broken_empty.ply").write_bytes(b"")
    (scans / "broken_not_a_mesh.stl").write_text("solid nothing\nthis is not a mesh\n")
    (scans / "broken_nan.ply").write_text(PLY_NAN)
    (scans / "broken_one_triangle.ply").write_text(ONE_TRIANGLE)
    whole = good[0].read_bytes()
    (scans / "broken_cut_off.ply").write_bytes(whole[: len(whole) // 3])
    out = work / "out"
    t0 = time.perf_counter()
    rc = palnet_main(["predict", str(scans), "-o", str(out), "-q", "--jobs", str(args.jobs)])
    wall = time.perf_counter() - t0
    with open(out / SUMMARY_NAME, newline="") as f:
        rows = list(csv.DictReader(f))
    errors = [r for r in rows if r["status"] == "error"]
    written = [p for p in out.iterdir() if p.name.endswith(".mrk.json")]
    print("\n{} scans, {} jobs: finished in {:.1f} s (exit status {})".format(len(rows), args.jobs, wall, rc))
    print("statuses: " + ", ".join("{} {}".format(sum(r["status"] == s for r in rows), s)
                                   for s in sorted({r["status"] for r in rows})))
    print("landmark files written: {}".format(len(written)))
    print("errors listed in {}:".format(SUMMARY_NAME))
    for r in errors:
        print("  {}: {}".format(r["scan"], r["message"]))
    ok = len(rows) == args.n and len(errors) == 5 and all(r["scan"].startswith("broken_") for r in errors) \
        and len(written) == args.n - 5
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
