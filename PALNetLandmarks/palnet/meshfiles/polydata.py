"""Meshes as VTK's vtkPolyData, and reading a checked file with VTK's own reader.

VTK is imported on first use (it takes a fifth of a second just to import).
"""
import contextlib
from typing import Iterator, List, Optional, Tuple

import numpy as np

from ..errors import PalnetError
from ..datatypes import Mesh
from .checks import check_face_ids, check_vertices

# VTK triangulates a polygon of n vertices in time growing as n * n: about 2 s for this sum of
# n * n over the polygons (a million-vertex polygon would take an hour; quads sum to 16 a face).
_MAX_TRIANGULATION = 2e9

Cells = Tuple[np.ndarray, np.ndarray]  # (offsets, vertex indices), as in a vtkCellArray


def _vtk_reader(ext: str):
    """VTK's reader for a mesh extension (VTK is imported on first use)."""
    if ext == ".ply":
        from vtkmodules.vtkIOPLY import vtkPLYReader as reader
    elif ext == ".obj":
        from vtkmodules.vtkIOGeometry import vtkOBJReader as reader
    elif ext == ".stl":
        from vtkmodules.vtkIOGeometry import vtkSTLReader as reader
    elif ext == ".vtk":
        from vtkmodules.vtkIOLegacy import vtkPolyDataReader as reader
    else:
        from vtkmodules.vtkIOXML import vtkXMLPolyDataReader as reader
    return reader()


@contextlib.contextmanager
def vtk_quiet() -> Iterator[None]:
    """Keep VTK's own error text off the console; the caller reports one line instead."""
    from vtkmodules.vtkCommonCore import vtkObject
    previous = vtkObject.GetGlobalWarningDisplay()
    vtkObject.GlobalWarningDisplayOff()
    try:
        yield
    finally:
        vtkObject.SetGlobalWarningDisplay(previous)


def _id_array(values: np.ndarray):
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import VTK_ID_TYPE
    return numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.int64), deep=True,
                                      array_type=VTK_ID_TYPE)


def _polydata(points: np.ndarray, polys: Optional[Cells] = None, strips: Optional[Cells] = None):
    """A vtkPolyData of copies of ``points`` (in their type) and of the given polygons and strips."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
    polydata = vtkPolyData()
    vtk_points = vtkPoints()
    vtk_points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(points), deep=True))
    polydata.SetPoints(vtk_points)
    for part, setter in ((polys, polydata.SetPolys), (strips, polydata.SetStrips)):
        if part is not None:
            cells = vtkCellArray()
            cells.SetData(_id_array(part[0]), _id_array(part[1]))
            setter(cells)
    return polydata


def mesh_to_polydata(mesh: Mesh):
    """A vtkPolyData with the mesh's points (float64) and triangles (copies, no loops)."""
    polys = None
    if mesh.n_triangles:
        polys = (np.arange(0, 3 * mesh.n_triangles + 1, 3, dtype=np.int64), mesh.triangles.reshape(-1))
    return _polydata(np.ascontiguousarray(mesh.vertices, dtype=np.float64), polys)


