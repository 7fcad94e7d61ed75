"""Reading and writing meshes and landmark files, and finding them in folders.

Meshes go through VTK's readers and writers (the same ones 3D Slicer uses),
so a file palnet reads is the surface Slicer shows, in the same frame: files
without a coordinate-system header are LPS. Landmark files live in
:mod:`palnet.landmark_io` and are re-exported here.
"""
import contextlib
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonCore import VTK_ID_TYPE, vtkObject, vtkPoints
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
from vtkmodules.vtkFiltersCore import vtkTriangleFilter
from vtkmodules.vtkIOGeometry import vtkOBJReader, vtkOBJWriter, vtkSTLReader, vtkSTLWriter
from vtkmodules.vtkIOLegacy import vtkDataWriter, vtkPolyDataReader, vtkPolyDataWriter
from vtkmodules.vtkIOPLY import vtkPLYReader, vtkPLYWriter
from vtkmodules.vtkIOXML import vtkXMLPolyDataReader, vtkXMLPolyDataWriter

from .errors import PalnetError
from .landmark_io import (LANDMARK_FORMATS, PathLike, atomic_write, check_labels, describe,  # noqa: F401
                          landmark_format, landmark_stem, read_landmarks, split_description,
                          write_landmarks)
from .types import Mesh, unit_scale

MESH_EXTENSIONS = (".ply", ".obj", ".stl", ".vtk", ".vtp")
# File stems that name the content rather than the scan: the scan id is then the folder's name.
GENERIC_STEMS = frozenset({"landmarks", "landmark", "lm", "scan", "mesh"})

_READERS = {".ply": vtkPLYReader, ".obj": vtkOBJReader, ".stl": vtkSTLReader,
            ".vtk": vtkPolyDataReader, ".vtp": vtkXMLPolyDataReader}


@contextlib.contextmanager
def _vtk_quiet() -> Iterator[None]:
    """Keep VTK's own error text off the console; the caller reports one line instead."""
    previous = vtkObject.GetGlobalWarningDisplay()
    vtkObject.GlobalWarningDisplayOff()
    try:
        yield
    finally:
        vtkObject.SetGlobalWarningDisplay(previous)


def _id_array(values: np.ndarray):
    return numpy_support.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.int64), deep=True,
                                      array_type=VTK_ID_TYPE)


def mesh_to_polydata(mesh: Mesh) -> vtkPolyData:
    """A vtkPolyData with the mesh's points (float64) and triangles (copies, no loops)."""
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


def polydata_to_mesh(polydata: vtkPolyData, units: str = "mm", source: Optional[str] = None,
                     merge_identical_points: bool = False) -> Mesh:
    """A Mesh from any vtkPolyData: polygons and strips triangulated, lines and vertices dropped.

    Raises PalnetError (naming ``source``) for no points, NaN/Inf coordinates or
    cells that point past the last point.
    """
    n_points = polydata.GetNumberOfPoints()
    if n_points == 0 or polydata.GetPoints() is None:
        raise PalnetError("the mesh contains no points", source)
    vertices = numpy_support.vtk_to_numpy(polydata.GetPoints().GetData()).astype(np.float64).reshape(-1, 3)
    if not np.isfinite(vertices).all():
        raise PalnetError("the mesh has NaN or infinite vertex coordinates", source)
    for cells in (polydata.GetPolys(), polydata.GetStrips()):
        if cells is not None and cells.GetNumberOfCells():
            ids = numpy_support.vtk_to_numpy(cells.GetConnectivityArray())
            # Checked before triangulating: the filter would read past the point array.
            if ids.size and (ids.min() < 0 or ids.max() >= n_points):
                raise PalnetError("a face refers to vertex {} but the mesh has only {} vertices".format(
                    int(ids.max()) + 1, n_points), source)
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


_PLY_SIZES = {"char": 1, "int8": 1, "uchar": 1, "uint8": 1, "short": 2, "int16": 2, "ushort": 2, "uint16": 2,
              "int": 4, "int32": 4, "uint": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


def check_ply(name: str) -> None:
    """Refuse a PLY file whose body is shorter than its header announces.

    VTK's PLY reader crashes the process on a binary file cut off in the middle and
    fills the missing part of an ASCII file with zeros, so this is checked first.
    Only what can be known without reading the data is checked: every vertex record,
    and at least a triangle's worth of every face record.
    """
    with open(name, "rb") as f:
        head = f.read(65536)
        end = head.find(b"end_header")
        if not head.startswith(b"ply") or end < 0:
            return  # not a PLY header: VTK's own error names the problem
        body_start = head.find(b"\n", end) + 1
        if body_start == 0:
            raise PalnetError("the file is cut off: nothing after the PLY header", name)
        fmt, elements = "", []  # (name, count, fixed bytes, minimum list bytes)
        for line in head[:end].decode("ascii", "replace").splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "format":
                fmt = words[1]
            elif len(words) == 3 and words[0] == "element":
                try:
                    elements.append([words[1], int(words[2]), 0, 0])
                except ValueError:
                    raise PalnetError("damaged PLY header: {!r}".format(line.strip()), name) from None
            elif words[:1] == ["property"] and elements:
                el = elements[-1]
                if len(words) == 5 and words[1] == "list":
                    items = 3 if el[0] == "face" else 0
                    el[3] += _PLY_SIZES.get(words[2], 1) + items * _PLY_SIZES.get(words[3], 4)
                elif len(words) == 3:
                    el[2] += _PLY_SIZES.get(words[1], 4)
        size = os.path.getsize(name) - body_start
        if fmt.startswith("binary"):
            need = sum(count * (fixed + lists) for _, count, fixed, lists in elements)
            if size < need:
                raise PalnetError("the file is cut off: {} bytes of data where its header announces at least {}".format(
                    size, need), name)
        elif fmt == "ascii":
            need = sum(count for _, count, _, _ in elements)
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
    reader = _READERS[ext]()
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
