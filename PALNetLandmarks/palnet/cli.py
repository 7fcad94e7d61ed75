"""The ``palnet`` command line: argument parsing only; the work is done by the modules it calls."""
import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

from . import __version__
from .errors import PalnetError
from .options import (AUTO_UNITS, DEFAULT_SAMPLINGS, DEFAULT_SNAP, LANDMARK_FORMATS, MAX_SAMPLINGS, NO_SNAP, SNAP_METHODS,
                      SYNTH_CROPS, UNIT_CHOICES, UNITS_PER_MM)
from .progress import ProgressBar, event_line
from .status import DONE, ERROR, LOW_FIT, NOT_A_FACE, PARTIAL, SKIPPED


def _samplings(text):
    """--samplings: a whole number from 1 to MAX_SAMPLINGS."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_SAMPLINGS:
        raise argparse.ArgumentTypeError("{!r} is not a whole number from 1 to {}".format(text, MAX_SAMPLINGS))
    return n


def _variety(text):
    """--variety: None (off), "train" (every family but the held-out one), "all", or families."""
    if text is None:
        return None
    from .variety import FAMILIES, TRAINING_FAMILIES
    if text in ("train", ""):
        return TRAINING_FAMILIES
    if text == "all":
        return FAMILIES
    if text == "none":
        return ()
    return tuple(f.strip() for f in text.split(",") if f.strip())


def _cmd_synth(args) -> int:
    from .synth import HELD_OUT_SEED, generate_dataset
    if args.n < 1:
        raise PalnetError("--n must be at least 1")
    if args.seed < HELD_OUT_SEED < args.seed + args.n:
        print("note: seeds {}..{} mix training seeds (< {}) with held-out test seeds".format(
            args.seed, args.seed + args.n - 1, HELD_OUT_SEED), file=sys.stderr)
    t0 = time.monotonic()
    failed = generate_dataset(args.output, args.n, args.seed, args.pose, args.units, args.ict,
                              args.jobs, ProgressBar("synth"), crop=args.crop, spikes=args.spikes,
                              closed_lips=args.closed_lips,
                              variety=_variety(args.variety))
    print("wrote {} scans to {} in {:.1f} s".format(args.n - len(failed), args.output, time.monotonic() - t0))
    if failed:
        print("failed seeds: {}".format(", ".join(map(str, failed))), file=sys.stderr)
        return 1
    return 0


def _cmd_evaluate(args) -> int:
    from .metrics import evaluate_dirs, format_report
    from .protocol import Protocol, default_protocol
    protocol = Protocol.load(args.protocol) if args.protocol else default_protocol()
    definitions = None
    if args.definitions:
        from .measurements import load_definitions
        definitions = load_definitions(args.definitions)
    report = evaluate_dirs(args.pred, args.truth, protocol, definitions=definitions)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report))
    return 0


def _cmd_measure(args) -> int:
    from .measurements import load_definitions, load_norms
    from .measurements.files import (check_output, find_landmark_inputs, measure_files, pair_scans, summary_line,
                                     write_table)
    if args.samples < 0:
        raise PalnetError("--samples must be 0 (no standard errors) or more, not {}".format(args.samples))
    if args.sd is not None and not args.sd > 0:
        raise PalnetError("--sd must be a positive number of mm, not {}".format(args.sd))
    if args.group is not None and not args.norms:
        raise PalnetError("--group chooses a group of the norms: give --norms too")
    check_output(args.output, args.overwrite)
    definitions = load_definitions(args.definitions)
    norms = load_norms(args.norms) if args.norms else None
    if norms is not None:
        norms.for_group(args.group, definitions)
    table = os.path.normcase(os.path.abspath(args.output))
    files = [f for f in find_landmark_inputs(args.inputs) if os.path.normcase(os.path.abspath(str(f))) != table]
    if not files:
        raise PalnetError("no landmark files (.mrk.json .fcsv .csv .txt) found", ", ".join(args.inputs))
    scans = pair_scans(files, args.scan)
    if args.scan and all(s is None for s in scans):
        print("palnet measure: note: no scan in {} has the name of a landmark file; arcs left empty".format(
            args.scan), file=sys.stderr)
    t0 = time.monotonic()
    results = measure_files(files, scans, definitions, norms, args.group, args.samples, args.seed, args.sd,
                            ProgressBar("measure") if not args.quiet and len(files) > 1 else None)
    for r in results:
        if r.error or r.warning:
            print("palnet measure: {}".format(r.error or r.warning), file=sys.stderr)
    done, failed, values = summary_line(results, definitions)
    if done:
        write_table(results, args.output, definitions, long=args.long, with_z=norms is not None,
                    overwrite=args.overwrite)
    _note_unused_labels(results, definitions)
    print("{} face(s) measured ({} of {} measurements each on average), {} failed, in {:.1f} s; {}".format(
        done, values, len(definitions), failed, time.monotonic() - t0,
        "table in {}".format(args.output) if done else "no table written"))
    return 1 if failed else 0


def _note_unused_labels(results, definitions) -> None:
    """A definition naming a landmark that no file has is most likely a typo: say so once."""
    seen = set()  # type: set
    for r in results:
        seen.update(r.labels)
    absent = [lab for lab in definitions.labels if lab not in seen]
    if seen and absent:
        print("palnet measure: note: no landmark file has {} (named in {})".format(
            ", ".join(absent[:8]) + (", ..." if len(absent) > 8 else ""), definitions.source or definitions.name),
            file=sys.stderr)


def _load_model_arg(path):
    from .modelfile import load_model
    from .resources import default_model_path
    return load_model(path or default_model_path())


class _Stopped(KeyboardInterrupt):
    """A stop signal, raised where the batch is so that its summary is still written."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop_signals():
    """Turn SIGTERM, SIGINT and SIGHUP into _Stopped; returns what to restore afterwards."""
    import signal

    def stop(signum, frame):
        for s in handled:  # a second signal must not cut the summary short
            signal.signal(s, signal.SIG_IGN)
        raise _Stopped(signum)

    handled = {}
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        s = getattr(signal, name, None)
        # A signal already ignored (nohup, a background job) stays ignored.
        if s is not None and signal.getsignal(s) is not signal.SIG_IGN:
            handled[s] = signal.signal(s, stop)
    return handled


