"""Time one training epoch over N preprocessed (cached) synthetic scans with the default settings.

Usage: python tools/bench_train_epoch.py DATA_DIR [--n 500] [--cache DIR] [--threads 2] [--config cfg.json]
Preprocessing is done (or read from the cache) first and not timed: the target is
one epoch over 500 scans in at most 60 s on 2 CPU cores with patches cached.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from palnet.dataset import load_training_scans
from palnet.mesh_io import find_scan_pairs
from palnet.protocol import default_protocol
from palnet.resources import face_template_path
from palnet.train import merge_config


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--config", default=None)
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    cfg = merge_config(json.loads(Path(args.config).read_text()) if args.config else None)
    with np.load(face_template_path(), allow_pickle=False) as d:
        template = d["points"].astype(np.float64)
    pairs = find_scan_pairs(args.data)[: args.n]
    scans, problems = load_training_scans(pairs, default_protocol().labels, template, cfg["patch"]["spacing_mm"],
                                          Path(args.cache) if args.cache else None, jobs=args.threads)
    cfg["epochs"] = 1
    from palnet.train import fit
    t0 = time.perf_counter()
    fit(scans, scans[:1], default_protocol().labels, template, cfg, {"protocol": {"labels": default_protocol().labels}},
        log=lambda s: None)
    dt = time.perf_counter() - t0
    print("| scans | threads | patch size | fc | epoch (s) | target (s) |")
    print("|---|---|---|---|---|---|")
    print("| {} | {} | {} | {} | {:.1f} | 60 |".format(len(scans), args.threads, cfg["network"]["patch_size"],
                                                       cfg["network"]["fc"], dt))


if __name__ == "__main__":
    main()
