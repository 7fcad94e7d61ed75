"""Training PAL-Net on any folder of annotated scans, with any landmark protocol (needs torch).

Paper settings: loss 0.6 x mean landmark error + 0.4 x mean absolute error of
all inter-landmark distances, Adam (lr 1e-3), ReduceLROnPlateau (factor 0.5,
patience 8), early stopping (patience 30) keeping the best weights, batch 16.
The network regresses each landmark's offset from its initial approximation;
training jitters that approximation (and turns each sample slightly) so the
network also corrects the residual error of the automatic alignment.

The initial approximation is the paper's mean shape, or (``"start": "shape"``,
the default) the mean shape moved with the face the aligner fitted: the face
template bends to each scan through its shape modes, and a linear map learned
on the training scans turns those mode coefficients into landmark offsets (see
priors.fit_landmark_modes).
"""
import copy
import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from scipy.spatial import cKDTree

from .augment import DEFAULT_AUGMENT
from .dataset import TrainingScan, load_training_scans
from .engine import NetworkConfig
from .errors import PalnetError
from .landmark_io import read_landmarks
from .mesh_io import find_scan_pairs
from .metrics import distancewise_errors, pointwise_errors
from .modelfile import METADATA_RANGES, Model, load_model, save_model
from .patches import extract_patches, initial_approximation
from .pipeline import network_answer, predict_with_spread, run_network
from .priors import (apply_shape_prior, calibrate_confidence, fit_landmark_modes, fit_shape_prior, landmark_modes,
                     mirror_pairs, shape_prior, starting_shape)
from .protocol import Protocol, default_protocol
from .resources import default_model_path, face_template_path

DEFAULT_CONFIG = {
    "network": {"patch_size": 200, "fc": 512, "widths": [32, 64, 128], "pools": [5, 5, 4],
                "dropout": 0.1, "attention": "soft", "attention_topk": 16},
    "patch": {"spacing_mm": 1.5, "scale_mm": 20.0},
    "refine_steps": 2,
    "start": "shape",  # "shape": the mean landmarks moved with the fitted face template; "mean": the paper's
    "shape_prior": True,  # combine the network's answer with the training landmarks' spread (needs validation scans)
    # passes of a second round of the network from the prior-corrected answer, then a prior of its own (0: none)
    "second_round": 2,
    "epochs": 100, "batch_size": 16, "lr": 1e-3, "plateau_factor": 0.5, "plateau_patience": 8,
    "early_stop_patience": 30, "loss_weights": [0.6, 0.4], "seed": 0,
    # near_fraction of the training starts lie near the truth (each landmark off by up to
    # near_mm), not near the mean shape: what the second and later refinement passes see.
    # mirror: the chance that a training example is shown as its mirror image (patches mirrored,
    # landmarks relabelled R <-> L), as predict shows half of its runs (pipeline.predict_with_spread).
    "jitter": {"landmark_mm": 2.0, "shift_mm": 2.5, "rotate_deg": 4.0, "near_fraction": 0.5, "near_mm": 3.0,
               "mirror": 0.5},
    "augment": dict(DEFAULT_AUGMENT),
}


# The type and range of every training setting: (int or float, low, high) inclusive, or the
# values allowed; LIST_SETTINGS take a list of such numbers. The settings a model file stores
# keep its ranges (modelfile.METADATA_RANGES), so whatever trains also loads. How the network's
# sizes fit together (patch_size against the pools) NetworkConfig checks when the model is built.
SETTING_RANGES = {
    "network.patch_size": (int,) + METADATA_RANGES["network.patch_size"],
    "network.fc": (int,) + METADATA_RANGES["network.fc"],
    "network.widths": (int,) + METADATA_RANGES["network.widths"],
    "network.pools": (int,) + METADATA_RANGES["network.pools"],
    "network.dropout": (float, 0.0, 0.99),
    "network.attention": ("soft", "topk", "none"),
    "network.attention_topk": (int, 1, 1_000_000),
    "patch.spacing_mm": (float,) + METADATA_RANGES["patch.spacing_mm"],
    "patch.scale_mm": (float,) + METADATA_RANGES["patch.scale_mm"],
    "refine_steps": (int,) + METADATA_RANGES["refine_steps"],
    "start": ("shape", "mean"),
    "shape_prior": (True, False),
    "second_round": (int, 0, METADATA_RANGES["second_round.refine_steps"][1]),
    "epochs": (int, 0, 100_000),
    "batch_size": (int, 1, 4096),
    "lr": (float, 1e-8, 1.0),
    "plateau_factor": (float, 0.01, 0.99),
    "plateau_patience": (int, 0, 100_000),
    "early_stop_patience": (int, 1, 100_000),
    "loss_weights": (float, 0.0, 100.0),
    "seed": (int, 0, 2 ** 32 - 1),
    "jitter.landmark_mm": (float, 0.0, 50.0),
    "jitter.shift_mm": (float, 0.0, 50.0),
    "jitter.rotate_deg": (float, 0.0, 180.0),
    "jitter.near_fraction": (float, 0.0, 1.0),
    "jitter.near_mm": (float, 0.0, 50.0),
    "jitter.mirror": (float, 0.0, 1.0),
    "augment.copies": (int, 0, 100),
    "augment.coarsen": (float, 0.0, 1.0),
    "augment.crop": (float, 0.0, 1.0),
    "augment.holes": (int, 0, 100),
    "augment.noise_mm": (float, 0.0, 10.0),
    "augment.spikes": (float, 0.0, 1.0),
    "augment.any_pose": (True, False),
}
LIST_SETTINGS = {"loss_weights": (2, 2), "network.widths": (1, 8), "network.pools": (1, 8)}  # (fewest, most)


