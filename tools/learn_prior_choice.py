"""Give a model a second, narrower shape prior learned on plain faces, and the rule that picks between them.

Usage: python tools/learn_prior_choice.py MODEL PLAIN_DATA CALIB_DIR [--out MODEL_OUT] [--jobs 2]

A model fine-tuned on faces beyond the head model's identity modes learns its shape prior from
them: broad, and on faces within those modes less sharp than a prior learned on them alone. This
tool learns that narrow prior for the model's own network, both rounds, exactly as ``palnet
train`` learns a model's priors: from PLAIN_DATA (annotated plain scans; for the shipped model
``palnet synth --n 1000 --seed 0``), split as training splits it (seed 0, a fifth validating),
the training scans giving the landmark spread S and the network's answers on the validation
scans its error N. It keeps S + N too, to tell how well the narrow prior explains a scan
(``palnet.priors.choice_distance``).

Then, on CALIB_DIR (held-out scans of both kinds: for the shipped model the arbitration's
calibration scans), every scan is predicted with the broad prior alone and with the narrow one
alone, and the threshold on that distance below which the narrow prior gives the smaller mean
error is kept (``prior_choice`` in the model's metadata; ``palnet.pipeline.network_answer``
weighs the two priors with it). The errors are printed.
"""
import argparse
import copy
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

WIDTH_PER_COORDINATE = 0.05  # the logistic step's width: a soft edge, a few hundredths of the threshold


def narrow_priors(model_path: str, plain_dir: str, cache: Path, jobs: int):
    """(first-round prior with its covariance, second-round prior) of the model's network on plain_dir."""
    from palnet import train as T
    from palnet.modelfile import load_model
    from palnet.priors import fit_shape_prior
    model = load_model(model_path)
    cfg, user = T._settings(None, 0, model_path)
    pairs, protocol, init_model = T._data_and_protocol(plain_dir, model_path)
    template = T._starting_point(cfg, user, init_model)
    labels = protocol.labels
    scans, _ = T._usable_scans(plain_dir, pairs, labels, template, cfg, cache, "auto", jobs, None, print)
    _, _, tr, val = T._split(scans, cfg["seed"], 0.2)
    (answers, _, truths), runs, _ = T._held_out_answers(model, val, None, None, cfg)
    first = fit_shape_prior(tr, answers, truths, covariance=True)
    _, _, second = T.second_round_prior(model, tr, first, answers, truths, runs, cfg, labels)
    print("narrow prior: {} training scans, {} validation scans; network error {:.2f} mm RMS per landmark, "
          "second round {:.2f}".format(len(tr), len(val), first["noise_rms_mm"], second["noise_rms_mm"]))
    return first, second


def _calibration_row(args):
    """(choice distance, error with the broad prior, error with the narrow one) of one scan, mm."""
    mesh_path, lm_path, broad_path, narrow_path = args
    from palnet.landmark_io import check_labels, read_landmarks
    from palnet.mesh_io import read_mesh
    from palnet.modelfile import load_model
    from palnet.pipeline import FIRST_ROUND_SAMPLES, model_arrays, network_start, predict, predict_with_spread, \
        prepare_scan, template_modes
    from palnet.priors import choice_score, prior_choice
    broad, narrow = load_model(broad_path), load_model(narrow_path)
    labels = list(broad.metadata["protocol"]["labels"])
    mesh = read_mesh(mesh_path)
    truth = check_labels(read_landmarks(lm_path), labels, lm_path).in_units("mm").points
    template, mean, spacing, scale = model_arrays(broad)
    prep = prepare_scan(mesh, template, mean, spacing, "auto", template_modes(template))
    swap, _, init = network_start(prep, broad, mean)
    x, _ = predict_with_spread(prep.tree, broad, init, int(broad.metadata.get("refine_steps", 1)), scale,
                               FIRST_ROUND_SAMPLES)
    d = choice_score(x, prior_choice(narrow), swap)
    errors = []
    for m in (broad, narrow):
        p = predict(mesh, m)
        errors.append(float(np.nanmean(np.linalg.norm(p.landmarks.in_units("mm").points - truth, axis=1))))
    return d, errors[0], errors[1]


def best_threshold(d: np.ndarray, broad: np.ndarray, narrow: np.ndarray):
    """(threshold, mean error) of the switch to the narrow prior below a threshold that errs least."""
    order = np.sort(d[np.isfinite(d)])
    cuts = np.concatenate([[0.0], 0.5 * (order[1:] + order[:-1]), [order[-1] * 1.01 if len(order) else 1.0]])
    scores = [float(np.mean(np.where(d < c, narrow, broad))) for c in cuts]
    k = int(np.argmin(scores))
    return float(cuts[k]), scores[k]


def main(argv=None):
    from palnet.mesh_io import find_scan_pairs
    from palnet.modelfile import Model, load_model, save_model
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("plain", help="annotated plain scans the narrow prior is learned on")
    ap.add_argument("calib", help="held-out annotated scans of both kinds the threshold is chosen on")
    ap.add_argument("--out", default=None, help="write the model with its prior choice here (default: in place)")
    ap.add_argument("--cache", default=None, help="preprocessing cache of PLAIN (default: OUT.plain.cache)")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)
    out = args.out or args.model
    if not find_scan_pairs(args.calib):
        raise SystemExit("{}: no annotated scans (mesh + landmark file pairs)".format(args.calib))
    first, second = narrow_priors(args.model, args.plain, Path(args.cache or out + ".plain.cache"), args.jobs)
    model = load_model(args.model)
    meta = copy.deepcopy(model.metadata)
    meta.pop("prior_choice", None)
    broad_path, narrow_path = out + ".broad.tmp.npz", out + ".narrow.tmp.npz"
    save_model(broad_path, Model(model.weights, model.config, meta), half=True)
    # the narrow prior alone: a threshold no scan reaches
    save_model(narrow_path, Model(model.weights, model.config, dict(meta, prior_choice={
        "shape_prior": first, "second_round": second, "threshold": 1e6, "width": WIDTH_PER_COORDINATE})), half=True)
    try:
        jobs = [(m, lm, broad_path, narrow_path) for _, m, lm in find_scan_pairs(args.calib)]
        with ProcessPoolExecutor(max(1, args.jobs)) as pool:
            rows = np.array(list(pool.map(_calibration_row, jobs)))
    finally:
        for p in (broad_path, narrow_path):
            if os.path.exists(p):
                os.remove(p)
    d, broad_err, narrow_err = rows.T
    threshold, score = best_threshold(d, broad_err, narrow_err)
    meta["prior_choice"] = {"shape_prior": first, "second_round": second, "threshold": round(threshold, 4),
                            "width": WIDTH_PER_COORDINATE, "n_calibration": len(rows)}
    save_model(out, Model(model.weights, model.config, meta), half=True)
    print(json.dumps({"scans": len(rows), "broad_mm": float(broad_err.mean()), "narrow_mm": float(narrow_err.mean()),
                      "chosen_mm": score, "threshold": threshold,
                      "narrow_share": float(np.mean(d < threshold))}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
