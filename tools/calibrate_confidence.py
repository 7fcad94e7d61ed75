"""Calibrate a model's landmark confidence on held-out annotated scans and store it in the model.

Usage: python tools/calibrate_confidence.py MODEL DATA_DIR [--out MODEL_OUT]

For each scan it predicts exactly as ``palnet predict`` does, pairs each
landmark's spread (disagreement of perturbed runs) with its true error, and
writes the table spread -> P(error <= 2 mm) into the model's metadata. For the
default model DATA_DIR is ``palnet synth --n 60 --seed 2000`` (held out from
training, seeds < 1000, and from the benchmark, seeds 1000-1199). It also prints
how well the confidence ranks errors.
"""
import argparse
import json

import numpy as np

from palnet.mesh_io import find_scan_pairs, read_mesh
from palnet.landmark_io import check_labels, read_landmarks
from palnet.modelfile import load_model, save_model
from palnet.pipeline import predict
from palnet.priors import calibrate_confidence


def errors_mm(pred, truth) -> np.ndarray:
    """Each landmark's error in mm, as the spreads are: a prediction is in its scan's units
    and a landmark file in the units it states, which may differ from each other."""
    return np.linalg.norm(pred.landmarks.in_units("mm").points - truth.in_units("mm").points, axis=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--out", default=None, help="write the calibrated model here (default: in place)")
    args = ap.parse_args()
    model = load_model(args.model)
    labels = list(model.metadata["protocol"]["labels"])
    spreads, errors = [], []
    for scan_id, mesh_path, lm_path in find_scan_pairs(args.data):
        pred = predict(read_mesh(mesh_path), model)
        truth = check_labels(read_landmarks(lm_path), labels, lm_path)
        spreads.append(pred.spread_mm)
        errors.append(errors_mm(pred, truth))
    if not spreads:
        raise SystemExit("{}: no annotated scans (mesh + landmark file pairs)".format(args.data))
    spreads, errors = np.concatenate(spreads), np.concatenate(errors)
    known = np.isfinite(errors)  # a landmark missing from the scan (or its truth) has no error
    spreads, errors = spreads[known], errors[known]
    table = calibrate_confidence(spreads, errors)
    model.metadata["confidence"] = dict(table, data=str(args.data))
    save_model(args.out or args.model, model, half=True)
    order = np.argsort(spreads)
    tenth = max(1, len(order) // 10)
    print(json.dumps({"table": table, "most_confident_10pct_error_mm": float(errors[order[:tenth]].mean()),
                      "least_confident_10pct_error_mm": float(errors[order[-tenth:]].mean())}, indent=1))


if __name__ == "__main__":
    main()