def _setting_error(key: str, what: str, value, source) -> PalnetError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return PalnetError("training setting {!r} must be {}, not {}".format(key, what, shown), source)


def _check_setting(key: str, value, source) -> None:
    rule = SETTING_RANGES[key]
    if not isinstance(rule[0], type):
        if isinstance(value, bool) != isinstance(rule[0], bool) or value not in rule:
            raise _setting_error(key, "one of " + ", ".join(json.dumps(v) for v in rule), value, source)
        return
    kind, lo, hi = rule
    number = (int, float, np.integer, np.floating) if kind is float else (int, np.integer)
    if isinstance(value, bool) or not isinstance(value, number) or not lo <= value <= hi:  # NaN fails it too
        raise _setting_error(key, "{} from {:g} to {:g}".format("an integer" if kind is int else "a number", lo, hi),
                             value, source)


def check_config(cfg: dict, source=None) -> dict:
    """Refuse, in one line naming ``source`` (the configuration file) and the setting, any
    merged training setting of the wrong type or out of its range (SETTING_RANGES)."""
    for key in SETTING_RANGES:
        group, _, name = key.rpartition(".")
        value = cfg[group][name] if group else cfg[name]
        if key in LIST_SETTINGS:
            fewest, most = LIST_SETTINGS[key]
            if not isinstance(value, (list, tuple)) or not fewest <= len(value) <= most:
                raise _setting_error(key, "a list of {} numbers".format(
                    fewest if fewest == most else "{} to {}".format(fewest, most)), value, source)
            for v in value:
                _check_setting(key, v, source)
        else:
            _check_setting(key, value, source)
    if not sum(cfg["loss_weights"]) > 0:
        raise _setting_error("loss_weights", "two numbers, at least one above 0", cfg["loss_weights"], source)
    return cfg


def merge_config(user: Optional[dict], source=None) -> dict:
    """The default settings updated by ``user``'s and checked (``check_config``); errors name
    ``source``, the file the settings came from."""
    if user is not None and not isinstance(user, dict):
        raise PalnetError("a training configuration must be a JSON object of settings", source)
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    for key, value in (user or {}).items():
        if key not in cfg:
            raise PalnetError("unknown training setting {!r} (known: {})".format(key, ", ".join(sorted(cfg))), source)
        if isinstance(cfg[key], dict):
            if not isinstance(value, dict):
                raise PalnetError("training setting {!r} takes a mapping of {}".format(key, ", ".join(sorted(cfg[key]))),
                                  source)
            unknown = sorted(set(value) - set(cfg[key]))
            if unknown:
                raise PalnetError("unknown {} setting {!r} (known: {})".format(key, unknown[0], ", ".join(sorted(cfg[key]))),
                                  source)
            cfg[key].update(value)
        else:
            cfg[key] = value
    return check_config(cfg, source)


def load_config(path) -> dict:
    """The settings in a ``palnet train --config`` JSON file, checked as merge_config checks
    them; every problem is one line naming the file (and the setting)."""
    try:
        with open(path, "r", encoding="utf-8-sig") as f:
            user = json.load(f)
    except OSError as exc:
        raise PalnetError("cannot read training configuration: {}".format(exc.strerror or exc), path) from None
    except (ValueError, RecursionError) as exc:
        why = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise PalnetError("training configuration is not valid JSON ({})".format(why), path) from None
    merge_config(user, path)
    return user


