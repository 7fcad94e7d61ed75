"""Training data: (scan, landmark file) pairs aligned, sampled and cached on disk.

Every scan goes through the same alignment and sampling as at prediction
time, so the network learns from what the aligner hands it. The result per
scan (even surface samples of the region of interest and the true landmarks,
both in the canonical frame) is cached under a key made of the two files'
contents and the preprocessing settings: editing a landmark file or changing a
setting recomputes exactly what changed.
"""
import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .align import detect_units
from .augment import DEFAULT_AUGMENT, augment_scan
from .datatypes import Mesh, unit_scale
from .errors import PalnetError
from .landmark_io import check_labels, read_landmarks
from .mesh_io import read_mesh
from .patches import roi_samples
from .pipeline import template_modes, to_canonical_frame

CACHE_VERSION = 13  # bump when alignment or sampling changes what a scan preprocesses to


@dataclass
class TrainingScan:
    scan_id: str
    samples: np.ndarray  # (N, 3) float32, canonical mm
    truth: np.ndarray    # (L, 3) float64, canonical mm
    fit_rms_mm: float
    source: str = ""     # the annotated scan an augmented copy was made from ("" for the scan itself)
    copy: int = 0        # 0: the scan itself; k > 0: its k-th augmented copy
    shape: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the fitted face template's mode coefficients

    @property
    def group(self) -> str:
        """Copies of one scan share a group: they must never straddle training and validation."""
        return self.source or self.scan_id


def copy_id(scan_id: str, copy: int) -> str:
    return scan_id if copy == 0 else "{}~aug{}".format(scan_id, copy)


def _digest(paths: Sequence[Path], settings: dict) -> str:
    h = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def preprocess_pair(mesh_path: Path, landmark_path: Path, labels: Sequence[str], template: np.ndarray,
                    spacing: float, units: str = "auto", augment: Optional[dict] = None,
                    copy: int = 0) -> Tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Align one annotated scan (or, for ``copy`` > 0, its copy-th augmented copy, see
    :mod:`palnet.augment`) and sample it: (samples, canonical truth, fit RMS, the fitted
    template's shape coefficients)."""
    mesh = read_mesh(mesh_path)
    lms = check_labels(read_landmarks(landmark_path), labels, landmark_path)
    known = np.isfinite(lms.points).all(axis=1)  # a landmark marked missing teaches nothing, is no error
    if not known.any():
        raise PalnetError("landmark file has no landmark with a position", landmark_path)
    # The file states its units, which need not be the scan's (a scan in cm annotated in mm);
    # mm is what the scan is converted to for alignment.
    points = lms.in_units("mm").points
    if copy > 0:
        to_mm = unit_scale(detect_units(mesh.vertices) if units == "auto" else units, "mm")
        rng = np.random.default_rng([zlib.crc32(np.ascontiguousarray(mesh.vertices).tobytes()), int(copy)])
        mesh, points = augment_scan(Mesh(mesh.vertices * to_mm, mesh.triangles, "mm", mesh.source),
                                    points, rng, augment or {})
        units = "mm"
    c = to_canonical_frame(mesh, template, units, template_modes(template))
    truth = c.alignment.to_canonical(points)
    samples = roi_samples(c.mesh, truth[np.isfinite(truth).all(axis=1)], spacing)
    return samples.astype(np.float32), truth, float(c.alignment.rms_mm), np.asarray(c.alignment.shape, np.float64)


def _job(args):
    scan_id, mesh_path, lm_path, labels, template, spacing, units, cache_file, augment, copy = args
    source = scan_id if copy else ""
    scan_id = copy_id(scan_id, copy)
    try:
        if cache_file and Path(cache_file).exists():
            with np.load(cache_file, allow_pickle=False) as d:
                return TrainingScan(scan_id, d["samples"], d["truth"], float(d["fit_rms_mm"]), source, copy,
                                    d["shape"]), None
        samples, truth, rms, shape = preprocess_pair(Path(mesh_path), Path(lm_path), labels, template, spacing,
                                                     units, augment, copy)
        if cache_file:
            tmp = str(cache_file) + ".tmp.npz"
            np.savez(tmp, samples=samples, truth=truth, fit_rms_mm=rms, shape=shape)
            os.replace(tmp, cache_file)
        return TrainingScan(scan_id, samples, truth, rms, source, copy, shape), None
    except PalnetError as exc:
        return None, "{}: {}".format(scan_id, exc)
    except Exception as exc:  # one unreadable pair never stops a data set
        return None, "{}: {}: {}".format(scan_id, type(exc).__name__, exc)


def load_training_scans(pairs: List[Tuple[str, Path, Path]], labels: Sequence[str], template: np.ndarray,
                        spacing: float, cache_dir: Optional[Path], units: str = "auto", jobs: int = 1,
                        progress: Optional[Callable] = None,
                        augment: Optional[dict] = None) -> Tuple[List[TrainingScan], List[str]]:
    """Preprocess (or load from cache) every pair, and ``augment["copies"]`` augmented copies
    of each; returns (scans, problems). A copy follows the scan it was made from."""
    import multiprocessing as mp
    settings = {"v": CACHE_VERSION, "labels": list(labels), "spacing": spacing, "units": units,
                "template": hashlib.sha1(np.ascontiguousarray(template, np.float64).tobytes()).hexdigest()}
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    augment = dict(DEFAULT_AUGMENT, **(augment or {}))
    tasks = []
    for scan_id, mesh_path, lm_path in pairs:
        for copy in range(int(augment["copies"]) + 1):
            # A copy's key adds the augmentation settings (the scan's own key stays as it was).
            extra = {} if copy == 0 else {"augment": {k: v for k, v in augment.items() if k != "copies"},
                                          "copy": copy}
            key = _digest([mesh_path, lm_path], dict(settings, **extra)) if cache_dir else None
            cache_file = str(Path(cache_dir) / (key + ".npz")) if cache_dir else None
            tasks.append((scan_id, str(mesh_path), str(lm_path), list(labels), template, spacing, units, cache_file,
                          augment, copy))
    scans, problems = [], []
    pool = mp.get_context("spawn" if os.name == "nt" else "fork").Pool(jobs) if jobs > 1 else None
    results = pool.imap(_job, tasks, chunksize=4) if pool else map(_job, tasks)
    try:
        for i, (scan, err) in enumerate(results, 1):
            if scan is not None:
                scans.append(scan)
            else:
                problems.append(err)
            if progress:
                progress(i, len(tasks), None, err)
    finally:
        if pool:
            pool.close()
            pool.join()
    return scans, problems
