"""Pictures of landmarks on a surface: VTK offscreen rendering to a PNG.

``render_landmarks(mesh, landmarks, "out.png")`` draws a skin-coloured, lit surface
with each landmark as a small coloured sphere and its label as 2D text beside it,
one viewport per view, side by side in one image.
Labels are drawn only for landmarks the camera can see (checked against the
depth buffer), so a side view does not print the far ear's names over the face.
Views are named ("front", "side" = the subject's right, "left", "top", "below",
"three-quarter", ...) and follow the face's ``up``/``front`` directions, so posed
scans are shown the same way. What to draw and how is a ``RenderOptions``
(``RenderOptions(views=("front",), size=(600, 600), up=..., front=...)``); the
defaults give two 900 x 900 views, front and side. ``stack_pngs`` tiles several
pictures into one.

Works without a display: on Linux with no ``DISPLAY`` VTK is asked for its EGL
window (headless OpenGL through Mesa or the GPU driver); elsewhere the platform
default is used.
"""
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from .datatypes import Landmarks, Mesh

SKIN_RGB = (0.91, 0.74, 0.64)
BACKGROUND_RGB = (1.0, 1.0, 1.0)

# Colours by anatomical group of the palnet50 labels; other labels cycle through PALETTE.
PALETTE = [
    (0.84, 0.15, 0.16), (0.12, 0.47, 0.71), (0.17, 0.63, 0.17), (0.58, 0.40, 0.74),
    (1.00, 0.50, 0.05), (0.09, 0.75, 0.81), (0.89, 0.47, 0.76), (0.55, 0.34, 0.29),
    (0.74, 0.74, 0.13), (0.50, 0.50, 0.50),
]
GROUP_RGB = {
    "midline": (0.80, 0.10, 0.10),
    "forehead": (0.45, 0.25, 0.70),
    "eye": (0.10, 0.40, 0.85),
    "cheek": (0.10, 0.60, 0.20),
    "nose": (0.90, 0.45, 0.00),
    "mouth": (0.85, 0.10, 0.55),
    "ear": (0.00, 0.60, 0.65),
}
_GROUP_OF_NAME = {
    "ft": "forehead", "os": "eye", "ps": "eye", "pi": "eye", "en": "eye", "ex": "eye",
    "or": "eye", "zy": "cheek", "go": "cheek", "t": "ear", "ac": "nose", "al": "nose",
    "sbal": "nose", "cph": "mouth", "ch": "mouth", "sa": "ear", "sba": "ear", "pa": "ear",
    "obs": "ear",
}
_MIDLINE = {"tr", "g", "n", "prn", "c", "sn", "ls", "sto", "li", "sl", "pg", "me"}

VIEW_NAMES = ("front", "side", "right", "left", "top", "bottom", "back", "three-quarter",
              "three-quarter-left", "below")

ColorLike = Sequence[float]


def default_colors(labels: Sequence[str]) -> List[Tuple[float, float, float]]:
    """One RGB per label: by anatomical group for palnet50 names, else a cycling palette."""
    out = []
    for i, lab in enumerate(labels):
        base = lab.rsplit("_", 1)[0] if lab.endswith(("_R", "_L")) else lab
        if base in _MIDLINE:
            out.append(GROUP_RGB["midline"])
        elif base in _GROUP_OF_NAME:
            out.append(GROUP_RGB[_GROUP_OF_NAME[base]])
        else:
            out.append(PALETTE[i % len(PALETTE)])
    return out


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(3)
    n = np.linalg.norm(v)
    if n == 0:
        raise ValueError("zero-length direction")
    return v / n


