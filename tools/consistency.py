"""Label-free checks of a model on any scan: does the answer stay put when nothing about the face changes?

Real scans rarely come with landmarks, but a method that understands faces answers the same
face the same way however it is presented. Each check gives mm over the landmarks that
both answers place (a landmark reported missing in either is left out and counted):

- **mirror**: the scan mirrored (x -> -x), predicted, mirrored back, ``_R``/``_L`` swapped,
  against the answer on the scan itself;
- **remesh**: the surface decimated to 30 % of its vertices, and subdivided once (every
  triangle into four), against the answer on the scan as it is;
- **crop**: the scan cut to the face (in front of the ears, above the chin's underside, below
  the hairline, planes placed from the scan's own answer; a scan without tragions, a face-only
  capture already, is cut 10 mm behind its deepest landmark) against the answer on the whole scan;
- **smaller**, **larger**: the scan scaled by 0.8 and 1.25 (a smaller or larger face, or a scan
  whose numbers are not in the units they seem to be), the answer scaled back, against the
  answer on the scan as it is.

``python tools/benchmark.py --consistency SCAN_OR_FOLDER... [--model M] [--png DIR]`` runs them.
"""
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

CHECKS = ("mirror", "decimate", "subdivide", "crop", "smaller", "larger")
SIZE_FACTORS = {"smaller": 0.8, "larger": 1.25}
FACE_ONLY_MARGIN_MM = 10.0  # crop of a scan without tragions: this far behind its deepest landmark
DECIMATED_FRACTION = 0.3


def _to_mm(pred) -> np.ndarray:
    return pred.landmarks.in_units("mm").points


def _distance(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
    both = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    d = np.linalg.norm(a - b, axis=1)[both]
    return {"mean_mm": float(d.mean()) if d.size else float("nan"),
            "max_mm": float(d.max()) if d.size else float("nan"),
            "compared": int(both.sum()), "missing_in_either": int((~both).sum())}


def mirrored(mesh):
    from palnet.datatypes import Mesh
    return Mesh(mesh.vertices * np.array([-1.0, 1.0, 1.0]), mesh.triangles[:, ::-1].copy(), mesh.units, mesh.source)


def resized(mesh, factor: float):
    from palnet.datatypes import Mesh
    return Mesh(mesh.vertices * factor, mesh.triangles, mesh.units, mesh.source)


def decimated(mesh, fraction: float = DECIMATED_FRACTION):
    from vtkmodules.vtkFiltersCore import vtkDecimatePro
    from palnet.mesh_io import mesh_to_polydata, polydata_to_mesh
    f = vtkDecimatePro()
    f.SetInputData(mesh_to_polydata(mesh))
    f.SetTargetReduction(1.0 - fraction)
    f.PreserveTopologyOn()
    f.Update()
    return polydata_to_mesh(f.GetOutput(), mesh.units, mesh.source)


def subdivided(mesh):
    from palnet.datatypes import Mesh
    from palnet.synth import subdivide
    v, t = subdivide(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.triangles, np.int64))
    return Mesh(v, t, mesh.units, mesh.source)


def face_crop(mesh, pred):
    """The scan cut to the face, with planes placed from ``pred`` (its answer on the whole scan)
    in the canonical frame: 3 mm in front of the tragions, 10 mm below menton, 15 mm above trichion.
    A scan without tragions is a face-only capture already: its back plane lies 10 mm behind the
    deepest landmark placed (a plane nearer the front would cut the eyes and cheeks away, and
    then measure a broken scan, not a cropped one)."""
    from palnet.cleanup import remove_vertices
    from palnet.datatypes import unit_scale
    labels = pred.landmarks.labels
    canon = pred.alignment.to_canonical(mesh.vertices * unit_scale(pred.units, "mm"))
    lm = pred.alignment.to_canonical(_to_mm(pred))
    at = {lab: lm[i] for i, lab in enumerate(labels) if np.isfinite(lm[i]).all()}
    front = max(at[k][2] for k in ("t_R", "t_L") if k in at) + 3.0 if any(k in at for k in ("t_R", "t_L")) \
        else np.nanmin(lm[:, 2]) - FACE_ONLY_MARGIN_MM
    low = at["me"][1] - 10.0 if "me" in at else -np.inf
    high = at["tr"][1] + 15.0 if "tr" in at else np.inf
    drop = (canon[:, 2] < front) | (canon[:, 1] < low) | (canon[:, 1] > high)
    return remove_vertices(mesh, drop)


def check_scan(mesh, model, checks=CHECKS, png_dir: Optional[Path] = None, name: str = "scan") -> dict:
    """Every check on one scan: {"status": ..., check: {"mean_mm", "max_mm", ...}}."""
    from palnet.pipeline import predict
    from palnet.priors import mirror_pairs
    base = predict(mesh, model)
    ref = _to_mm(base)
    out = {"status": base.status, "missing": list(base.missing)}
    swap = mirror_pairs(base.landmarks.labels)
    variants = {}
    for check in checks:
        try:
            if check == "mirror":
                p = predict(mirrored(mesh), model)
                pts = _to_mm(p)[swap] * np.array([-1.0, 1.0, 1.0])
            elif check == "decimate":
                variant = decimated(mesh)
                p = predict(variant, model)
                pts = _to_mm(p)
            elif check == "subdivide":
                variant = subdivided(mesh)
                p = predict(variant, model)
                pts = _to_mm(p)
            elif check == "crop":
                variant = face_crop(mesh, base)
                p = predict(variant, model)
                pts = _to_mm(p)
            elif check in SIZE_FACTORS:
                p = predict(resized(mesh, SIZE_FACTORS[check]), model)
                pts = _to_mm(p) / SIZE_FACTORS[check]
            else:
                raise ValueError(check)
        except Exception as exc:  # one failing variant is reported, the others still run
            out[check] = {"error": "{}: {}".format(type(exc).__name__, exc)}
            continue
        out[check] = dict(_distance(ref, pts), status=p.status)
        if check == "crop":
            variants[check] = (variant, p)
    if png_dir is not None:
        from palnet.render import RenderOptions, render_landmarks
        png_dir = Path(png_dir)
        png_dir.mkdir(parents=True, exist_ok=True)
        rot = base.alignment.rotation  # canonical axes (y up, z front) seen in the scan's frame
        render_landmarks(mesh, base.landmarks, png_dir / "{}.png".format(name),
                         RenderOptions(views=("front", "side"), up=rot[1], front=rot[2],
                                       title="{} ({})".format(name, base.status)))
    return out


def summarise(results: List[dict]) -> dict:
    """Mean of each check's mean over the scans that ran it."""
    summary = {}
    for check in CHECKS:
        values = [r[check]["mean_mm"] for r in results if check in r and "mean_mm" in r[check]
                  and np.isfinite(r[check]["mean_mm"])]
        if values:
            summary[check] = {"mean_mm": float(np.mean(values)), "worst_scan_mm": float(np.max(values)),
                              "n_scans": len(values)}
    return summary
