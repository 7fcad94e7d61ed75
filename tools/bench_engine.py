"""Benchmark the NumPy engine on one CPU core: forward time, parameter count, model file size.

    python tools/bench_engine.py [--landmarks 50] [--repeats 30]

Prints a Markdown table. Weights are random: timings do not
depend on their values. Thread counts are pinned to 1 before NumPy loads, so the
numbers are per core; set OMP_NUM_THREADS yourself to override.
"""
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "PALNetLandmarks"))
from palnet.engine import NetworkConfig, block_points, expected_weight_shapes, forward  # noqa: E402
from palnet.modelfile import Model, load_model, save_model  # noqa: E402


def median_ms(fn, repeats):
    fn()  # warm-up (allocations, BLAS init)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--landmarks", type=int, default=50)
    ap.add_argument("--patch-sizes", type=int, nargs="+", default=[100, 200, 256, 400])
    ap.add_argument("--fc", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print("OMP_NUM_THREADS={}, NumPy {}, L={}, soft attention, widths 32/64/128, pools 5/5/4\n".format(
        os.environ["OMP_NUM_THREADS"], np.__version__, args.landmarks))
    print("| P | points per block | fc | parameters | fc1 share | float16 file | load | forward B=1 | forward B=8, per scan |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for p in args.patch_sizes:
            for fc in args.fc:
                config = NetworkConfig(n_landmarks=args.landmarks, patch_size=p, fc=fc)
                shapes = expected_weight_shapes(config)
                weights = {k: (rng.standard_normal(s) * 0.05).astype(np.float32) for k, s in shapes.items()}
                n_params = sum(int(np.prod(s)) for s in shapes.values())
                path = os.path.join(tmp, "m.npz")
                save_model(path, Model(weights, config), half=True)
                load_ms = median_ms(lambda: load_model(path), max(3, args.repeats // 5))
                x1 = rng.standard_normal((1, args.landmarks, p, 3)).astype(np.float32)
                x8 = rng.standard_normal((8, args.landmarks, p, 3)).astype(np.float32)
                t1 = median_ms(lambda: forward(weights, config, x1), args.repeats)
                t8 = median_ms(lambda: forward(weights, config, x8), max(3, args.repeats // 3)) / 8
                print("| {} | {} | {} | {:,} | {:.0f} % | {:.1f} MB | {:.0f} ms | {:.1f} ms | {:.1f} ms |".format(
                    p, "/".join(map(str, block_points(config))), fc, n_params,
                    100.0 * np.prod(shapes["fc1.weight"]) / n_params, os.path.getsize(path) / 1e6,
                    load_ms, t1, t8))


if __name__ == "__main__":
    main()