def _random_rotations(rng: np.random.Generator, n: int, degrees: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    return Rotation.from_rotvec(rng.normal(size=(n, 3)) * np.radians(degrees) / np.sqrt(3)).as_matrix()


def scan_groups(scans: List[TrainingScan]) -> List[List[int]]:
    """Indices of the scans per annotated scan (the scan itself first, then its copies), in
    the order the scans first appear: splits are drawn over these, so no copy of a
    validation scan is ever trained on."""
    groups: Dict[str, List[int]] = {}
    for i, s in enumerate(scans):
        groups.setdefault(s.group, []).append(i)
    return [sorted(g, key=lambda i: scans[i].copy) for g in groups.values()]


def split_groups(scans: List[TrainingScan], groups: List[List[int]], val_groups) -> tuple:
    """(training scans: every member of the other groups, validation scans: the scans
    themselves of ``val_groups``, never their augmented copies)."""
    val_set = set(val_groups)
    val = [scans[g[0]] for k, g in enumerate(groups) if k in val_set and scans[g[0]].copy == 0]
    tr = [scans[i] for k, g in enumerate(groups) if k not in val_set for i in g]
    return tr, val


def drop_misaligned(scans: List[TrainingScan], limit_mm: float = 25.0):
    """Scans whose aligned landmarks lie, on average, within ``limit_mm`` of the median
    shape, and the ids of the others: a failed alignment must not teach the network."""
    if len(scans) < 5:
        return scans, []
    truths = np.stack([s.truth for s in scans])  # NaN: a landmark the scan does not show
    dev = np.nanmean(np.linalg.norm(truths - np.nanmedian(truths, axis=0), axis=2), axis=1)
    keep = dev <= limit_mm
    return [s for s, k in zip(scans, keep) if k], [s.scan_id for s, k in zip(scans, keep) if not k]


def scan_starts(scans: List[TrainingScan], mean: np.ndarray, meta: dict) -> np.ndarray:
    """(N, L, 3): where the network starts on each scan, as pipeline.predict does."""
    modes = landmark_modes(Model({}, NetworkConfig(n_landmarks=len(mean)), meta))
    return np.stack([starting_shape(mean, s.shape, modes) for s in scans]) if scans else np.zeros((0,) + mean.shape)


def _start_of(starts: np.ndarray, i: int) -> np.ndarray:
    """Scan ``i``'s start from ``starts``: one shape for every scan (L, 3) or one per scan (N, L, 3)."""
    starts = np.asarray(starts)
    return starts[i] if starts.ndim == 3 else starts


def make_batch(scans: List[TrainingScan], trees: List[cKDTree], idx: np.ndarray, starts: np.ndarray, cfg: dict,
               rng: Optional[np.random.Generator], swap: Optional[np.ndarray] = None):
    """Patches, initial approximations and truths for scans ``idx``; jittered when ``rng`` is given.

    ``starts``: the shape every scan starts from (L, 3), or each scan's own (len(scans), L, 3).
    ``swap``: the R <-> L relabelling (priors.mirror_pairs) that mirrored examples need."""
    size, scale = cfg["network"]["patch_size"], cfg["patch"]["scale_mm"]
    jit = cfg["jitter"]
    patches, inits, truths = [], [], []
    for i in idx:
        start, jitter = _start_of(starts, i), None
        if rng is not None and rng.random() < jit["near_fraction"]:
            # a start like a refinement pass gets: the landmarks a few mm from the truth
            # (where the scan lacks a landmark, from the usual start)
            start = np.where(np.isfinite(scans[i].truth), scans[i].truth, start)
            jitter = rng.normal(0, rng.uniform(jit["near_mm"] / 6, jit["near_mm"]), start.shape) + rng.normal(0, 1.0, 3)
        elif rng is not None:
            jitter = rng.normal(0, jit["landmark_mm"], start.shape) + rng.normal(0, jit["shift_mm"], 3)
        init = initial_approximation(trees[i], start, jitter)
        p, init = extract_patches(trees[i], init, size, scale)
        patches.append(p)
        inits.append(init)
        truths.append(scans[i].truth)
    patches, inits, truths = np.stack(patches), np.stack(inits), np.stack(truths)
    if rng is not None and jit.get("mirror", 0.0) > 0 and swap is not None:
        # The mirror image: what the network sees on a mirrored scan from mirrored starts.
        flip = rng.random(len(idx)) < jit["mirror"]
        sign = np.array([-1.0, 1.0, 1.0], np.float32)
        patches[flip] = patches[flip][:, swap] * sign
        inits[flip] = inits[flip][:, swap] * sign
        truths[flip] = truths[flip][:, swap] * sign
    if rng is not None:  # a small turn of the whole face, as a slightly different alignment would give
        rot = _random_rotations(rng, len(idx), jit["rotate_deg"]).astype(np.float32)
        patches = np.einsum("blpj,bij->blpi", patches, rot)
        inits = np.einsum("blj,bij->bli", inits, rot)
        truths = np.einsum("blj,bij->bli", truths, rot)
    return patches.astype(np.float32), inits.astype(np.float32), truths.astype(np.float32)


def _loss(torch, pred, truth, weights):
    """Point-wise and distance-wise loss over the landmarks the truth has (NaN: the scan does not
    show it; such a landmark teaches nothing, its patch is still seen)."""
    known = torch.isfinite(truth).all(dim=-1)  # (B, L)
    truth = torch.where(known[..., None], truth, pred.detach())
    n_known = known.sum().clamp(min=1)
    point = (torch.linalg.norm(pred - truth, dim=-1) * known).sum() / n_known
    pairs = known[:, :, None] & known[:, None, :]
    pairs = pairs & ~torch.eye(pred.shape[1], dtype=torch.bool, device=pred.device)[None]
    dp, dt = torch.cdist(pred, pred), torch.cdist(truth, truth)
    dist = ((dp - dt).abs() * pairs).sum() / pairs.sum().clamp(min=1)  # mean over known pairs i != j
    return weights[0] * point + weights[1] * dist, point, dist


def _errors(preds: np.ndarray, truths: np.ndarray) -> Dict[str, float]:
    return {"pointwise_mm": float(np.nanmean(pointwise_errors(preds, truths))),
            "distancewise_mm": float(np.nanmean(distancewise_errors(preds, truths)))}


def evaluate_scans(model: Model, scans: List[TrainingScan], trees: List[cKDTree], starts: np.ndarray,
                   cfg: dict, steps: int) -> Dict[str, float]:
    """Point-wise and distance-wise error (mm) of one run per scan from the initial
    approximation: the quick figure each epoch is judged by. palnet predict answers with the
    mean of several perturbed runs, which :func:`validate` scores. ``starts`` as for make_batch."""
    scale = cfg["patch"]["scale_mm"]
    preds = [run_network(tree, model, initial_approximation(tree, _start_of(starts, i))[None], steps, scale)[0]
             for i, tree in enumerate(trees)]
    return _errors(np.stack(preds), np.stack([s.truth for s in scans]))


def network_answers(model: Model, trees: List[cKDTree], starts: np.ndarray, cfg: dict, steps: Optional[int] = None):
    """The network's answers (N, L, 3) on each scan, the mean of the perturbed runs as palnet
    predict computes them (before any shape prior), and their spreads (N, L); ``steps``
    refinement passes (default the configuration's)."""
    answers, spreads = [], []
    for i, tree in enumerate(trees):
        answer, spread = predict_with_spread(tree, model, initial_approximation(tree, _start_of(starts, i)),
                                             cfg["refine_steps"] if steps is None else steps, cfg["patch"]["scale_mm"])
        answers.append(answer)
        spreads.append(spread)
    return np.stack(answers), np.stack(spreads)


def score_answers(answers: np.ndarray, spreads: np.ndarray, truths: np.ndarray, prior=None, swap=None):
    """(errors, confidence table) of the network's ``answers`` after the shape ``prior`` (as
    priors.shape_prior gives it; None: none), as palnet predict gives them (see
    priors.calibrate_confidence); ``swap`` as for priors.apply_shape_prior."""
    answers = np.stack([apply_shape_prior(a, prior, swap) for a in answers])
    err = np.linalg.norm(answers - truths, axis=2).ravel()
    known = np.isfinite(err)  # a landmark the scan does not show has no error to calibrate on
    table = calibrate_confidence(np.ravel(spreads)[known], err[known])
    return _errors(answers, truths), table


def validate(model: Model, scans: List[TrainingScan], trees: List[cKDTree], starts: np.ndarray, cfg: dict):
    """Scores of the answers palnet predict gives on scans the network did not train on (the
    mean of the perturbed runs, the model's shape prior, its second round if it has one), and
    the confidence table calibrated from their spread (see priors.calibrate_confidence):
    (errors, table). ``starts`` as for make_batch."""
    runs = [network_answer(tree, model, initial_approximation(tree, _start_of(starts, i)), cfg["refine_steps"],
                           cfg["patch"]["scale_mm"]) for i, tree in enumerate(trees)]
    # network_answer has applied the priors already
    return score_answers(np.stack([r[0] for r in runs]), np.stack([r[1] for r in runs]),
                         np.stack([s.truth for s in scans]))


def second_round_answers(runs: List[Tuple[Model, List[cKDTree]]], corrected: np.ndarray, cfg: dict):
    """The network once more, ``cfg["second_round"]`` passes from the prior-corrected answers
    ``corrected`` (N, L, 3): ``runs`` lists (network, trees of its held-out scans) in the order of
    the answers (one network, or each fold's). Returns (answers, spreads) as network_answers."""
    answers, spreads, at = [], [], 0
    for model, trees in runs:
        a, s = network_answers(model, trees, corrected[at:at + len(trees)], cfg, steps=cfg["second_round"])
        answers.append(a)
        spreads.append(s)
        at += len(trees)
    return np.concatenate(answers), np.concatenate(spreads)


def _export(net, cfg_net: NetworkConfig, metadata: dict) -> Model:
    from .network import export_weights
    return Model(export_weights(net), cfg_net, copy.deepcopy(metadata))


# The log line of one epoch, formatted from its event (see fit), e.g.
# "epoch   3  loss 11.206  val point-wise 8.607 mm  distance-wise 6.237 mm  lr 0.001  0.8 s  *"
EPOCH_LINE = ("epoch {epoch:3d}  loss {loss:.3f}  val point-wise {val_pointwise_mm:.3f} mm  distance-wise "
              "{val_distancewise_mm:.3f} mm  lr {lr:.2g}  {seconds:.1f} s")


def epoch_line(event: dict) -> str:
    """The human log line of one epoch ``event`` (see :func:`fit`); ``  *`` at its end when the
    validation error improved and these weights are kept."""
    return EPOCH_LINE.format(**event) + ("  *" if event.get("best") else "")


def fit(train_scans: List[TrainingScan], val_scans: List[TrainingScan], labels: List[str], template: np.ndarray,
        cfg: dict, metadata: dict, init_model: Optional[Model] = None, checkpoint: Optional[Path] = None,
        log: Callable[[str], None] = print, should_stop: Callable[[], bool] = lambda: False,
        on_epoch: Optional[Callable[[dict], None]] = None) -> Model:
    """Train on ``train_scans``, keep the weights best on ``val_scans``; resumable through ``checkpoint``.

    After each epoch, ``on_epoch(event)`` gets a dict with ``epoch``, ``loss``,
    ``val_pointwise_mm``, ``val_distancewise_mm``, ``lr``, ``seconds`` (the epoch's row of the
    training history) and ``best`` (True when the validation error improved and these weights are
    kept); the epoch's log line is formatted from the same dict (:func:`epoch_line`)."""
    import torch
    from .network import PalNet, load_weights
    torch.manual_seed(cfg["seed"])
    rng = np.random.default_rng(cfg["seed"])
    mean = np.nanmean([s.truth for s in train_scans], axis=0)
    net_cfg = init_model.config if init_model else NetworkConfig(n_landmarks=len(labels), **cfg["network"])
    net = PalNet(net_cfg)
    if init_model:
        load_weights(net, init_model.weights)
        mean = np.asarray(init_model.metadata["mean_landmarks"], dtype=np.float64)
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg["plateau_factor"], patience=cfg["plateau_patience"])
    trees = [cKDTree(s.samples) for s in train_scans]
    vtrees = [cKDTree(s.samples) for s in val_scans]
    swap = mirror_pairs(labels)
    meta = dict(metadata, mean_landmarks=mean.tolist(), template=np.round(template, 4).tolist(),
                patch=cfg["patch"], refine_steps=cfg["refine_steps"])
    meta.pop("landmark_modes", None)
    if cfg.get("start", "shape") == "shape":
        # Learned from these training scans; a fine-tuning set too small for that keeps the model's own.
        modes = fit_landmark_modes(train_scans)
        if modes is None and init_model and init_model.metadata.get("landmark_modes"):
            modes = init_model.metadata["landmark_modes"]
        if modes is not None:
            meta["landmark_modes"] = modes
    starts = scan_starts(train_scans, mean, meta)
    vstarts = scan_starts(val_scans, mean, meta)
    start, best, best_state, history, since_best = 0, float("inf"), None, [], 0
    # A checkpoint resumes only the same run: same data, same settings (more epochs are fine).
    fingerprint = json.dumps({"cfg": {k: v for k, v in cfg.items() if k != "epochs"}, "train": [s.scan_id for s in train_scans],
                              "val": [s.scan_id for s in val_scans]}, sort_keys=True)
    if checkpoint and Path(checkpoint).exists():
        ck = torch.load(checkpoint, weights_only=True)
        if ck.get("fingerprint") != fingerprint:
            raise PalnetError("a checkpoint of a different training run is in the way; delete it or choose "
                              "another output file", checkpoint)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        start, best, since_best = int(ck["epoch"]), float(ck["best"]), int(ck["since_best"])
        best_state, history = ck["best_state"], json.loads(ck["history"])
        rng = np.random.default_rng([cfg["seed"], start])
        log("resumed from {} at epoch {}".format(checkpoint, start))
    for epoch in range(start, cfg["epochs"]):
        t0 = time.monotonic()
        net.train()
        order = rng.permutation(len(train_scans))
        losses = []
        for b in range(0, len(order), cfg["batch_size"]):
            idx = order[b:b + cfg["batch_size"]]
            patches, inits, truths = make_batch(train_scans, trees, idx, starts, cfg, rng, swap)
            out = net(torch.from_numpy(patches)) * cfg["patch"]["scale_mm"]
            loss, _, _ = _loss(torch, torch.from_numpy(inits) + out, torch.from_numpy(truths), cfg["loss_weights"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if should_stop():
                break
        net.eval()
        with torch.no_grad():
            model = _export(net, net_cfg, meta)
        val = evaluate_scans(model, val_scans or train_scans[:50], vtrees or trees[:50],
                             vstarts if val_scans else starts[:50], cfg, cfg["refine_steps"])
        sched.step(val["pointwise_mm"])
        # Without validation scans (final fit after cross-validation) the last epoch is kept.
        improved = val["pointwise_mm"] < best or not val_scans
        if improved:
            best, since_best = val["pointwise_mm"], 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            since_best += 1
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_pointwise_mm": val["pointwise_mm"],
               "val_distancewise_mm": val["distancewise_mm"], "lr": opt.param_groups[0]["lr"],
               "seconds": time.monotonic() - t0}
        history.append(row)
        event = dict(row, best=bool(improved))
        log(epoch_line(event))
        if on_epoch is not None:
            on_epoch(event)
        if checkpoint:
            tmp = Path(str(checkpoint) + ".tmp")
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "epoch": epoch + 1, "best": best, "since_best": since_best, "best_state": best_state,
                        "history": json.dumps(history), "fingerprint": fingerprint}, tmp)
            tmp.replace(checkpoint)
        if since_best >= cfg["early_stop_patience"] or should_stop():
            log("stopping: {}".format("no improvement for {} epochs".format(since_best) if not should_stop() else "asked to stop"))
            break
    if best_state is not None:  # None: no epoch ran (--epochs 0 with --init keeps the model's weights)
        net.load_state_dict(best_state)
    net.eval()
    meta["training_history"] = history
    return _export(net, net_cfg, meta)


