"""Answers out of anatomical order: which stand-ins repair them best?

Usage: python tools/bench_order.py --data DIR [--n 200] [--jobs 2] [--out order.json]

For each annotated scan in DIR (DIR/<id>/scan.ply + landmarks.mrk.json, as `palnet synth`
writes them) the answer is taken as `palnet predict` has it just before the anatomical order is
checked (canonical mm), with the template registration's answer and the truth in the same frame.
Scans whose answer breaks the order by itself are repaired as they are ("as predicted"); every
other scan is measured as it is ("no mistake") and repaired after each of these mistakes, made on
purpose:

- ``ls_on_li``: the upper lip's point on the lower lip's (seen on a real face-only scan);
- ``sto_on_li``, ``li_on_sl``: the stomion 3 mm below the lower lip's point, that one 3 mm
  below the sublabiale;
- ``ps_below_pi``, ``pi_above_ps``: the right upper eyelid's point 2.5 mm below the lower one's,
  the left lower one's 2.5 mm above the upper one's;
- ``sba_above_t``: the right ear lobe 3 mm above the tragion;
- ``cph_below_sto``: the right crest of the philtrum 3 mm below the stomion;
- ``lips_down``: all three lip points 9 mm down the face.

Repairs compared, by the mean error over every landmark (mm, before snapping):

- ``none``: the answer as it is;
- ``registration, all``: the registration's answer for every landmark out of order and every
  one that then breaks the order with those (the rule until the fewest stand-ins were taken);
- ``registration, fewest`` and ``prior, fewest``: :func:`palnet.anatomy.restore_order` with the
  registration's answer, and with the shape prior filling the landmarks in from the others
  (:func:`palnet.pipeline.order_fill`; what `palnet predict` does, falling back to the registration).
"""
import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from bench_holes import annotated_folders

_W: dict = {}
MISTAKES = ("ls_on_li", "sto_on_li", "li_on_sl", "ps_below_pi", "pi_above_ps", "sba_above_t", "cph_below_sto",
            "lips_down")
REPAIRS = ("none", "registration, all", "registration, fewest", "prior, fewest")


def _init(model_path):
    from palnet.modelfile import load_model
    from palnet.resources import default_model_path
    _W["model"] = load_model(model_path or default_model_path())


def make_mistake(name, labels, points):
    """``points`` (L, 3; canonical mm) with the mistake ``name`` made (see the module's docstring)."""
    at = {lab: i for i, lab in enumerate(labels)}
    p = np.array(points, dtype=np.float64)
    down = np.array([0.0, 1.0, 0.0])
    moves = {"ls_on_li": ("ls", "li", 0.0), "sto_on_li": ("sto", "li", -3.0), "li_on_sl": ("li", "sl", -3.0),
             "ps_below_pi": ("ps_R", "pi_R", -2.5), "pi_above_ps": ("pi_L", "ps_L", 2.5),
             "sba_above_t": ("sba_R", "t_R", 3.0), "cph_below_sto": ("cph_R", "sto", -3.0)}
    if name == "lips_down":
        for lab in ("ls", "sto", "li"):
            p[at[lab]] -= 9.0 * down
        return p
    moved, onto, by = moves[name]
    p[at[moved]] = p[at[onto]] + by * down
    return p


def registration_for_all(labels, answer, registration):
    """The earlier rule: the registration for every landmark out of order and every one that then
    breaks the order with those, when that restores it; else the answer as it is."""
    from palnet.anatomy import out_of_order, out_of_order_labels
    at = {lab: i for i, lab in enumerate(labels)}
    taken = np.zeros(len(answer), dtype=bool)
    found = out_of_order(labels, answer)
    while found:
        more = [at[n] for n in out_of_order_labels(found) if not taken[at[n]]]
        if not more or not np.isfinite(registration[more]).all():
            return answer
        taken[more] = True
        found = out_of_order(labels, np.where(taken[:, None], registration, answer))
    return np.where(taken[:, None], registration, answer)


