"""Offscreen pictures of landmarks (palnet.render)."""
import numpy as np
import pytest

from palnet import Landmarks, Mesh
from palnet.render import RenderOptions, render_landmarks, view_direction


def sphere_mesh(radius=50.0, n=24):
    """A UV sphere of triangles (a stand-in head)."""
    th = np.linspace(0, np.pi, n)[1:-1]
    ph = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False)
    t, p = np.meshgrid(th, ph, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1).reshape(-1, 3)
    verts = np.vstack([[0, 1, 0], ring, [0, -1, 0]]) * radius
    m = 2 * n
    tris = []
    for j in range(m):
        tris.append([0, 1 + (j + 1) % m, 1 + j])
    for i in range(len(th) - 1):
        for j in range(m):
            a, b = 1 + i * m + j, 1 + i * m + (j + 1) % m
            tris += [[a, b, b + m], [a, b + m, a + m]]
    last = 1 + (len(th) - 1) * m
    for j in range(m):
        tris.append([last + j, last + (j + 1) % m, len(verts) - 1])
    return Mesh(verts, np.array(tris))


def read_png(path):
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOImage import vtkPNGReader

    reader = vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    img = reader.GetOutput()
    w, h, _ = img.GetDimensions()
    return vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)


def test_render_writes_a_picture_with_the_surface_and_points(tmp_path):
    mesh = sphere_mesh()
    marks = Landmarks(["a", "b", "c"], [[0, 0, 50], [50, 0, 0], [0, 50, 0]])
    out = render_landmarks(mesh, marks, tmp_path / "pic.png",
                           RenderOptions(views=("front", "side"), size=(240, 200),
                                         colors=[(1, 0, 0), (0, 1, 0), (0, 0, 1)]))
    img = read_png(out)
    assert img.shape[:2] == (200, 480)
    rgb = img[..., :3].astype(int)
    background = np.all(rgb >= 250, axis=-1)
    assert (~background).mean() > 0.2, "no surface drawn"
    # The red landmark "a" faces the front camera: pure-ish red pixels in the left half.
    red = (rgb[..., 0] > 150) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)
    assert red[:, :240].sum() > 5


def test_render_accepts_arrays_flags_and_close_ups(tmp_path):
    mesh = sphere_mesh()
    pts = np.array([[0, 0, 50.0], [10, 10, 49.0]])
    out = render_landmarks((mesh.vertices, mesh.triangles), pts, tmp_path / "c.png",
                           RenderOptions(views=("three-quarter",), size=(160, 160), labels=[True, False],
                                         focus=pts, title="close-up"))
    assert read_png(out).shape[:2] == (160, 160)
    with pytest.raises(ValueError):
        render_landmarks(mesh, pts, tmp_path / "x.png", RenderOptions(views=("sideways",)))


def test_default_options_give_two_900_pixel_views_front_and_side(tmp_path):
    opts = RenderOptions()
    assert tuple(opts.views) == ("front", "side") and tuple(opts.size) == (900, 900)
    assert tuple(opts.up) == (0, 1, 0) and tuple(opts.front) == (0, 0, 1)
    assert opts.labels is True and opts.view_titles is True and opts.font_size == 15 and opts.margin == 0.25
    assert all(getattr(opts, name) is None for name in ("title", "colors", "label_names", "focus",
                                                         "point_radius", "extra_points", "vertex_colors"))
    mesh = sphere_mesh()
    marks = Landmarks(["a", "b"], [[0, 0, 50], [-50, 0, 0]])
    pictures = [read_png(render_landmarks(mesh, marks, tmp_path / "none.png")),
                read_png(render_landmarks(mesh, marks, tmp_path / "default.png", RenderOptions()))]
    assert pictures[0].shape[:2] == (900, 1800)  # two views of 900 x 900, side by side
    assert np.array_equal(pictures[0], pictures[1])


def test_options_are_fixed_once_made():
    import dataclasses
    opts = RenderOptions(views=("front",), size=(300, 200))
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.size = (10, 10)
    wider = dataclasses.replace(opts, size=(600, 200), title="t")
    assert wider.views == ("front",) and wider.size == (600, 200) and opts.size == (300, 200)


def test_views_follow_the_faces_up_and_front():
    d, up = view_direction("side")
    assert np.allclose(d, [-1, 0, 0]) and np.allclose(up, [0, 1, 0])  # subject's right = -x
    d, _ = view_direction("left")
    assert np.allclose(d, [1, 0, 0])
    # A scan lying on its back: face up is +z (mesh), front is -y.
    d, up = view_direction("front", up=(0, 0, 1), front=(0, -1, 0))
    assert np.allclose(d, [0, -1, 0]) and np.allclose(up, [0, 0, 1])
    d, _ = view_direction("side", up=(0, 0, 1), front=(0, -1, 0))
    assert np.allclose(d, -np.cross([0, 0, 1], [0, -1, 0]))