def cross_validate(scans: List[TrainingScan], groups: List[List[int]], order: np.ndarray, folds: int,
                   labels: List[str], template: np.ndarray, cfg: dict, metadata: dict, init_model: Optional[Model],
                   log: Callable[[str], None], should_stop: Callable[[], bool],
                   on_epoch: Optional[Callable[[dict], None]] = None) -> Tuple[dict, tuple, list]:
    """K-fold cross-validation over annotated scans (``order`` permutes ``groups``): per-fold
    validation errors of the network's answers, their mean and the median best epoch; the
    out-of-fold (answers, spreads, truths), every scan answered by the fold that did not train
    on it, from which the final model learns its shape prior and confidence; and each fold's
    (network, trees of its held-out scans) in the same order, for the second round. ``on_epoch``:
    as for :func:`fit`, for every fold's epochs."""
    if len(groups) < folds:
        raise PalnetError("{} folds need at least {} scans, found {}".format(folds, folds, len(groups)))
    rows, answers, spreads, truths, runs = [], [], [], [], []
    for k in range(folds):
        # Folds in the permuted order, then the training scans in that order too.
        tr, val = split_groups(scans, [groups[i] for i in order], range(k, len(order), folds))
        log("fold {}/{}: training on {}, validating on {}".format(k + 1, folds, len(tr), len(val)))
        model = fit(tr, val, labels, template, cfg, metadata, init_model, None, log, should_stop, on_epoch)
        history = model.metadata["training_history"]
        # 0 when no epoch ran (--epochs 0 with --init: every fold keeps that network)
        best_epoch = min(history, key=lambda r: r["val_pointwise_mm"])["epoch"] if history else 0
        vt = [cKDTree(s.samples) for s in val]
        a, sp = network_answers(model, vt, scan_starts(val, np.asarray(model.metadata["mean_landmarks"]),
                                                       model.metadata), cfg)
        t = np.stack([s.truth for s in val])
        answers.append(a)
        spreads.append(sp)
        truths.append(t)
        runs.append((model, vt))
        rows.append(dict(_errors(a, t), fold=k + 1, best_epoch=best_epoch, n_val=len(val)))
    result = {"folds": rows, "median_best_epoch": int(np.median([r["best_epoch"] for r in rows]))}
    for key in ("pointwise_mm", "distancewise_mm"):
        result[key + "_mean"] = float(np.mean([r[key] for r in rows]))
        result[key + "_std"] = float(np.std([r[key] for r in rows]))
    log("cross-validation (network alone): point-wise {pointwise_mm_mean:.3f} +- {pointwise_mm_std:.3f} mm, "
        "distance-wise {distancewise_mm_mean:.3f} +- {distancewise_mm_std:.3f} mm".format(**result))
    return result, (np.concatenate(answers), np.concatenate(spreads), np.concatenate(truths)), runs