def repairs(labels, answer, registration, missing, fill):
    from palnet.anatomy import restore_order
    shown = np.where(missing[:, None], np.nan, answer)
    by_registration = restore_order(labels, shown, registration)
    by_prior = restore_order(labels, shown, lambda mask: fill(answer, mask))
    if not by_prior[1].any():
        by_prior = by_registration
    return {"none": answer, "registration, all": registration_for_all(labels, shown, registration),
            "registration, fewest": np.where(by_registration[1][:, None], by_registration[0], answer),
            "prior, fewest": np.where(by_prior[1][:, None], by_prior[0], answer)}


def _one(folder):
    from palnet import pipeline
    from palnet.anatomy import out_of_order
    from palnet.datatypes import unit_scale
    from palnet.landmark_io import read_landmarks
    from palnet.mesh_io import read_mesh
    model = _W["model"]
    seen = {}
    real_keep, real_prepare = pipeline.keep_anatomical_order, pipeline.prepare_scan

    def keep(labels, centres, missing, registration, fill=None):
        seen.update(answer=centres.copy(), missing=missing.copy(), registration=registration(), fill=fill)
        return real_keep(labels, centres, missing, registration, fill)

    def prepare(*args, **kwargs):
        seen["prep"] = real_prepare(*args, **kwargs)
        return seen["prep"]

    pipeline.keep_anatomical_order, pipeline.prepare_scan = keep, prepare
    try:
        pipeline.predict(read_mesh(os.path.join(folder, "scan.ply")), model)
    finally:
        pipeline.keep_anatomical_order, pipeline.prepare_scan = real_keep, real_prepare
    labels = list(model.metadata["protocol"]["labels"])
    truth = read_landmarks(os.path.join(folder, "landmarks.mrk.json"))
    canon = seen["prep"].alignment.to_canonical(truth.points * unit_scale(truth.units, "mm"))
    true = np.full((len(labels), 3), np.nan)
    for lab, x in zip(truth.labels, canon):
        if lab in labels:
            true[labels.index(lab)] = x
    answer, missing, reg, fill = seen["answer"], seen["missing"], seen["registration"], seen["fill"]

    def errors(points):
        e = np.linalg.norm(points - true, axis=1)
        return float(np.nanmean(np.where(missing, np.nan, e)))

    out = {"scan": Path(folder).name, "broke": bool(out_of_order(labels, np.where(missing[:, None], np.nan, answer)))}
    cases = [("as predicted", answer)] if out["broke"] else \
        [("no mistake", answer)] + [(m, make_mistake(m, labels, answer)) for m in MISTAKES]
    for name, pts in cases:
        out[name] = {k: errors(v) for k, v in repairs(labels, pts, reg, missing, fill).items()}
    return out


def summarise(rows):
    table = {}
    for case in ("as predicted", "no mistake") + MISTAKES:
        got = [r[case] for r in rows if case in r]
        if got:
            table[case] = {"n": len(got), **{k: float(np.mean([g[k] for g in got])) for k in REPAIRS}}
    return table


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder of annotated scans (DIR/<id>/scan.ply + landmarks.mrk.json)")
    p.add_argument("--n", type=int, default=200, help="the first N scans (sorted by id)")
    p.add_argument("--model", default=None)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default=None, help="also write every scan's figures as JSON")
    args = p.parse_args()
    folders = annotated_folders(args.data, args.n)
    with ProcessPoolExecutor(max(1, args.jobs), initializer=_init, initargs=(args.model,)) as pool:
        rows = list(pool.map(_one, folders))
    table = summarise(rows)
    print("{} scans; mean error over every landmark, mm, before snapping".format(len(rows)))
    print("{:<14} {:>4} ".format("mistake", "n") + " ".join("{:>21}".format(k) for k in REPAIRS))
    for case, t in table.items():
        print("{:<14} {:>4} ".format(case, t["n"]) + " ".join("{:>21.3f}".format(t[k]) for k in REPAIRS))
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "summary": table, "scans": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
