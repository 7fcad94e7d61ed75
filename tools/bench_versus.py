"""Two checkouts of palnet side by side on this machine: the same jobs, alternated, as ratios.

    python tools/bench_versus.py OLD_CHECKOUT NEW_CHECKOUT --scan SCAN.ply --batch DIR [--dense BIG.ply] [--repeats 5]

Each job runs the checkout's own ``palnet`` command line in a fresh process (its package
folder first on PYTHONPATH), old and new taking turns so that the machine's drift falls on
both alike. Jobs:
  scan    one scan, whole process (imports, model, scan, prediction, writing), one core:
          pinned to CPU 0 where ``taskset`` exists, one BLAS thread;
  batch   every mesh in DIR (e.g. 10 scans) with ``--jobs 2`` in this shell's environment as it
          is (no thread settings added: what a user who types the command gets);
  dense   one dense scan (e.g. 2.7M vertices) as the scan job, with the process's peak memory.
Each prints wall seconds; the table gives medians and new/old ratios.

``--cached-bytecode`` lets the children write and reuse compiled bytecode (``__pycache__`` in the
checkouts), as an installed package or any Python left to its defaults does, and runs each
checkout once before timing; without it they run in this shell's environment as it is, which may
forbid that (PYTHONDONTWRITEBYTECODE): then every run compiles every module it imports, and the
checkout with more modules pays more for it.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")


CACHED_BYTECODE = False  # see --cached-bytecode


def _env(checkout: Path, one_thread: bool) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(checkout / "PALNetLandmarks")
    if CACHED_BYTECODE:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    if one_thread:
        for var in THREAD_VARIABLES:
            env[var] = "1"
    return env


# Runs palnet's command line and prints the peak resident memory (MiB) of the process or of
# its largest worker process, whichever is more, last on stderr.
_PEAK = ("import resource, runpy, sys\n"
         "try:\n    runpy.run_module('palnet', run_name='__main__', alter_sys=True)\n"
         "finally:\n    peak = max(resource.getrusage(w).ru_maxrss for w in (resource.RUSAGE_SELF, "
         "resource.RUSAGE_CHILDREN))\n"
         "    sys.stderr.write('\\npeak_mib %.1f\\n' % (peak / (1024.0 if sys.platform != 'darwin' else 1024.0 ** 2)))\n")


def _run(checkout: Path, argv, one_core: bool, peak: bool = False) -> dict:
    cmd = [sys.executable] + (["-c", _PEAK] if peak else ["-m", "palnet"]) + argv
    if one_core and sys.platform.startswith("linux") and shutil.which("taskset"):
        cmd = ["taskset", "-c", "0"] + cmd
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(checkout, one_core), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          universal_newlines=True, cwd=str(checkout))
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit("{} failed in {}: {}".format(" ".join(argv), checkout, proc.stderr.strip()[-400:]))
    out = {"seconds": seconds}
    if peak:
        out["peak_mib"] = float(proc.stderr.rsplit("peak_mib", 1)[1].split()[0])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--scan", help="one mesh file for the single-scan job")
    p.add_argument("--batch", help="a folder of meshes for the batch job")
    p.add_argument("--dense", help="one dense mesh for the dense job (time and peak memory, one core)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None, help="also write the raw timings as JSON")
    p.add_argument("--cached-bytecode", action="store_true",
                   help="let the children cache compiled bytecode, as a default Python does (see above)")
    args = p.parse_args()
    global CACHED_BYTECODE
    CACHED_BYTECODE = args.cached_bytecode
    jobs = []  # (name, argv for an output folder, one core and thread, peak memory)
    if args.scan:
        jobs.append(("scan", lambda out: ["predict", str(Path(args.scan).resolve()), "-o", out, "-q"], True, False))
    if args.batch:
        jobs.append(("batch", lambda out: ["predict", str(Path(args.batch).resolve()), "-o", out, "-q",
                                           "--jobs", "2"], False, False))
    if args.dense:
        jobs.append(("dense", lambda out: ["predict", str(Path(args.dense).resolve()), "-o", out, "-q"], True, True))
    if not jobs:
        p.error("give --scan, --batch, --dense or several")
    results = {name: {"old": [], "new": [], "old_peak_mib": [], "new_peak_mib": []} for name, _, _, _ in jobs}
    with tempfile.TemporaryDirectory() as tmp:
        if args.cached_bytecode:  # one untimed run each: the bytecode is written, then reused
            for side in ("old", "new"):
                _run(getattr(args, side).resolve(), jobs[0][1](os.path.join(tmp, "warm-" + side)), jobs[0][2])
        for r in range(args.repeats):
            for name, argv, one_core, peak in jobs:
                for side in (("old", "new") if r % 2 == 0 else ("new", "old")):
                    out = os.path.join(tmp, "{}-{}-{}".format(name, side, r))
                    res = _run(getattr(args, side).resolve(), argv(out), one_core, peak)
                    results[name][side].append(res["seconds"])
                    note = ""
                    if peak:
                        results[name][side + "_peak_mib"].append(res["peak_mib"])
                        note = "  peak {:.0f} MiB".format(res["peak_mib"])
                    print("{:<6} {:<4} run {}: {:7.3f} s{}".format(name, side, r + 1, res["seconds"], note), flush=True)
    print("\njob     old s    new s   new/old   (medians of {} runs each)".format(args.repeats))
    for name in results:
        old, new = statistics.median(results[name]["old"]), statistics.median(results[name]["new"])
        line = "{:<6} {:7.3f}  {:7.3f}   {:6.2f}".format(name, old, new, new / old)
        if results[name]["old_peak_mib"]:
            line += "   peak {:.0f} -> {:.0f} MiB".format(max(results[name]["old_peak_mib"]),
                                                       max(results[name]["new_peak_mib"]))
        print(line)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