def _settings(config, epochs: Optional[int], init: Optional[str]) -> Tuple[dict, Optional[dict]]:
    """The checked settings (``config``, a dict or the path of a JSON file, over
    DEFAULT_CONFIG; ``epochs`` over both), and the user's own settings as given."""
    source = None
    if isinstance(config, (str, os.PathLike)):  # a --config file: its errors name it
        source, config = config, load_config(config)
    cfg = merge_config(config, source)
    if epochs is not None:
        _check_setting("epochs", epochs, None)
        cfg["epochs"] = int(epochs)
    if cfg["epochs"] == 0 and not init:
        raise PalnetError("--epochs 0 : give a positive number of epochs, or 0 with --init to keep that model's "
                          "network and only learn its starting shape, shape priors and confidence from the data")
    return cfg, config


def _data_and_protocol(data_dir, init: Optional[str]):
    """The (scan, landmark file) pairs in ``data_dir``, the landmark protocol of the first
    landmark file, and the ``init`` model to fine-tune (None without one), which must share it."""
    pairs = find_scan_pairs(data_dir)
    if len(pairs) < 2:
        raise PalnetError("found {} (scan, landmark file) pairs; training needs at least 2".format(len(pairs)), data_dir)
    init_model = load_model(init) if init else None
    first = read_landmarks(pairs[0][2]).labels
    protocol = default_protocol() if set(first) == set(default_protocol().labels) else Protocol.from_labels(first)
    if init_model and list(init_model.metadata["protocol"]["labels"]) != protocol.labels:
        raise PalnetError("--init model has a different landmark protocol than the data set", init)
    return pairs, protocol, init_model


