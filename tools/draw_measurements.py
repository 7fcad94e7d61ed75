"""Pictures of the measurements: the shipped sample face with each measurement drawn on it.

Usage: python tools/draw_measurements.py [OUT_DIR] [--definitions JSON] [--columns 4] [--size 300]

Writes one contact sheet per group of the definitions (widths.png, heights.png, ...) into
OUT_DIR (default docs/measurements): a panel per measurement, its landmarks as red dots, a
distance as a line, a projected distance as its component along the face axis (the rest
dashed), an angle as its two arms and an arc, a surface arc as its path along the skin, and
asymmetry as each landmark's asymmetry vector, drawn ten times longer. Lines are drawn over
the surface (seen through it where they pass behind the face), as in anthropometry atlases.
Ratios (indices) are drawn by their parts. VTK offscreen, as palnet.render.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from palnet.landmark_io import read_landmarks
from palnet.measurements import asymmetry, face_frame, load_definitions, measure
from palnet.measurements.surface import SurfaceGraph
from palnet.mesh_io import read_mesh
from palnet.render import (SKIN_RGB, _ensure_headless_backend, _surface_actor, save_window_png, stack_pngs,
                           view_direction)
from palnet.resources import sample_landmarks_path, sample_scan_path

LINE_RGB = (0.05, 0.35, 0.95)
DASH_RGB = (0.35, 0.35, 0.35)
DOT_RGB = (0.85, 0.05, 0.05)
ASYM_SCALE = 10.0

# The view each measurement is seen best from; by group otherwise (front).
VIEW_OF_GROUP = {"widths": "front", "heights": "front", "nose": "side", "ears": "side", "depths": "three-quarter",
                 "angles": "side", "arcs": "front", "asymmetry": "front"}
VIEW_OF = {"sbal-sn_R": "below", "sbal-sn_L": "below", "ac-ac": "below", "al-al": "below", "c-sn": "side",
           "t-pg-t": "below"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default=str(Path(__file__).resolve().parent.parent / "docs" / "measurements"))
    ap.add_argument("--definitions", default=None)
    ap.add_argument("--columns", type=int, default=4)
    ap.add_argument("--size", type=int, default=300, help="pixels across one panel")
    args = ap.parse_args()
    _ensure_headless_backend()
    mesh, face = read_mesh(sample_scan_path()), read_landmarks(sample_landmarks_path())
    defs = load_definitions(args.definitions)
    values = {m.id: m for m in measure(face, defs, mesh=mesh, samples=0)}
    axes = face_frame(face, defs)  # rows: the subject's left, up, forward
    graph = SurfaceGraph(mesh)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    groups = {}
    for m in defs:
        if m.kind != "ratio":
            groups.setdefault(m.group, []).append(m)
    with tempfile.TemporaryDirectory() as tmp:
        for group, items in groups.items():
            jobs = [(m, None) for m in items]
            if group == "asymmetry":  # the vectors, seen from two sides; the regions' figures summarise them
                jobs = [(items[0], "front"), (items[0], "side"), (items[0], "below")]
            panels = []
            for k, (m, view) in enumerate(jobs):
                path = Path(tmp) / "{}_{}.png".format(group, k)
                draw_panel(mesh, face, m, values[m.id], axes, graph, path, args.size, view)
                panels.append(path)
            sheet = out / "{}.png".format(group)
            stack_pngs(panels, sheet, columns=min(args.columns, len(panels)), levels=40)
            _palette(sheet)
            print("{}: {} panels, {:.0f} kB".format(sheet, len(panels), sheet.stat().st_size / 1024))


def _palette(path: Path) -> None:
    """With Pillow at hand, 96 colours (octree, so the few line colours keep theirs): a third the bytes."""
    try:
        from PIL import Image
        octree, no_dither = Image.Quantize.FASTOCTREE, Image.Dither.NONE
    except (ImportError, AttributeError):  # no Pillow, or one older than 9.1
        return
    image = Image.open(str(path)).convert("RGB")
    image.quantize(colors=96, method=octree, dither=no_dither).save(str(path), optimize=True)


def view_of(m) -> str:
    view = VIEW_OF.get(m.id, VIEW_OF_GROUP.get(m.group, "front"))
    if view in ("side", "three-quarter") and m.landmarks and all(lab.endswith("_L") for lab in m.landmarks
                                                                  if lab.endswith(("_R", "_L"))) \
            and any(lab.endswith("_L") for lab in m.landmarks):
        view = "left" if view == "side" else "three-quarter-left"
    return view


def draw_panel(mesh, face, m, measured, axes, graph, path, size, view=None):
    pts = face.as_dict()
    shapes, dots, labels = [], [], []  # (points, rgb, radius factor, dashed)
    if m.kind in ("distance", "projected", "angle", "arc"):
        dots = [pts[lab] for lab in m.landmarks]
        labels = list(m.landmarks)
    if m.kind == "distance":
        shapes.append((np.array(dots), LINE_RGB, 1.0))
    elif m.kind == "projected":
        a, b = pts[m.landmarks[0]], pts[m.landmarks[1]]
        axis = axes["xyz".index(m.axis)]
        foot = a + float((b - a) @ axis) * axis
        shapes.append((np.array([a, foot]), LINE_RGB, 1.0))
        shapes.append((_dashes(foot, b), DASH_RGB, 0.5))
    elif m.kind == "angle":
        a, v, b = (pts[lab] for lab in m.landmarks)
        shapes.append((np.array([a, v, b]), LINE_RGB, 1.0))
        shapes.append((_angle_arc(a, v, b), (0.95, 0.55, 0.0), 0.8))
    elif m.kind == "arc":
        found = graph.arcs([np.array(dots)])[0]
        if found.length is not None:
            shapes.append((found.path, LINE_RGB, 1.0))
    elif m.kind == "asymmetry":
        asym = asymmetry(face)
        ok = np.isfinite(asym.magnitudes)
        for p, vec in zip(face.points[ok], asym.vectors[ok]):
            shapes.append((np.array([p, p + ASYM_SCALE * vec]), LINE_RGB, 1.0))
        dots = list(face.points[ok])
    focus = np.array(dots if len(dots) else face.points)
    caption = "{}\n{}".format(m.name, m.id)
    if measured.value is not None:
        unit = {"mm": " mm", "deg": " deg", "": ""}[m.units]
        caption += " = {:.1f}{}".format(measured.value, unit)
    if m.kind == "asymmetry":
        caption += " (vectors x{:g})".format(ASYM_SCALE)
    render(mesh, axes, view or view_of(m), focus, shapes, np.array(dots), labels, caption, path, size,
           dot_factor=1.3 if m.kind == "asymmetry" else 2.4)


def _dashes(a, b, n=9):
    t = np.linspace(0, 1, 2 * n)
    return [np.array([a + (b - a) * t[i], a + (b - a) * t[i + 1]]) for i in range(0, 2 * n - 1, 2)]


def _angle_arc(a, v, b, k=24):
    u, w = a - v, b - v
    r = 0.35 * min(np.linalg.norm(u), np.linalg.norm(w))
    u, w = u / np.linalg.norm(u), w / np.linalg.norm(w)
    ang = np.arccos(np.clip(u @ w, -1, 1))
    perp = w - (w @ u) * u
    perp /= np.linalg.norm(perp)
    t = np.linspace(0, ang, k)
    return v + r * (np.cos(t)[:, None] * u + np.sin(t)[:, None] * perp)


def render(mesh, axes, view, focus, shapes, dots, labels, caption, path, size, dot_factor=2.4):
    import vtkmodules.vtkRenderingFreeType  # noqa: F401
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401
    from vtkmodules.vtkRenderingCore import vtkRenderer, vtkRenderWindow, vtkTextActor

    w_px, h_px = size, int(size * 1.12)
    up, front = axes[1], axes[2]
    direction, view_up = view_direction(view, up, front)
    window = vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(8)
    window.SetSize(w_px, h_px)
    window.SetNumberOfLayers(2)
    ren = vtkRenderer()
    ren.SetBackground(1.0, 1.0, 1.0)
    ren.AddActor(_surface_actor(mesh.vertices, mesh.triangles, SKIN_RGB))
    right = np.cross(view_up, direction)
    c = 0.5 * (focus.min(0) + focus.max(0))
    xs, ys = (focus - c) @ right, (focus - c) @ view_up
    half = max(0.5 * np.ptp(xs), 0.5 * np.ptp(ys) * w_px / h_px, 16.0) * 1.6
    center = c + 0.5 * (xs.max() + xs.min()) * right + 0.5 * (ys.max() + ys.min()) * view_up
    center = center - 0.06 * half * view_up  # room for the caption below
    cam = ren.GetActiveCamera()
    cam.ParallelProjectionOn()
    cam.SetFocalPoint(*center)
    cam.SetPosition(*(center + direction * 600.0))
    cam.SetViewUp(*view_up)
    cam.SetParallelScale(half * h_px / w_px)
    ren.ResetCameraClippingRange()
    window.AddRenderer(ren)
    over = vtkRenderer()
    over.SetLayer(1)
    over.SetActiveCamera(cam)
    over.InteractiveOff()
    window.AddRenderer(over)
    radius = half * 0.011
    for points, rgb, factor in shapes:
        for piece in (points if isinstance(points, list) else [points]):
            over.AddActor(_tube(piece, radius * factor, rgb))
    for p in dots:
        over.AddActor(_ball(p, radius * dot_factor, DOT_RGB))
    window.Render()
    for lab in labels:
        p = dict(zip(labels, dots))[lab]
        ren.SetWorldPoint(p[0], p[1], p[2], 1.0)
        ren.WorldToDisplay()
        x, y, _ = ren.GetDisplayPoint()
        txt = vtkTextActor()
        txt.SetInput(lab)
        tp = txt.GetTextProperty()
        tp.SetFontSize(max(11, size // 24))
        tp.SetColor(0.45, 0.0, 0.0)
        tp.BoldOn()
        tp.SetBackgroundColor(1, 1, 1)
        tp.SetBackgroundOpacity(0.75)
        txt.SetPosition(x + 6, y + 4)
        over.AddViewProp(txt)
    cap = vtkTextActor()
    cap.SetInput(caption)
    tp = cap.GetTextProperty()
    tp.SetFontSize(max(11, size // 24))
    tp.SetColor(0.1, 0.1, 0.1)
    tp.SetBackgroundColor(1, 1, 1)
    tp.SetBackgroundOpacity(0.85)
    tp.SetJustificationToCentered()
    cap.SetPosition(w_px // 2, 6)
    over.AddViewProp(cap)
    save_window_png(window, path)


def _tube(points, radius, rgb):
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
    from vtkmodules.vtkFiltersCore import vtkTubeFilter

    pts = vtkPoints()
    for p in points:
        pts.InsertNextPoint(*map(float, p))
    line = vtkCellArray()
    line.InsertNextCell(len(points))
    for i in range(len(points)):
        line.InsertCellPoint(i)
    poly = vtkPolyData()
    poly.SetPoints(pts)
    poly.SetLines(line)
    tube = vtkTubeFilter()
    tube.SetInputData(poly)
    tube.SetRadius(radius)
    tube.SetNumberOfSides(10)
    tube.CappingOn()
    return _coloured(tube, rgb)


def _ball(p, radius, rgb):
    from vtkmodules.vtkFiltersSources import vtkSphereSource

    s = vtkSphereSource()
    s.SetCenter(*map(float, p))
    s.SetRadius(radius)
    s.SetThetaResolution(16)
    s.SetPhiResolution(12)
    return _coloured(s, rgb)


def _coloured(source, rgb):
    """An actor showing ``source``'s output in one colour."""
    from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper
    mapper = vtkPolyDataMapper()
    mapper.SetInputConnection(source.GetOutputPort())
    actor = vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*rgb)
    return actor


if __name__ == "__main__":
    sys.exit(main())
