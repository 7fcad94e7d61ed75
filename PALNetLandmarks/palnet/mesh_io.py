"""Reading and writing meshes and landmark files, and finding them in folders.

Meshes go through VTK's readers and writers (the same ones 3D Slicer uses),
so a file palnet reads is the surface Slicer shows, in the same frame: files
without a coordinate-system header are LPS. The one exception is the commonest
scan file, a binary PLY of triangles, which is read directly into the same
numbers VTK's reader gives (VTK takes a fifth of a second just to import).
Landmark files live in :mod:`palnet.landmark_io` and are re-exported here.
"""
import contextlib
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .errors import PalnetError
from .landmark_io import (LANDMARK_FORMATS, PathLike, atomic_write, check_labels, describe,  # noqa: F401
                          landmark_format, landmark_stem, read_landmarks, split_description,
                          write_landmarks)
from .types import Mesh, unit_scale

MESH_EXTENSIONS = (".ply", ".obj", ".stl", ".vtk", ".vtp")
# File stems that name the content rather than the scan: the scan id is then the folder's name.
GENERIC_STEMS = frozenset({"landmarks", "landmark", "lm", "scan", "mesh"})


def _reader(ext: str):
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
def _vtk_quiet() -> Iterator[None]:
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


def mesh_to_polydata(mesh: Mesh):
    """A vtkPolyData with the mesh's points (float64) and triangles (copies, no loops)."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
    polydata = vtkPolyData()
    points = vtkPoints()
    points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(mesh.vertices, dtype=np.float64), deep=True))
    polydata.SetPoints(points)
    if mesh.n_triangles:
        cells = vtkCellArray()
        offsets = np.arange(0, 3 * mesh.n_triangles + 1, 3, dtype=np.int64)
        cells.SetData(_id_array(offsets), _id_array(mesh.triangles.reshape(-1)))
        polydata.SetPolys(cells)
    return polydata


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


def _check_vertices(vertices: np.ndarray, source: Optional[str]) -> None:
    if len(vertices) == 0:
        raise PalnetError("the mesh contains no points", source)
    if not np.isfinite(vertices).all():
        raise PalnetError("the mesh has NaN or infinite vertex coordinates", source)


def _check_face_ids(ids: np.ndarray, n_points: int, source: Optional[str]) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= n_points):
        raise PalnetError("a face refers to vertex {} but the mesh has only {} vertices".format(
            int(ids.max()) + 1, n_points), source)


def polydata_to_mesh(polydata, units: str = "mm", source: Optional[str] = None,
                     merge_identical_points: bool = False) -> Mesh:
    """A Mesh from any vtkPolyData: polygons and strips triangulated, lines and vertices dropped.

    Raises PalnetError (naming ``source``) for no points, NaN/Inf coordinates or
    cells that point past the last point.
    """
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkFiltersCore import vtkTriangleFilter
    n_points = polydata.GetNumberOfPoints()
    if n_points == 0 or polydata.GetPoints() is None:
        raise PalnetError("the mesh contains no points", source)
    vertices = numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64).reshape(-1, 3)
    _check_vertices(vertices, source)
    for cells in (polydata.GetPolys(), polydata.GetStrips()):
        if cells is not None and cells.GetNumberOfCells():
            # Checked before triangulating: the filter would read past the point array.
            _check_face_ids(numpy_support.vtk_to_numpy(cells.GetConnectivityArray()), n_points, source)
    triangles = np.zeros((0, 3), dtype=np.int64)
    if polydata.GetNumberOfPolys() or polydata.GetNumberOfStrips():
        polys = polydata.GetPolys()
        sizes = np.diff(numpy_support.vtk_to_numpy(polys.GetOffsetsArray())) if polys.GetNumberOfCells() else None
        if polydata.GetNumberOfStrips() or sizes is None or np.any(sizes != 3):
            tri_filter = vtkTriangleFilter()
            tri_filter.PassVertsOff()
            tri_filter.PassLinesOff()
            tri_filter.SetInputData(polydata)
            with _vtk_quiet():
                tri_filter.Update()
            polys = tri_filter.GetOutput().GetPolys()
        if polys.GetNumberOfCells():
            triangles = numpy_support.vtk_to_numpy(polys.GetConnectivityArray()).astype(np.int64).reshape(-1, 3)
    if merge_identical_points:
        vertices, triangles = _merge_identical_points(vertices, triangles)
    return Mesh(vertices, triangles, units, source)


def mesh_extension(path: PathLike) -> str:
    """The lower-case mesh extension of ``path`` (one of MESH_EXTENSIONS), or a PalnetError."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in MESH_EXTENSIONS:
        raise PalnetError("unknown mesh file type {!r} (use {})".format(
            ext or "(none)", ", ".join(MESH_EXTENSIONS)), path)
    return ext


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_PLY_SIZES = {name: np.dtype(code).itemsize for name, code in _PLY_TYPES.items()}