def _starting_point(cfg: dict, user: Optional[dict], init_model: Optional[Model]) -> np.ndarray:
    """The face template the scans are aligned to (the fine-tuned model's, the shipped
    model's, or the shipped face template). Fine-tuning also keeps, in ``cfg``, the model's network,
    patches and sampling, and its refinement passes unless ``user`` (the given settings) sets them."""
    if init_model:
        cfg["network"] = {k: v for k, v in init_model.config.to_dict().items() if k != "n_landmarks"}
        cfg["patch"] = dict(init_model.metadata["patch"])
        if "refine_steps" not in (user or {}):  # the number of passes may change (weights do not depend on it)
            cfg["refine_steps"] = int(init_model.metadata.get("refine_steps", cfg["refine_steps"]))
        return np.asarray(init_model.metadata["template"], dtype=np.float64)
    if default_model_path().exists():
        return np.asarray(load_model(default_model_path()).metadata["template"], dtype=np.float64)
    with np.load(face_template_path(), allow_pickle=False) as d:
        return d["points"].astype(np.float64)


def _usable_scans(data_dir, pairs, labels: List[str], template: np.ndarray, cfg: dict, cache: Path, units: str,
                  jobs: int, progress: Optional[Callable], log: Callable[[str], None]):
    """The scans preprocessed (cached in ``cache``) and aligned, less those whose alignment
    failed, and one line per pair left out."""
    scans, problems = load_training_scans(pairs, labels, template, cfg["patch"]["spacing_mm"], cache, units, jobs,
                                          progress, cfg["augment"])
    for p in problems:
        log("skipped " + p)
    scans, misaligned = drop_misaligned(scans)
    for sid in misaligned:
        log("skipped {}: the automatic alignment failed (landmarks far from the others')".format(sid))
    problems += ["{}: alignment failed".format(sid) for sid in misaligned]
    if len(scans) < 2:
        raise PalnetError("fewer than 2 usable scans", data_dir)
    return scans, problems