def view_direction(view: str, up=(0, 1, 0), front=(0, 0, 1)) -> Tuple[np.ndarray, np.ndarray]:
    """(direction from the focal point to the camera, camera view-up) for a named view.

    ``up`` and ``front`` are the face's up and anterior directions in mesh
    coordinates; the subject's left is ``up x front``. "side" (= "right") looks at
    the subject's right side; "below" looks up at the face from 45 degrees below
    the front (nostrils, chin).
    """
    u = _unit(up)
    f = _unit(front)
    f = _unit(f - u * np.dot(f, u))  # make the pair orthogonal
    left = np.cross(u, f)
    right = -left
    s = np.sqrt(0.5)
    table = {
        "front": (f, u),
        "side": (right, u),
        "right": (right, u),
        "left": (left, u),
        "top": (u, f),
        "bottom": (-u, -f),
        "back": (-f, u),
        "three-quarter": (_unit(s * f + s * right), u),
        "three-quarter-left": (_unit(s * f + s * left), u),
        "below": (_unit(s * f - s * u), _unit(s * u + s * f)),
    }
    if view not in table:
        raise ValueError("unknown view {!r} (use one of {})".format(view, ", ".join(VIEW_NAMES)))
    return table[view]


def _ensure_headless_backend() -> None:
    # Without an X server VTK's default X window fails (with a warning) before it
    # falls back; ask for EGL directly. Only for this process and only when unset.
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") \
            and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def _polydata(vertices: np.ndarray, triangles: np.ndarray):
    from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData

    pts = vtkPoints()
    pts.SetData(numpy_to_vtk(np.ascontiguousarray(vertices, dtype=np.float64), deep=True))
    poly = vtkPolyData()
    poly.SetPoints(pts)
    if len(triangles):
        tri = np.ascontiguousarray(triangles, dtype=np.int64)
        offsets = np.arange(0, 3 * len(tri) + 1, 3, dtype=np.int64)
        cells = vtkCellArray()
        cells.SetData(numpy_to_vtkIdTypeArray(offsets, deep=True),
                      numpy_to_vtkIdTypeArray(tri.reshape(-1), deep=True))
        poly.SetPolys(cells)
    return poly


def _surface_actor(vertices: np.ndarray, triangles: np.ndarray, color: ColorLike,
                   vertex_colors: Optional[np.ndarray] = None):
    from vtkmodules.vtkFiltersCore import vtkPolyDataNormals
    from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper

    poly = _polydata(vertices, triangles)
    if vertex_colors is not None:
        from vtkmodules.util.numpy_support import numpy_to_vtk

        rgb = np.clip(np.asarray(vertex_colors, dtype=np.float64).reshape(-1, 3) * 255, 0, 255)
        arr = numpy_to_vtk(np.ascontiguousarray(rgb.astype(np.uint8)), deep=True)
        arr.SetName("rgb")
        poly.GetPointData().SetScalars(arr)
    normals = vtkPolyDataNormals()
    normals.SetInputData(poly)
    normals.SetFeatureAngle(80.0)
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.AutoOrientNormalsOff()
    mapper = vtkPolyDataMapper()
    mapper.SetInputConnection(normals.GetOutputPort())
    if vertex_colors is not None:
        mapper.SetScalarModeToUsePointData()
        mapper.SetColorModeToDirectScalars()
    else:
        mapper.ScalarVisibilityOff()
    actor = vtkActor()
    actor.SetMapper(mapper)
    prop = actor.GetProperty()
    prop.SetColor(*color)
    prop.SetSpecular(0.12)
    prop.SetSpecularPower(20.0)
    prop.SetDiffuse(0.85)
    prop.SetAmbient(0.12)
    # Scans are open surfaces seen from either side: light the back faces too.
    prop.BackfaceCullingOff()
    return actor


def _spheres_actor(points: np.ndarray, colors: np.ndarray, radius: float):
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkFiltersCore import vtkGlyph3D
    from vtkmodules.vtkFiltersSources import vtkSphereSource
    from vtkmodules.vtkRenderingCore import vtkActor, vtkPolyDataMapper

    poly = _polydata(points, np.zeros((0, 3), np.int64))
    rgb = np.ascontiguousarray(np.clip(colors * 255, 0, 255).astype(np.uint8))
    rgb = numpy_to_vtk(rgb, deep=True)
    rgb.SetName("rgb")
    poly.GetPointData().SetScalars(rgb)
    sphere = vtkSphereSource()
    sphere.SetRadius(radius)
    sphere.SetThetaResolution(16)
    sphere.SetPhiResolution(12)
    glyph = vtkGlyph3D()
    glyph.SetInputData(poly)
    glyph.SetSourceConnection(sphere.GetOutputPort())
    glyph.SetScaleModeToDataScalingOff()
    glyph.SetColorModeToColorByScalar()
    mapper = vtkPolyDataMapper()
    mapper.SetInputConnection(glyph.GetOutputPort())
    mapper.SetScalarModeToUsePointData()
    mapper.SetColorModeToDirectScalars()
    actor = vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetSpecular(0.3)
    return actor