def _merge_identical_points(vertices: np.ndarray, triangles: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Merge points with bit-identical coordinates, keeping first-seen order.

    vtkOBJReader splits a textured OBJ into one point per face corner; this
    restores the shared vertices so the surface is connected again.
    """
    keys = np.ascontiguousarray(vertices).view(np.dtype((np.void, vertices.dtype.itemsize * 3))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    if first.size == vertices.shape[0]:
        return vertices, triangles
    first_of_point = first[inverse.reshape(-1)]
    keep = np.sort(first)
    new_index = np.empty(vertices.shape[0], dtype=np.int64)
    new_index[keep] = np.arange(keep.size)
    tris = new_index[first_of_point][triangles]
    proper = (tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 0] != tris[:, 2])
    return vertices[keep], tris[proper]


def polydata_to_mesh(polydata, units: str = "mm", source: Optional[str] = None,
                     merge_identical_points: bool = False) -> Mesh:
    """A Mesh from any vtkPolyData: polygons and strips triangulated, lines and vertices dropped.

    Raises PalnetError (naming ``source``) for no points, NaN/Inf coordinates or
    cells that point past the last point.
    """
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonDataModel import vtkPolyData
    from vtkmodules.vtkFiltersCore import vtkTriangleFilter
    n_points = polydata.GetNumberOfPoints()
    if n_points == 0 or polydata.GetPoints() is None:
        raise PalnetError("the mesh contains no points", source)
    vertices = numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64).reshape(-1, 3)
    check_vertices(vertices, source)
    for cells in (polydata.GetPolys(), polydata.GetStrips()):
        if cells is not None and cells.GetNumberOfCells():
            # Checked before triangulating: the filter would read past the arrays.
            offsets = numpy_support.vtk_to_numpy(cells.GetOffsetsArray())
            ids = numpy_support.vtk_to_numpy(cells.GetConnectivityArray())
            if offsets[0] != 0 or offsets[-1] != len(ids) or np.any(np.diff(offsets) < 0):
                raise PalnetError("damaged mesh: its cell offsets do not run from 0 up to its {} vertex "
                                  "indices".format(len(ids)), source)
            check_face_ids(ids, n_points, source)
    triangles = np.zeros((0, 3), dtype=np.int64)
    if polydata.GetNumberOfPolys() or polydata.GetNumberOfStrips():
        polys = polydata.GetPolys()
        sizes = np.diff(numpy_support.vtk_to_numpy(polys.GetOffsetsArray())) if polys.GetNumberOfCells() else None
        if polydata.GetNumberOfStrips() or sizes is None or np.any(sizes != 3):
            if sizes is not None and np.sum(sizes.astype(np.float64) ** 2) > _MAX_TRIANGULATION:
                raise PalnetError("its polygons are too large to triangulate in reasonable time (the largest "
                                  "has {} vertices)".format(int(sizes.max())), source)
            surface = vtkPolyData()  # without the (unchecked) vertices and lines
            surface.SetPoints(polydata.GetPoints())
            surface.SetPolys(polydata.GetPolys())
            surface.SetStrips(polydata.GetStrips())
            tri_filter = vtkTriangleFilter()
            tri_filter.PassVertsOff()
            tri_filter.PassLinesOff()
            tri_filter.SetInputData(surface)
            with vtk_quiet():
                tri_filter.Update()
            polys = tri_filter.GetOutput().GetPolys()
        if polys.GetNumberOfCells():
            triangles = numpy_support.vtk_to_numpy(polys.GetConnectivityArray()).astype(np.int64).reshape(-1, 3)
    if merge_identical_points:
        vertices, triangles = _merge_identical_points(vertices, triangles)
    return Mesh(vertices, triangles, units, source)


def faces_to_mesh(vertices: np.ndarray, counts: np.ndarray, indices: np.ndarray, units: str, source: str,
                  points: Optional[np.ndarray] = None,
                  strips: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Mesh:
    """A Mesh from checked polygons (and triangle strips), each given as sizes and vertex indices,
    triangulated as VTK's readers and :func:`polydata_to_mesh` do; ``points`` are the
    coordinates as the file stores them (float32 by default), which the triangulation uses."""
    if strips is None and np.all(counts == 3):
        return Mesh(vertices, indices.reshape(-1, 3), units, source)
    stored = vertices.astype(np.float32) if points is None else points.astype(points.dtype.newbyteorder("="))

    def cells(sizes: np.ndarray, ids: np.ndarray) -> Optional[Cells]:
        return (np.concatenate([[0], np.cumsum(sizes)]), ids) if len(sizes) else None

    polydata = _polydata(stored, cells(counts, indices), cells(*strips) if strips is not None else None)
    return polydata_to_mesh(polydata, units, source)


def _vtk_message(messages: List[str]) -> str:
    """The text of the first error VTK's reader reported, without its source file and object."""
    for message in messages:
        text = message.split("): ", 1)[-1].strip().splitlines()
        if text and text[0].strip():
            return " ({})".format(text[0].strip()[:200])
    return ""


@contextlib.contextmanager
def _vtk_errors(sources) -> Iterator[List[str]]:
    """The error messages of ``sources`` (VTK objects), collected and not printed; while this lasts,
    VTK's logger prints nothing of other objects either (it is told to, and then told back)."""
    from vtkmodules.util.misc import calldata_type
    from vtkmodules.vtkCommonCore import VTK_STRING, vtkLogger, vtkObject
    messages = []  # type: List[str]

    @calldata_type(VTK_STRING)
    def on_error(caller, event, message):
        messages.append(str(message))

    for source in sources:
        source.AddObserver("ErrorEvent", on_error)
        source.AddObserver("WarningEvent", lambda caller, event: None)
    cutoff = vtkLogger.GetCurrentVerbosityCutoff()
    vtkLogger.SetStderrVerbosity(vtkLogger.VERBOSITY_OFF)
    display = vtkObject.GetGlobalWarningDisplay()
    vtkObject.GlobalWarningDisplayOn()  # errors reach observers only while it is on
    try:
        yield messages
    finally:
        vtkObject.SetGlobalWarningDisplay(display)
        vtkLogger.SetStderrVerbosity(cutoff)


def read_with_vtk(name: str, ext: str, units: str, failure: Optional[str] = None) -> Mesh:
    """Read a checked file with VTK's reader; ``failure`` is the message should the reader fail."""
    reader = _vtk_reader(ext)
    reader.SetFileName(name)
    with _vtk_errors([reader, reader.GetExecutive()]) as messages:
        ok = reader.GetExecutive().Update()
    if not ok or reader.GetErrorCode() or messages:
        raise PalnetError(failure or "cannot read: damaged file or not in {} format{}".format(
            ext[1:].upper(), _vtk_message(messages)), name)
    return polydata_to_mesh(reader.GetOutput(), units, name, merge_identical_points=(ext == ".obj"))