def _cmd_predict(args) -> int:
    import signal
    from .batch import SUMMARY_NAME, predict_files
    summary = Path(args.output) / SUMMARY_NAME
    handled = _stop_signals()
    try:
        model = _load_model_arg(args.model)
        rows = predict_files(args.inputs, args.output, model, args.format, args.snap, args.units,
                             args.overwrite, args.png, ProgressBar("predict") if not args.quiet else None, args.jobs,
                             keep_rejected=args.keep_rejected, samplings=args.samplings)
    except _Stopped as stop:
        if not args.quiet and sys.stderr.isatty():
            sys.stderr.write("\n")  # below the progress bar's unfinished line
        print("palnet predict: stopped by {}; {}".format(
            signal.Signals(stop.signum).name, "summary in {}".format(summary) if summary.is_file()
            else "no summary (stopped before the run began)"), file=sys.stderr)
        return 128 + stop.signum
    finally:
        for s, previous in handled.items():
            signal.signal(s, previous)
    for r in rows:
        if r.status in DONE + (NOT_A_FACE,):
            print("{:<24} {:<10} fit {:5.2f} mm  {:6.3f} s  -> {}".format(r.scan, r.status, r.fit_rms_mm, r.seconds,
                                                                      r.output or "no landmark file"))
            if r.message:
                print("{:<24} {:<10} {}".format("", "", r.message))
        else:
            print("{:<24} {:<10} {}".format(r.scan, r.status, r.message))
    if args.show:
        from .landmark_io import read_landmarks
        for r in rows:
            if r.status in DONE + (NOT_A_FACE,) and r.output:
                lms = read_landmarks(r.output)
                print("\n{} ({}):".format(r.scan, lms.units))
                for label, p in zip(lms.labels, lms.points):
                    print("  {:<6} {:10.3f} {:10.3f} {:10.3f}".format(label, *p))
    failed_measures = 0
    if args.measure:
        from .batch import measure_outputs
        table, failures, note = measure_outputs(rows, args.output, args.overwrite)
        for line in failures:
            print("palnet predict: {}".format(line), file=sys.stderr)
        failed_measures = len(failures)
        print(note)
    count = {s: sum(r.status == s for r in rows) for s in DONE + (NOT_A_FACE, SKIPPED, ERROR)}
    print("{} scans: {} done ({} partial, {} low fit), {} not a face, {} skipped, {} failed; summary in {}".format(
        len(rows), sum(count[s] for s in DONE), count[PARTIAL], count[LOW_FIT], count[NOT_A_FACE], count[SKIPPED],
        count[ERROR], summary))
    return 1 if count[ERROR] or count[NOT_A_FACE] or failed_measures else 0