def _ply_header(head: bytes, name: str):
    """(format, elements, offset of the body) of a PLY file whose first bytes are ``head``;
    elements are [name, count, [(types, property name)]], types ("float",) or ("list",
    "uchar", "int"). None when ``head`` is not a PLY header; the offset is 0 when nothing
    follows the header."""
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        return None
    fmt, elements = "", []
    for line in head[:end].decode("ascii", "replace").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "format":
            fmt = words[1]
        elif len(words) == 3 and words[0] == "element":
            try:
                elements.append([words[1], int(words[2]), []])
            except ValueError:
                raise PalnetError("damaged PLY header: {!r}".format(line.strip()), name) from None
        elif words[:1] == ["property"] and elements:
            elements[-1][2].append((tuple(words[1:-1]), words[-1]))
    return fmt, elements, head.find(b"\n", end) + 1


def check_ply(name: str) -> None:
    """Refuse a PLY file whose body is shorter than its header announces.

    VTK's PLY reader crashes the process on a binary file cut off in the middle and
    fills the missing part of an ASCII file with zeros, so this is checked first.
    Only what can be known without reading the data is checked: every vertex record,
    and at least a triangle's worth of every face record.
    """
    with open(name, "rb") as f:
        header = _ply_header(f.read(65536), name)
        if header is None:
            return  # not a PLY header: VTK's own error names the problem
        fmt, elements, body_start = header
        if body_start == 0:
            raise PalnetError("the file is cut off: nothing after the PLY header", name)
        size = os.path.getsize(name) - body_start
        if fmt.startswith("binary"):
            need = 0
            for element, count, props in elements:
                record = 0  # fixed bytes, and at least a triangle's worth of a face's vertex list
                for types, _ in props:
                    if len(types) == 3 and types[0] == "list":
                        items = 3 if element == "face" else 0
                        record += _PLY_SIZES.get(types[1], 1) + items * _PLY_SIZES.get(types[2], 4)
                    elif len(types) == 1:
                        record += _PLY_SIZES.get(types[0], 4)
                need += count * record
            if size < need:
                raise PalnetError("the file is cut off: {} bytes of data where its header announces at least {}".format(
                    size, need), name)
        elif fmt == "ascii":
            need = sum(count for _, count, _ in elements)
            f.seek(body_start)
            lines = 0
            for chunk in iter(lambda: f.read(1 << 20), b""):
                lines += chunk.count(b"\n")
                last = chunk
            if size and not last.endswith(b"\n"):
                lines += 1
            if lines < need:
                raise PalnetError("the file is cut off: {} data lines where its header announces {}".format(
                    lines, need), name)