def _split(scans: List[TrainingScan], seed: int, val_split: float):
    """The scans' groups (an annotated scan and its copies), their shuffled order, and the
    training and validation scans: the first ``val_split`` of the groups in that order validate."""
    groups = scan_groups(scans)
    order = np.random.default_rng(seed).permutation(len(groups))
    n_val = int(round(len(groups) * val_split)) if val_split > 0 else 0
    tr, val = split_groups(scans, [groups[i] for i in order], range(n_val))
    return groups, order, tr, val


def _held_out_answers(model: Model, val: List[TrainingScan], held_out: Optional[tuple], runs: Optional[list],
                      cfg: dict):
    """The network's (answers, spreads, truths) on scans it did not train on, the (network, trees)
    behind them (see second_round_answers), and whether they are out-of-fold: the answers on the
    validation scans when there are any, else cross-validation's ``held_out`` and ``runs`` (None
    without either)."""
    if not val:  # after cross-validation: each scan as answered by the fold that did not train on it
        return held_out, runs, True
    vt = [cKDTree(s.samples) for s in val]
    starts = scan_starts(val, np.asarray(model.metadata["mean_landmarks"]), model.metadata)
    return network_answers(model, vt, starts, cfg) + (np.stack([s.truth for s in val]),), [(model, vt)], False


def second_round_prior(model: Model, tr: List[TrainingScan], prior: dict, answers: np.ndarray, truths: np.ndarray,
                       runs: list, cfg: dict, labels: List[str]):
    """The second round on the held-out scans: the network once more from its first ``answers``
    corrected by ``prior`` (an entry as fit_shape_prior gives it), and the prior fitted to that
    round's error. Returns (answers, spreads, prior entry); ``runs`` as for second_round_answers."""
    corrected = np.stack([apply_shape_prior(a, shape_prior(model, prior), mirror_pairs(labels)) for a in answers])
    answers, spreads = second_round_answers(runs, corrected, cfg)
    return answers, spreads, fit_shape_prior(tr, answers, truths)