def _cmd_train(args) -> int:
    from .train import load_config, train
    # Read and checked here, so that each problem is one line naming the file and the setting.
    config = load_config(args.config) if args.config else None
    if args.augment is not None:
        if args.augment < 0:
            raise PalnetError("--augment must be 0 or more copies per scan, not {}".format(args.augment))
        config = dict(config or {})
        config["augment"] = dict(config.get("augment") or {}, copies=args.augment)
    import signal
    stop = []
    # SIGTERM (the Slicer module's Stop button, a batch system's time limit) ends the
    # current epoch and still saves the best model so far.
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    # --events: each epoch also as one event line on stdout, after its log line (see palnet.progress)
    on_epoch = (lambda event: print(event_line("epoch", **event), flush=True)) if args.events else None
    report = train(args.data, args.output, config, args.epochs, args.val_split, args.init, args.cache,
                   args.jobs, args.units, progress=ProgressBar("preprocess"), should_stop=lambda: bool(stop),
                   folds=args.folds, on_epoch=on_epoch)
    print(json.dumps(report, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="palnet", description="Automatic anatomical landmarks on 3D face scans (PAL-Net).")
    p.add_argument("--version", action="version", version="palnet " + __version__)
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads each process may use for NumPy's BLAS and for torch (default 1, or the "
                        "environment's OMP_NUM_THREADS / OPENBLAS_NUM_THREADS): one per process is fastest "
                        "on a shared or busy machine and with --jobs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("synth", help="generate synthetic face scans with ground-truth landmarks (ICT-FaceKit)")
    s.add_argument("--n", type=int, default=10, help="number of scans (default 10)")
    s.add_argument("--seed", type=int, default=0,
                   help="seed of the first scan; scan i gets seed+i. Seeds < 1000 train, >= 1000 test (default 0)")
    s.add_argument("-o", "--output", required=True, help="output folder: one sub-folder per scan")
    s.add_argument("--pose", choices=("realistic", "any"), default="realistic",
                   help="realistic: upright within +-30 degrees; any: uniformly random rotation")
    s.add_argument("--units", choices=tuple(UNITS_PER_MM), default="mm")
    s.add_argument("--crop", choices=SYNTH_CROPS, default="random",
                   help="random: a mix of forehead, back-of-head and neck cuts (default); face: the face and "
                        "ears; front: a face-only capture cut in front of the ears (ear points missing); "
                        "head: the whole head; shoulders: head and upper torso")
    s.add_argument("--variety", nargs="?", const="train", default=None, metavar="FAMILIES",
                   help="faces beyond the identity modes: smooth local warps (train: every family but the "
                        "held-out 'eyes' (the default with no value); all; none: no warp; or a comma list of "
                        "mouth, nose, eyes, chin, forehead, ears, proportions), clinical expressions, face-only "
                        "captures, coarse meshes and hair (see palnet/variety.py)")
    s.add_argument("--spikes", type=float, default=0.0,
                   help="fraction of vertices turned into 3-30 mm scanner spikes (default 0)")
    s.add_argument("--closed-lips", type=float, default=0.0, metavar="CHANCE",
                   help="chance that a scan shows the lips closed, a shallow crease where they meet, as "
                        "real scans do, instead of the head model's fold into the mouth (default 0)")
    s.add_argument("--ict", default=None, help="ICT-FaceKit model file (default: $PALNET_ICT or ../shared/data/ict-facekit/ict_facekit.npz)")
    s.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    s.set_defaults(func=_cmd_synth)

    e = sub.add_parser("evaluate", help="compare predicted landmark files with ground truth")
    e.add_argument("--pred", required=True, help="folder of predicted landmark files")
    e.add_argument("--truth", required=True, help="folder of ground-truth landmark files")
    e.add_argument("--protocol", default=None, help="protocol JSON for region names (default: the 50-landmark protocol)")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    e.add_argument("--definitions", default=None, metavar="JSON",
                   help="measurements whose error is reported too (default: the standard soft-tissue measurements)")
    e.set_defaults(func=_cmd_evaluate)

    me = sub.add_parser("measure", help="distances, angles, indices, arcs and asymmetry from landmark files",
                        epilog="exit status: 0 every file measured; 1 a file could not be read (the others are "
                               "measured); 2 nothing done (bad arguments or definitions, the table exists)")
    me.add_argument("inputs", nargs="+", metavar="LANDMARKS",
                    help="landmark files (.mrk.json .fcsv .csv .txt) or folders (searched through)")
    me.add_argument("-o", "--output", required=True, metavar="OUT.csv", help="the table to write")
    me.add_argument("--scan", default=None, metavar="MESH",
                    help="the scan of a single landmark file, or a folder of scans paired with the files by scan "
                         "name, for the lengths along the surface (arcs; without a scan they are empty)")
    me.add_argument("--definitions", default=None, metavar="JSON",
                    help="measurement definitions (default: the standard soft-tissue set, "
                         "Resources/Protocols/palnet50_measurements.json)")
    me.add_argument("--norms", default=None, metavar="CSV",
                    help="norms (columns measurement,group,mean,sd) for z-scores; palnet ships none")
    me.add_argument("--group", default=None, help="the group of the norms to compare with (needed when they have several)")
    me.add_argument("--long", action="store_true", help="one row per face and measurement (default: one row per face)")
    me.add_argument("--overwrite", action="store_true", help="replace an existing table")
    me.add_argument("--samples", type=int, default=200,
                    help="perturbed copies of each face for the standard errors (default 200; 0: none)")
    me.add_argument("--seed", type=int, default=0, help="seed of the perturbations (default 0)")
    me.add_argument("--sd", type=float, default=None, metavar="MM",
                    help="positional SD of landmarks in files without a confidence (default: no standard error "
                         "for them)")
    me.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    me.set_defaults(func=_cmd_measure)
    pr = sub.add_parser("predict", help="place landmarks on scans (files or folders)",
                        epilog="exit status: 0 every scan done (ok, partial, low fit) or skipped (its output kept); "
                               "1 a scan failed or is not a face; 2 nothing done (bad arguments, output folder "
                               "in use by another run or a file); 128+N stopped by signal N (130 Ctrl-C, "
                               "143 SIGTERM), the summary still written (and no measurements)")
    pr.add_argument("inputs", nargs="+", metavar="INPUT", help="mesh files (.ply .obj .stl .vtk .vtp) or folders")
    pr.add_argument("-o", "--output", required=True,
                    help="output folder: one landmark file per scan, in the inputs' sub-folders, and "
                         "palnet_summary.csv, to which each run adds its rows")
    pr.add_argument("--model", default=None, help="model file (default: the shipped model)")
    pr.add_argument("--format", default="mrk.json", choices=LANDMARK_FORMATS)
    pr.add_argument("--snap", default=DEFAULT_SNAP, choices=SNAP_METHODS + (NO_SNAP,),
                    help="put each landmark on the closest surface point (surface, the default), the nearest vertex, "
                         "the mean of the 12 nearest vertices, or leave it off the surface (none)")
    pr.add_argument("--units", default=AUTO_UNITS, choices=UNIT_CHOICES)
    pr.add_argument("--samplings", type=_samplings, default=DEFAULT_SAMPLINGS, metavar="N",
                    help="sample each scan's surface N times and average the network's answers: more accurate, "
                         "the network's time N times over (default %(default)s; see the README)")
    pr.add_argument("--png", default=None,
                    help="also render each scan with its landmarks to this PNG (PNG_<scan>.png for several scans)")
    pr.add_argument("--overwrite", action="store_true", help="replace existing landmark files and pictures")
    pr.add_argument("--keep-rejected", action="store_true",
                    help="also write the landmarks of a scan that is not a face (the exit status is still 1)")
    pr.add_argument("--show", action="store_true", help="print the landmarks of each scan")
    pr.add_argument("--measure", action="store_true",
                    help="also measure every landmark file of the output (with its scan, for the arcs) into "
                         "OUT/palnet_measurements.csv (kept if it exists, unless --overwrite)")
    pr.add_argument("--jobs", type=int, default=1, help="scans predicted at once in worker processes (default 1)")
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=_cmd_predict)

    t = sub.add_parser("train", help="train a model on a folder of annotated scans (needs torch)")
    t.add_argument("data", help="folder of (mesh, landmark file) pairs: ID/scan.ply + ID/landmarks.mrk.json, or NAME.ply + NAME.mrk.json")
    t.add_argument("-o", "--output", required=True, help="model file to write (.npz)")
    t.add_argument("--config", default=None, help="JSON file overriding training settings")
    t.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default 100); 0 with --init keeps that model's network and only learns "
                        "its starting shape, shape priors and confidence from DATA")
    split = t.add_mutually_exclusive_group()
    split.add_argument("--val-split", type=float, default=0.2, help="fraction of scans held out for validation")
    split.add_argument("--folds", type=int, default=None,
                       help="K-fold cross-validation report, then a final model trained on all scans (its shape "
                            "priors and confidence learnt from the out-of-fold answers)")
    t.add_argument("--augment", type=int, default=None, metavar="K",
                   help="also train on K altered copies of each scan (coarser, cut, holes, noise, spikes, any "
                        "pose), each aligned like a new scan; settings in the config's \"augment\" (default 0)")
    t.add_argument("--init", default=None, help="fine-tune from this model file")
    t.add_argument("--cache", default=None, help="preprocessing cache folder (default: OUTPUT.cache)")
    t.add_argument("--units", default=AUTO_UNITS, choices=UNIT_CHOICES)
    t.add_argument("--jobs", type=int, default=1, help="processes for preprocessing")
    t.add_argument("--events", action="store_true",
                   help="also print each epoch as one line for programs that follow the training: '@palnet ' "
                        "and a JSON object (event \"epoch\", epoch, loss, val_pointwise_mm, val_distancewise_mm, "
                        "lr, seconds, best)")
    t.set_defaults(func=_cmd_train)
    return p


BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                         "NUMEXPR_NUM_THREADS")


def limit_threads(threads: Optional[int]) -> int:
    """Threads for NumPy's BLAS (and torch) in this process and the workers it starts.

    By default BLAS starts a thread per core in every process: on a busy 2-core machine that
    made one scan 2.5x and a batch 4x slower than one thread per process. The variables only
    take effect before NumPy is first imported, which is why the command line sets them
    before any command runs (importing ``palnet`` does not import NumPy)."""
    if threads is None:
        given = [os.environ.get(v, "") for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")]
        threads = next((int(g) for g in given if g.strip().isdigit() and int(g) > 0), 1)
    if threads < 1:
        raise PalnetError("--threads must be at least 1, not {}".format(threads))
    for var in BLAS_THREAD_VARIABLES:
        os.environ[var] = str(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.threads = limit_threads(args.threads)  # before anything imports NumPy
        return int(args.func(args) or 0)
    except PalnetError as exc:
        print("palnet {}: error: {}".format(args.command, exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("palnet {}: interrupted".format(args.command), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