def read_triangle_ply(name: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(vertices, triangles) of a binary PLY laid out the common way, read directly; None for
    any other layout (ASCII, polygons other than triangles, faces with more than their
    vertex list, elements before the vertices), which VTK's reader then reads.

    The result is what VTK's reader gives: coordinates rounded to float32 (as VTK stores
    them), vertices in file order, each face's vertex list as written.
    """
    with open(name, "rb") as f:
        data = f.read(65536)
        header = _ply_header(data, name)
        if header is None or header[2] == 0 or not header[0].startswith("binary_"):
            return None
        data += f.read()
    fmt, elements, body = header
    order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fmt)
    if order is None or not elements or elements[0][0] != "vertex" or any(e[1] < 0 for e in elements):
        return None
    n_vertices, vertex_props = elements[0][1], elements[0][2]
    if any(len(t) != 1 or t[0] not in _PLY_TYPES for t, _ in vertex_props) or \
            not {"x", "y", "z"} <= {p for _, p in vertex_props}:
        return None
    vertex_type = np.dtype([(p, order + _PLY_TYPES[t[0]]) for t, p in vertex_props])
    start = body + n_vertices * vertex_type.itemsize
    if start > len(data):
        return None
    records = np.frombuffer(data, vertex_type, n_vertices, body)
    vertices = np.stack([records[c] for c in "xyz"], axis=1).astype(np.float32).astype(np.float64)
    triangles = np.zeros((0, 3), np.int64)
    if len(elements) > 1:  # elements after the faces (edges, materials) do not matter
        face_name, n_faces, face_props = elements[1]
        if face_name != "face" or len(face_props) != 1:
            return None
        (kind, *types), prop = face_props[0]
        if kind != "list" or len(types) != 2 or prop not in ("vertex_indices", "vertex_index") or \
                not all(t in _PLY_TYPES and _PLY_TYPES[t][0] in "iu" for t in types):
            return None
        face_type = np.dtype([("n", order + _PLY_TYPES[types[0]]), ("i", order + _PLY_TYPES[types[1]], (3,))])
        if start + n_faces * face_type.itemsize > len(data):
            return None
        faces = np.frombuffer(data, face_type, n_faces, start)
        if np.any(faces["n"] != 3):  # polygons of other sizes: the records are not all alike
            return None
        triangles = faces["i"].astype(np.int64)
    return vertices, triangles


def read_mesh(path: PathLike, units: str = "mm") -> Mesh:
    """Read a surface (.ply, .obj, .stl, .vtk, .vtp) as a triangle Mesh in the file's (LPS) frame.

    ``units`` is the length unit of the file's numbers. A PLY without faces is
    a point cloud (a Mesh with no triangles).
    """
    unit_scale(units, "mm")  # unknown units fail here, before any reading
    ext = mesh_extension(path)
    name = os.fspath(path)
    if not os.path.exists(name):
        raise PalnetError("file not found", name)
    if os.path.isdir(name):
        raise PalnetError("is a folder, not a mesh file", name)
    if os.path.getsize(name) == 0:
        raise PalnetError("the file is empty", name)
    if ext == ".ply":
        check_ply(name)
        direct = read_triangle_ply(name)
        if direct is not None:
            vertices, triangles = direct
            _check_vertices(vertices, name)
            _check_face_ids(triangles, len(vertices), name)
            return Mesh(vertices, triangles, units, name)
    reader = _reader(ext)
    reader.SetFileName(name)
    with _vtk_quiet():
        ok = reader.GetExecutive().Update()
    if not ok or reader.GetErrorCode():
        raise PalnetError("cannot read: damaged file or not in {} format".format(ext[1:].upper()), name)
    return polydata_to_mesh(reader.GetOutput(), units, name, merge_identical_points=(ext == ".obj"))


def write_mesh(mesh: Mesh, path: PathLike) -> Path:
    """Write a Mesh atomically: .ply (binary), .vtp, .obj, .stl (binary) or .vtk (binary, legacy 4.2).

    No coordinate-system header is written, so Slicer reads the file as LPS.
    PLY and STL store float32 coordinates; the others keep float64.
    """
    from vtkmodules.vtkIOGeometry import vtkOBJWriter, vtkSTLWriter
    from vtkmodules.vtkIOLegacy import vtkDataWriter, vtkPolyDataWriter
    from vtkmodules.vtkIOPLY import vtkPLYWriter
    from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter
    ext = mesh_extension(path)
    if ext == ".stl" and mesh.n_triangles == 0:
        raise PalnetError("cannot write a point cloud (no triangles) as STL", path)
    if ext == ".ply":
        writer = vtkPLYWriter()
        writer.SetFileTypeToBinary()
    elif ext == ".stl":
        writer = vtkSTLWriter()
        writer.SetFileTypeToBinary()
    elif ext == ".vtk":
        writer = vtkPolyDataWriter()
        writer.SetFileTypeToBinary()
        writer.SetFileVersion(vtkDataWriter.VTK_LEGACY_READER_VERSION_4_2)  # readable by older tools
    elif ext == ".vtp":
        writer = vtkXMLPolyDataWriter()
    else:
        writer = vtkOBJWriter()
    writer.SetInputData(mesh_to_polydata(mesh))

    def write(tmp: str) -> None:
        writer.SetFileName(tmp)
        with _vtk_quiet():
            ok = writer.Write()
        if not ok or writer.GetErrorCode():
            raise PalnetError("cannot write the mesh (disk full or no permission?)", path)

    atomic_write(path, write)
    return Path(path)


# ---------------------------------------------------------------- finding files

def _is_landmark_file(name: str, formats: Sequence[str]) -> bool:
    lower = name.lower()
    if name.startswith(".") or (lower.endswith(".json") and not lower.endswith(".mrk.json")):
        return False  # hidden/temporary files; plain .json is more often a protocol or model card
    try:
        return landmark_format(name) in formats
    except PalnetError:
        return False


# Files palnet writes next to landmark files that are not landmark files.
NOT_LANDMARK_FILES = frozenset(["palnet_summary.csv"])


def find_landmark_files(directory: PathLike, formats: Optional[Sequence[str]] = None,
                        recursive: bool = True) -> List[Path]:
    """Landmark files under ``directory`` (sorted); ``formats`` limits them, e.g. ``("mrk.json",)``."""
    root = Path(directory)
    if not root.is_dir():
        raise PalnetError("folder not found", root)
    formats = tuple(LANDMARK_FORMATS if formats is None else formats)
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in found if p.is_file() and _is_landmark_file(p.name, formats)
                  and p.name not in NOT_LANDMARK_FILES)


def scan_id_for(path: PathLike) -> str:
    """The scan a file belongs to: its name without extension, or its folder's name for a
    generic name (``S01/landmarks.mrk.json`` -> ``S01``; ``out/S01.mrk.json`` -> ``S01``)."""
    p = Path(path)
    if p.suffix.lower() in MESH_EXTENSIONS:
        stem = p.stem
    else:
        stem = landmark_stem(p)
    if stem.lower() in GENERIC_STEMS and p.parent.name:
        return p.parent.name
    return stem


def _preferred(paths: List[Path], rank) -> Dict[str, Path]:
    """Per scan id the path with the best rank (e.g. .mrk.json over .csv for the same scan)."""
    chosen = {}  # type: Dict[str, Path]
    for p in sorted(paths, key=rank):
        chosen.setdefault(scan_id_for(p), p)
    return chosen


def find_scan_pairs(directory: PathLike) -> List[Tuple[str, Path, Path]]:
    """(scan_id, mesh_path, landmark_path) for each mesh with a landmark file beside it, by id.

    Layouts: ``DIR/<id>/scan.ply + DIR/<id>/landmarks.mrk.json`` or flat
    ``DIR/<id>.ply + DIR/<id>.mrk.json`` (mixed and nested folders work too).
    """
    root = Path(directory)
    if not root.is_dir():
        raise PalnetError("folder not found", root)
    pairs = {}  # type: Dict[str, Tuple[Path, Path]]
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths = [Path(folder) / f for f in files if not f.startswith(".")]
        meshes = _preferred([p for p in paths if p.suffix.lower() in MESH_EXTENSIONS],
                            lambda p: (MESH_EXTENSIONS.index(p.suffix.lower()), p.name))
        marks = _preferred([p for p in paths if _is_landmark_file(p.name, LANDMARK_FORMATS)],
                           lambda p: (LANDMARK_FORMATS.index(landmark_format(p)), p.name))
        for scan_id in sorted(set(meshes) & set(marks)):
            if scan_id in pairs:
                raise PalnetError("scan id {!r} appears twice: {} and {}".format(
                    scan_id, pairs[scan_id][0], meshes[scan_id]), root)
            pairs[scan_id] = (meshes[scan_id], marks[scan_id])
    return [(scan_id, m, lm) for scan_id, (m, lm) in sorted(pairs.items())]
