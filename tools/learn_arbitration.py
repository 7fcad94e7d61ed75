"""Learn when and where a model's answer should lean on template registration, on held-out scans.

Usage: python tools/learn_arbitration.py MODEL DATA_DIR [--out MODEL_OUT] [--n N]

For each annotated scan under DATA_DIR (a ``palnet synth`` folder, or any folder of scans with
landmark files) it computes, in the model's canonical frame, the network's answer exactly as
``palnet predict`` does before arbitration, the template registration
(``palnet.registration.register_template``: rigid alignment, then Coherent Point Drift of the
model's face template) and the truth; ``palnet.arbitrate.learn_rule`` then picks, per landmark,
how far the two answers must disagree before the registration counts, and how much. The rule is
stored in the model's metadata (``arbitration``) and the errors before and after are printed.
The scans must be held out from training; for the default model they are
``palnet synth --n 60 --seed 2000 --variety`` (see the model card).
"""
import argparse
import json
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402


def canonical_answers(mesh, truth, model):
    """(network (L, 3), registration (L, 3), truth (L, 3), spread (L,), status), canonical mm."""
    from palnet.pipeline import (model_arrays, network_answer, network_start, prepare_scan, scan_status,
                                 symmetric_registration, template_modes)
    template, mean, spacing, scale = model_arrays(model)
    prep = prepare_scan(mesh, template, mean, spacing, "auto", template_modes(template))
    swap, _, init = network_start(prep, model, mean)
    steps = int(model.metadata.get("refine_steps", 1))
    net, spread = network_answer(prep.tree, model, init, steps, scale)
    reg = symmetric_registration(prep.samples, template, mean, swap)
    true = prep.alignment.to_canonical(truth.in_units("mm").points)
    return net, reg, true, spread, scan_status(prep.alignment, mesh.n_vertices)[0]


def main(argv=None):
    from palnet.arbitrate import learn_rule, weights
    from palnet.priors import mirror_pairs
    from palnet.landmark_io import check_labels, read_landmarks
    from palnet.mesh_io import find_scan_pairs, read_mesh
    from palnet.modelfile import load_model, save_model
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("data")
    ap.add_argument("--out", default=None, help="write the model with its rule here (default: in place)")
    ap.add_argument("--n", type=int, default=None, help="only the first N scans")
    args = ap.parse_args(argv)
    model = load_model(args.model)
    labels = list(model.metadata["protocol"]["labels"])
    rows = []
    for scan_id, mesh_path, lm_path in find_scan_pairs(args.data)[:args.n]:
        truth = check_labels(read_landmarks(lm_path), labels, lm_path)
        rows.append(canonical_answers(read_mesh(mesh_path), truth, model))
    if not rows:
        raise SystemExit("{}: no annotated scans (mesh + landmark file pairs)".format(args.data))
    net, reg, true, spread = (np.stack([r[i] for r in rows]) for i in range(4))
    rule = learn_rule(net, reg, true, spread, swap=mirror_pairs(labels))
    w = np.stack([weights(rule, a, b) for a, b in zip(net, reg)])
    after = net + w[..., None] * (reg - net)
    err = lambda p: float(np.nanmean(np.linalg.norm(p - true, axis=2)))  # noqa: E731  (missing: left out)
    model.metadata["arbitration"] = dict(rule.to_dict(), data=str(args.data))
    save_model(args.out or args.model, model, half=True)
    print(json.dumps({"scans": len(rows), "network_mm": err(net), "registration_mm": err(reg),
                      "combined_mm": err(after), "trigger_spread_mm": rule.trigger_spread_mm,
                      "landmarks_with_a_rule": [lab for lab, o in zip(labels, rule.onset_mm) if np.isfinite(o)]},
                     indent=1))


if __name__ == "__main__":
    main()