def _as_arrays(mesh, landmarks, label_names):
    if isinstance(mesh, Mesh):
        vertices, triangles = mesh.vertices, mesh.triangles
    else:
        vertices, triangles = mesh
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    triangles = np.asarray(triangles, dtype=np.int64).reshape(-1, 3)
    if landmarks is None:
        points, names = np.zeros((0, 3)), []
    elif isinstance(landmarks, Landmarks):
        points, names = landmarks.points, list(landmarks.labels)
    else:
        points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 3)
        names = [str(i) for i in range(len(points))]
    if label_names is not None:
        names = [str(x) for x in label_names]
        if len(names) != len(points):
            raise ValueError("{} label names for {} landmarks".format(len(names), len(points)))
    return vertices, triangles, points, names


def _frame(points: np.ndarray, vertices: np.ndarray, direction: np.ndarray, view_up: np.ndarray,
           margin: float) -> Tuple[np.ndarray, float]:
    """Focal point and parallel scale (half the visible height) showing ``points`` (or the mesh)."""
    p = points if len(points) else vertices
    right = np.cross(view_up, direction)  # screen x for a camera looking along -direction
    center_w = 0.5 * (p.min(0) + p.max(0))
    xs = (p - center_w) @ right
    ys = (p - center_w) @ view_up
    cx = 0.5 * (xs.min() + xs.max())
    cy = 0.5 * (ys.min() + ys.max())
    half_w = 0.5 * (xs.max() - xs.min())
    half_h = 0.5 * (ys.max() - ys.min())
    center = center_w + cx * right + cy * view_up
    half = max(half_h, half_w) * (1.0 + margin) + 1e-6
    return center, half


def _spread_labels(anchors: np.ndarray, sizes: np.ndarray, center: np.ndarray,
                   offset: float, bounds: Tuple[float, float, float, float]) -> np.ndarray:
    """Lower-left corners of label boxes beside their anchors, pushed apart where they overlap.

    A label goes on the side of its point away from the picture's vertical centre
    line (points near that line get theirs on the right), at the point's height;
    overlapping boxes are then moved apart vertically.
    """
    n = len(anchors)
    if n == 0:
        return np.zeros((0, 2))
    dx = anchors[:, 0] - center[0]
    right = dx > -0.02 * (bounds[2] - bounds[0])
    pos = np.empty((n, 2))
    pos[:, 0] = np.where(right, anchors[:, 0] + offset, anchors[:, 0] - offset - sizes[:, 0])
    pos[:, 1] = anchors[:, 1] - 0.5 * sizes[:, 1]
    home = pos.copy()
    x0, y0, x1, y1 = bounds
    order = np.arange(n)
    for _ in range(300):
        lo = pos[:, None, :]
        hi = (pos + sizes)[:, None, :]
        overlap = np.minimum(hi, (pos + sizes)[None]) - np.maximum(lo, pos[None])
        ox, oy = overlap[..., 0], overlap[..., 1]
        hit = (ox > 0) & (oy > 0)
        np.fill_diagonal(hit, False)
        if not hit.any():
            break
        cy = pos[:, 1] + sizes[:, 1] * 0.5
        sign = np.sign(cy[:, None] - cy[None, :])
        sign = np.where(sign == 0, np.sign(order[:, None] - order[None, :]), sign)
        push = np.where(hit, sign * (oy * 0.5 + 0.5), 0.0).sum(1)
        pos[:, 1] += push
        pos[:, 1] += 0.01 * (home[:, 1] - pos[:, 1])
        pos[:, 0] = np.clip(pos[:, 0], x0, x1 - sizes[:, 0])
        pos[:, 1] = np.clip(pos[:, 1], y0, y1 - sizes[:, 1])
    return pos