def _priors_and_confidence(model: Model, tr: List[TrainingScan], held_out: tuple, runs: list, cfg: dict,
                           labels: List[str], out_of_fold: bool, report: dict, log: Callable[[str], None]) -> None:
    """The model's shape prior, second round and confidence table, learned from the network's
    ``held_out`` (answers, spreads, truths), and the scores of the answers palnet predict then gives
    (into ``report`` and the model's accuracy). The prior is measured anew for every network (fit
    never carries one over)."""
    which = "out-of-fold answers" if out_of_fold else "validation scans"
    answers, spreads, truths = held_out
    report["validation_network"] = _errors(answers, truths)
    prior = fit_shape_prior(tr, answers, truths) if cfg["shape_prior"] else None
    if prior:
        model.metadata["shape_prior"] = prior
        log("shape prior: network error on the {} {:.2f} mm RMS per landmark, covariance of {} training scans "
            "shrunk by {:.3f}; the validation below uses that error, so it flatters a little"
            .format(which, prior["noise_rms_mm"], prior["n_train"], prior["shrinkage"]))
    final = shape_prior(model)
    if prior and cfg["second_round"]:
        answers, spreads, again = second_round_prior(model, tr, prior, answers, truths, runs, cfg, labels)
        report["validation_network_second"] = _errors(answers, truths)
        model.metadata["second_round"] = {"refine_steps": int(cfg["second_round"]), "shape_prior": again}
        final = shape_prior(model, again)
        log("second round: network from the prior-corrected answers {:.3f} mm, its error {:.2f} mm RMS per "
            "landmark".format(report["validation_network_second"]["pointwise_mm"], again["noise_rms_mm"]))
    report["validation"], model.metadata["confidence"] = score_answers(answers, spreads, truths, final,
                                                                       mirror_pairs(labels))
    model.metadata["accuracy"] = {"validation": report["validation"], "n": len(answers)}
    if out_of_fold:
        model.metadata["accuracy"]["out_of_fold"] = True
    log("validation ({}): point-wise {pointwise_mm:.3f} mm, distance-wise {distancewise_mm:.3f} mm (answers as "
        "palnet predict gives them; the epochs above score one run per scan)".format(which, **report["validation"]))


def _save(output, model: Model, half: bool, log: Callable[[str], None]) -> None:
    """The model file; the checkpoint goes (the run is complete, a later run starts afresh)."""
    save_model(output, model, half=half)
    checkpoint = Path(str(output) + ".ckpt")
    if checkpoint.exists():
        checkpoint.unlink()
    log("saved {}".format(output))


def train(data_dir, output, config=None, epochs: Optional[int] = None, val_split: float = 0.2,
          init: Optional[str] = None, cache_dir: Optional[str] = None, jobs: int = 1, units: str = "auto",
          log: Callable[[str], None] = print, progress: Optional[Callable] = None, half: bool = True,
          description: str = "", should_stop: Callable[[], bool] = lambda: False,
          folds: Optional[int] = None, on_epoch: Optional[Callable[[dict], None]] = None) -> dict:
    """``palnet train``: settings, data, preprocessing, split, fit (after cross-validation with
    ``folds``), shape priors and confidence from held-out answers, save. Returns the final report.

    ``config``: settings overriding DEFAULT_CONFIG, as a dict or the path of a JSON file.
    ``on_epoch(event)``: called after every epoch of every fit (see :func:`fit`)."""
    cfg, user = _settings(config, epochs, init)
    pairs, protocol, init_model = _data_and_protocol(data_dir, init)
    template = _starting_point(cfg, user, init_model)
    labels = protocol.labels
    log("{} pairs in {}; protocol {} ({} landmarks)".format(len(pairs), data_dir, protocol.name, len(labels)))
    cache = Path(cache_dir) if cache_dir else Path(str(output) + ".cache")
    scans, problems = _usable_scans(data_dir, pairs, labels, template, cfg, cache, units, jobs, progress, log)
    groups, order, tr, val = _split(scans, cfg["seed"], val_split)
    metadata = {"protocol": dict(protocol.to_dict(), labels=labels), "units": "mm",
                "training": {"data": description or str(data_dir), "n_train": len(tr), "n_val": len(val),
                             "config": cfg, "fine_tuned_from": str(init) if init else None}}
    report = {"skipped": problems}
    held_out, runs = None, None  # the network's (answers, spreads, truths) on scans it did not train on
    if folds and folds > 1:
        report["cross_validation"], held_out, runs = cross_validate(scans, groups, order, folds, labels, template,
                                                                    cfg, metadata, init_model, log, should_stop,
                                                                    on_epoch)
        # The final model learns from every scan for the folds' typical number of epochs.
        cfg = dict(cfg, epochs=report["cross_validation"]["median_best_epoch"])
        tr, val = split_groups(scans, [groups[i] for i in order], ())
    log("training on {} scans, validating on {}".format(len(tr), len(val)))
    model = fit(tr, val, labels, template, cfg, metadata, init_model, Path(str(output) + ".ckpt"), log, should_stop,
                on_epoch)
    report.update(n_train=len(tr), n_val=len(val))
    held_out, runs, out_of_fold = _held_out_answers(model, val, held_out, runs, cfg)
    if held_out is not None:
        _priors_and_confidence(model, tr, held_out, runs, cfg, labels, out_of_fold, report, log)
    _save(output, model, half, log)
    return report