def _visibility(window, renderers, views, points, up, front, size, slack):
    """Which landmarks each view sees (depth test against the bare surface) and where; a
    surface less than ``slack`` in front of a landmark does not hide it."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkCommonCore import vtkFloatArray

    w_px, h_px = size
    n = len(renderers)
    visible = np.zeros((n, len(points)), dtype=bool)
    screen = np.zeros((n, len(points), 2))
    window.Render()
    for k, ren in enumerate(renderers):
        direction, _ = view_direction(views[k], up, front)
        x0 = k * w_px
        zbuf = vtkFloatArray()
        window.GetZbufferData(x0, 0, x0 + w_px - 1, h_px - 1, zbuf)
        z = vtk_to_numpy(zbuf).reshape(h_px, w_px)
        for i, p in enumerate(points):
            ren.SetWorldPoint(p[0], p[1], p[2], 1.0)
            ren.WorldToDisplay()
            dx, dy, _ = ren.GetDisplayPoint()
            screen[k, i] = (dx - x0, dy)
            ix, iy = int(round(dx - x0)), int(round(dy))
            if not (0 <= ix < w_px and 0 <= iy < h_px):
                continue
            # The farthest surface in the 3x3 pixels around the point: a point on the
            # silhouette counts as seen if any pixel next to it reaches it.
            zs = float(z[max(0, iy - 1):iy + 2, max(0, ix - 1):ix + 2].max())
            if zs >= 1.0:
                visible[k, i] = True  # background there: nothing hides the point
                continue
            ren.SetDisplayPoint(dx, dy, zs)
            ren.DisplayToWorld()
            wp = ren.GetWorldPoint()
            hit = np.array(wp[:3]) / max(wp[3], 1e-12)
            # How far in front of the landmark (towards the camera) that surface is.
            visible[k, i] = float(np.dot(hit - p, direction)) < slack
    return visible, screen


def _add_labels(ren, names, rgb, anchors, size, font_size, offset):
    """Name boxes beside the points (viewport pixels), with thin leader lines."""
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
    from vtkmodules.vtkRenderingCore import (
        vtkActor2D, vtkCoordinate, vtkPolyDataMapper2D, vtkTextActor,
    )

    w_px, h_px = size
    char_w = 0.62 * font_size
    sizes = np.array([[char_w * len(nm) + 8, font_size + 6] for nm in names], dtype=np.float64)
    corners = _spread_labels(anchors, sizes, np.array([w_px / 2.0, h_px / 2.0]), offset,
                             bounds=(2.0, 2.0, w_px - 2.0, h_px - 2.0))
    line_pts = vtkPoints()
    lines = vtkCellArray()
    for a, corner, sz in zip(anchors, corners, sizes):
        end = np.clip(a, corner, corner + sz)
        line_pts.InsertNextPoint(a[0], a[1], 0.0)
        line_pts.InsertNextPoint(end[0], end[1], 0.0)
        lines.InsertNextCell(2)
        lines.InsertCellPoint(line_pts.GetNumberOfPoints() - 2)
        lines.InsertCellPoint(line_pts.GetNumberOfPoints() - 1)
    poly = vtkPolyData()
    poly.SetPoints(line_pts)
    poly.SetLines(lines)
    coord = vtkCoordinate()
    coord.SetCoordinateSystemToViewport()
    mapper = vtkPolyDataMapper2D()
    mapper.SetInputData(poly)
    mapper.SetTransformCoordinate(coord)
    leaders = vtkActor2D()
    leaders.SetMapper(mapper)
    leaders.GetProperty().SetColor(0.2, 0.2, 0.2)
    leaders.GetProperty().SetOpacity(0.7)
    ren.AddViewProp(leaders)
    for nm, c, corner in zip(names, rgb, corners):
        txt = vtkTextActor()
        txt.SetInput(nm)
        tp = txt.GetTextProperty()
        tp.SetFontSize(font_size)
        tp.BoldOn()
        dark = np.asarray(c) * 0.75  # a little darker than the sphere: contrast on white
        tp.SetColor(*dark)
        tp.SetBackgroundColor(1.0, 1.0, 1.0)
        tp.SetBackgroundOpacity(0.8)
        tp.SetFrame(True)
        tp.SetFrameColor(*dark)
        tp.SetFrameWidth(1)
        tp.SetJustificationToLeft()
        tp.SetVerticalJustificationToBottom()
        txt.SetPosition(float(corner[0] + 4), float(corner[1] + 3))
        ren.AddViewProp(txt)


def _caption(text, font_size, rgb, position, centred=False, bold=False, boxed=False):
    from vtkmodules.vtkRenderingCore import vtkTextActor

    cap = vtkTextActor()
    cap.SetInput(text)
    tp = cap.GetTextProperty()
    tp.SetFontSize(font_size)
    tp.SetColor(*rgb)
    tp.SetBold(bool(bold))
    if boxed:
        tp.SetBackgroundColor(1.0, 1.0, 1.0)
        tp.SetBackgroundOpacity(0.85)
    if centred:
        tp.SetJustificationToCentered()
    cap.SetPosition(*position)
    return cap


@dataclass(frozen=True)
class RenderOptions:
    """What ``render_landmarks`` draws and how; every field has the default used when none is given.

    The camera: ``views``: names from VIEW_NAMES, one viewport each, side by side.
    ``size``: pixels (width, height) of *each* view. ``up``/``front``: the face's up and
    anterior directions in mesh coordinates (they differ for posed scans). ``focus``:
    labels, or a (K, 3) array of points, whose extent the camera frames (a close-up);
    default all landmarks (the whole mesh if there are none). ``margin``: space around
    the framed extent, as a fraction of it.

    The landmarks: ``labels``: draw the names (True/False, or one flag per landmark);
    only landmarks a view sees are named in it. ``label_names``: names to show instead
    of the landmarks' own. ``colors``: one RGB (0..1) per landmark, or one for all
    (default: by anatomical group). ``point_radius``: of the spheres, in mesh units
    (default: from the scan's size). ``extra_points``: (K, 3) small grey dots (a
    candidate set while debugging).

    The picture: ``title``: a caption across the top. ``view_titles``: each view's
    name in its corner. ``font_size``: of the labels (titles are a little larger).
    ``vertex_colors``: (N, 3) RGB per vertex instead of the uniform skin colour.
    """

    # the camera
    views: Sequence[str] = ("front", "side")
    size: Tuple[int, int] = (900, 900)
    up: Sequence[float] = (0, 1, 0)
    front: Sequence[float] = (0, 0, 1)
    focus: Union[Sequence[str], np.ndarray, None] = None
    margin: float = 0.25
    # the landmarks
    labels: Union[bool, Sequence[bool]] = True
    label_names: Optional[Sequence[str]] = None
    colors: Optional[Sequence[ColorLike]] = None
    point_radius: Optional[float] = None
    extra_points: Optional[np.ndarray] = None
    # the picture
    title: Optional[str] = None
    view_titles: bool = True
    font_size: int = 15
    vertex_colors: Optional[np.ndarray] = None


def render_landmarks(
    mesh: Union[Mesh, Tuple[np.ndarray, np.ndarray]],
    landmarks: Union[Landmarks, np.ndarray, None],
    path: Union[str, os.PathLike],
    options: Optional[RenderOptions] = None,
) -> str:
    """Render the surface and its landmarks, one viewport per view, into one PNG at ``path``.

    ``mesh``: a Mesh or (vertices, triangles). ``landmarks``: a Landmarks, an (L, 3)
    array or None. ``options``: a RenderOptions (default: ``RenderOptions()``, front
    and side views of 900 x 900 pixels, every landmark labelled). Returns the path
    written.
    """
    opts = options if options is not None else RenderOptions()
    up, front, font_size = opts.up, opts.front, opts.font_size
    _ensure_headless_backend()
    import vtkmodules.vtkRenderingFreeType  # noqa: F401  (text rendering)
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL classes)
    from vtkmodules.vtkRenderingCore import vtkLightKit, vtkRenderer, vtkRenderWindow

    vertices, triangles, points, names = _as_arrays(mesh, landmarks, opts.label_names)
    if len(vertices) == 0:
        raise ValueError("nothing to render: the mesh has no vertices")
    if opts.vertex_colors is not None and len(opts.vertex_colors) != len(vertices):
        raise ValueError("{} vertex colours for {} vertices".format(len(opts.vertex_colors),
                                                                 len(vertices)))
    views = list(opts.views)
    if not views:
        raise ValueError("no views asked for")
    for view in views:
        view_direction(view, up, front)  # unknown names fail before any window is made
    if opts.colors is None:
        rgb = np.asarray(default_colors(names), dtype=np.float64).reshape(-1, 3)
    else:
        rgb = np.asarray(opts.colors, dtype=np.float64).reshape(-1, 3)
        if len(rgb) == 1 and len(points) > 1:
            rgb = np.repeat(rgb, len(points), axis=0)
        if len(rgb) != len(points):
            raise ValueError("{} colours for {} landmarks".format(len(rgb), len(points)))
    if isinstance(opts.labels, (bool, np.bool_)):
        show_label = np.full(len(points), bool(opts.labels))
    else:
        show_label = np.asarray(opts.labels, dtype=bool).reshape(-1)
        if len(show_label) != len(points):
            raise ValueError("{} label flags for {} landmarks".format(len(show_label), len(points)))
    if opts.focus is not None and len(opts.focus) and not isinstance(opts.focus[0], str):
        frame_points = np.asarray(opts.focus, dtype=np.float64).reshape(-1, 3)
    elif opts.focus:
        index = {lab: i for i, lab in enumerate(names)}
        unknown = [f for f in opts.focus if f not in index]
        if unknown:
            raise ValueError("focus label(s) not among the landmarks: {}".format(
                ", ".join(unknown)))
        frame_points = points[[index[f] for f in opts.focus]]
    else:
        frame_points = points
    # A missing landmark (NaN: the scan does not show it) is not drawn.
    shown = np.isfinite(points).all(axis=1)
    if not shown.all():
        points, rgb, show_label = points[shown], rgb[shown], show_label[shown]
        names = [name for name, s in zip(names, shown) if s]
    frame_points = frame_points[np.isfinite(frame_points).all(axis=1)]

    w_px, h_px = int(opts.size[0]), int(opts.size[1])
    n = len(views)
    window = vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(8)
    window.SetSize(w_px * n, h_px)
    # Every length below is a fraction of the scan's size, never a number of mm: a scan in
    # metres (a face 0.2 across) is drawn like the same scan in millimetres.
    extent = float(np.linalg.norm(np.ptp(vertices, axis=0)))
    extent = extent if np.isfinite(extent) and extent > 0 else 1.0

    renderers, halves = [], []
    for k, view in enumerate(views):
        direction, view_up = view_direction(view, up, front)
        ren = vtkRenderer()
        ren.SetViewport(k / n, 0.0, (k + 1) / n, 1.0)
        ren.SetBackground(*BACKGROUND_RGB)
        ren.AddActor(_surface_actor(vertices, triangles, SKIN_RGB, opts.vertex_colors))
        center, half = _frame(frame_points, vertices, direction, view_up, opts.margin)
        if len(frame_points) < 2:
            half = max(half, 0.15 * extent)
        cam = ren.GetActiveCamera()
        cam.ParallelProjectionOn()
        cam.SetFocalPoint(*center)
        cam.SetPosition(*(center + direction * 4.0 * extent))
        cam.SetViewUp(*view_up)
        cam.SetParallelScale(half * max(1.0, h_px / float(w_px)))
        ren.ResetCameraClippingRange()
        vtkLightKit().AddLightsToRenderer(ren)
        window.AddRenderer(ren)
        renderers.append(ren)
        halves.append(half)

    # Floors: about 0.6 mm and 1.5 mm on a head 400 mm across (corner to corner).
    radius = opts.point_radius if opts.point_radius is not None else max(0.0015 * extent, min(halves) * 0.012)
    if len(points):
        visible, screen = _visibility(window, renderers, views, points, up, front,
                                      (w_px, h_px), max(0.004 * extent, 2.5 * radius))
        spheres = _spheres_actor(points, rgb, radius)
        for ren in renderers:
            ren.AddActor(spheres)
    if opts.extra_points is not None and len(opts.extra_points):
        extra = np.asarray(opts.extra_points, dtype=np.float64).reshape(-1, 3)
        dots = _spheres_actor(extra, np.full((len(extra), 3), 0.35), radius * 0.35)
        for ren in renderers:
            ren.AddActor(dots)

    for k, ren in enumerate(renderers):
        if opts.view_titles:
            ren.AddViewProp(_caption(views[k], font_size + 3, (0.25, 0.25, 0.25), (10, 8)))
        if len(points):
            idx = np.flatnonzero(visible[k] & show_label)
            if len(idx):
                # Label boxes start just outside the sphere drawn at the point.
                offset = radius / halves[k] * h_px * 0.5 / max(1.0, h_px / float(w_px)) + 14
                _add_labels(ren, [names[i] for i in idx], rgb[idx], screen[k, idx],
                            (w_px, h_px), font_size, offset)
    if opts.title:
        window.SetNumberOfLayers(2)
        overlay = vtkRenderer()
        overlay.SetLayer(1)
        overlay.SetViewport(0.0, 0.0, 1.0, 1.0)
        overlay.InteractiveOff()
        overlay.AddViewProp(_caption(opts.title, font_size + 5, (0.1, 0.1, 0.1),
                                     (w_px * n // 2, h_px - font_size - 20), centred=True,
                                     bold=True, boxed=True))
        window.AddRenderer(overlay)

    return save_window_png(window, path)


def save_window_png(window, path) -> str:
    """Render ``window`` (offscreen), write it as a PNG at ``path`` (folders made), close it."""
    from vtkmodules.vtkIOImage import vtkPNGWriter
    from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter
    window.Render()
    grab = vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    out = os.fspath(path)
    parent = os.path.dirname(out)
    if parent:
        os.makedirs(parent, exist_ok=True)
    writer = vtkPNGWriter()
    writer.SetFileName(out)
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    window.Finalize()
    return out


def _read_png(path) -> np.ndarray:
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOImage import vtkPNGReader

    reader = vtkPNGReader()
    reader.SetFileName(os.fspath(path))
    reader.Update()
    img = reader.GetOutput()
    w, h, _ = img.GetDimensions()
    rgb = vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)[..., :3]
    return rgb[::-1]  # VTK images start at the bottom row


def _write_png(rgb: np.ndarray, path) -> str:
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonDataModel import vtkImageData
    from vtkmodules.vtkIOImage import vtkPNGWriter

    h, w, _ = rgb.shape
    img = vtkImageData()
    img.SetDimensions(w, h, 1)
    arr = numpy_to_vtk(np.ascontiguousarray(rgb[::-1].reshape(-1, 3)), deep=True)
    img.GetPointData().SetScalars(arr)
    out = os.fspath(path)
    writer = vtkPNGWriter()
    writer.SetFileName(out)
    writer.SetCompressionLevel(9)
    writer.SetInputData(img)
    writer.Write()
    return out


def stack_pngs(paths: Sequence[Union[str, os.PathLike]], path: Union[str, os.PathLike],
               columns: int = 1, levels: Optional[int] = None) -> str:
    """Tile pictures (row by row, ``columns`` a row) into one PNG on white.

    ``levels``: keep only this many grey levels per channel (e.g. 48), which makes
    shaded renderings compress several times smaller at no visible cost.
    """
    images = [_read_png(p) for p in paths]
    if not images:
        raise ValueError("no pictures to stack")
    rows = [images[i:i + columns] for i in range(0, len(images), columns)]
    cell_w = max(im.shape[1] for im in images)
    heights = [max(im.shape[0] for im in row) for row in rows]
    canvas = np.full((sum(heights), cell_w * columns, 3), 255, dtype=np.uint8)
    y = 0
    for row, h in zip(rows, heights):
        for c, im in enumerate(row):
            canvas[y:y + im.shape[0], c * cell_w:c * cell_w + im.shape[1]] = im
        y += h
    if levels:
        step = 255.0 / (levels - 1)
        canvas = (np.round(canvas / step) * step).clip(0, 255).astype(np.uint8)
    return _write_png(canvas, path)
