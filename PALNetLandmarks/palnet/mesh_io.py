"""Reading and writing meshes and landmark files, and finding them in folders.

Meshes are read as VTK's readers read them and written by VTK's writers (the
same ones 3D Slicer uses), so a file palnet reads is the surface Slicer shows,
in the same frame: files without a coordinate-system header are LPS. PLY and
legacy .vtk files are read here into the same numbers VTK's readers give (VTK
takes a fifth of a second just to import, and its readers of these formats
crash on damaged files); OBJ, STL and VTP files are checked here, then read by
VTK. Landmark files live in :mod:`palnet.landmark_io` and are re-exported here.
"""
import binascii
import contextlib
import lzma
import os
import re
import stat
import struct
import warnings
import zlib
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
    if not ids.size:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0:
        raise PalnetError("a face refers to vertex index {}, which is negative".format(low), source)
    if high >= n_points:
        raise PalnetError("a face refers to vertex {} but the mesh has only {} vertices".format(
            high + 1, n_points), source)


# VTK triangulates a polygon of n vertices in time growing as n * n: about 2 s for this sum of
# n * n over the polygons (a million-vertex polygon would take an hour; quads sum to 16 a face).
_MAX_TRIANGULATION = 2e9


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
    _check_vertices(vertices, source)
    for cells in (polydata.GetPolys(), polydata.GetStrips()):
        if cells is not None and cells.GetNumberOfCells():
            # Checked before triangulating: the filter would read past the arrays.
            offsets = numpy_support.vtk_to_numpy(cells.GetOffsetsArray())
            ids = numpy_support.vtk_to_numpy(cells.GetConnectivityArray())
            if offsets[0] != 0 or offsets[-1] != len(ids) or np.any(np.diff(offsets) < 0):
                raise PalnetError("damaged mesh: its cell offsets do not run from 0 up to its {} vertex "
                                  "indices".format(len(ids)), source)
            _check_face_ids(ids, n_points, source)
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


# ---------------------------------------------------------------- reading files safely
#
# VTK's readers trust a file's counts and indices: a wrong one crashes the process (a
# segmentation fault, or an abort no try/except can catch), or makes it allocate whatever a
# header claims. So PLY and legacy VTK files are read here, and OBJ, STL and VTP files are
# checked here before VTK's reader sees them: every count is checked against the bytes the
# file has left before anything is allocated or read, every index against the vertices.

_CHUNK = 1 << 22  # bytes of a text file read at a time
_MAX_LINE = 1 << 20  # a longer line is not mesh data
_MAX_INT = 2 ** 31 - 1  # VTK keeps counts in an int


def _cut_off(what: str, name: str) -> PalnetError:
    return PalnetError("the file is cut off: " + what, name)


def _plural(n: int, word: str) -> str:
    return "{} {}".format(n, word if n == 1 else "vertices" if word == "vertex" else word + "s")


def _show(token: bytes, limit: int = 40) -> str:
    """A token of a file as it can be quoted in a one-line message."""
    text = token[:limit].decode("ascii", "replace")
    return repr(text + ("..." if len(token) > limit else ""))


def _numbers(text: bytes, dtype) -> Optional[np.ndarray]:
    """The whitespace-separated numbers in ``text`` (numpy's parser: the same values as Python's),
    or None where a word is not a number of that type."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # older numpy warns and stops at a bad word; newer raises
        try:
            return np.fromstring(text, dtype=dtype, sep=" ")
        except ValueError:
            return None


class _Lines:
    """The lines of a text file from an offset, read a chunk at a time, with line numbers."""

    def __init__(self, f, name: str, first_line: int):
        self.f, self.name, self.number = f, name, first_line  # number: of the next line handed out
        self.lines, self.i, self.rest, self.eof = [], 0, b"", False

    def take(self, n: int) -> Tuple[int, List[bytes]]:
        """(number of the first line, up to ``n`` lines); fewer only at the end of the file."""
        while len(self.lines) - self.i < n and not self.eof:
            chunk = self.f.read(_CHUNK)
            parts = (self.rest + chunk).split(b"\n")
            if chunk:
                self.rest = parts.pop()
                if len(self.rest) > _MAX_LINE:
                    raise PalnetError("line {} is longer than {} bytes: not a text mesh file".format(
                        self.number + len(self.lines) - self.i + len(parts), _MAX_LINE), self.name)
            else:
                self.eof = True
                if not parts[-1]:
                    parts.pop()
            self.lines = self.lines[self.i:] + parts
            self.i = 0
        block = self.lines[self.i:self.i + n]
        self.i += len(block)
        first, self.number = self.number, self.number + len(block)
        return first, block


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_STRUCT_CODES = {"i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I"}
_PLY_FORMATS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}
_PLY_HEADER_MAX = 1 << 20
# Properties VTK's PLY reader stores in fixed places: as a list (or a value) where it expects a
# value (or a list) it writes a pointer over a number, or frees a number as a pointer.
_PLY_VERTEX_VALUES = {"x", "y", "z", "u", "v", "texture_u", "texture_v", "s", "t", "nx", "ny", "nz",
                      "red", "green", "blue", "alpha", "diffuse_red", "diffuse_green", "diffuse_blue"}
_PLY_FACE_VALUES = {"intensity", "red", "green", "blue", "alpha"}
_PLY_FACE_LISTS = {"vertex_indices", "texcoord"}


class _PlyElement:
    __slots__ = ("name", "count", "props")

    def __init__(self, name: str, count: int):
        self.name, self.count, self.props = name, count, []  # props: (name, type, count type or None)

    def index(self, prop: str) -> int:
        return next((i for i, p in enumerate(self.props) if p[0] == prop), -1)


def _ply_header(f, name: str, size: int) -> Tuple[str, List[_PlyElement], int, int]:
    """(format, elements, offset of the body, line number of the body's first line), read the
    way VTK's reader reads a header; anything it would misread is a PalnetError."""
    head = f.read(_PLY_HEADER_MAX)
    if not head.startswith(b"ply") or head[3:4] not in (b"\n", b"\r", b" ", b"\t"):
        raise PalnetError("cannot read: not a PLY file (it does not start with 'ply')", name)
    eol = re.compile(rb"\r\n|\n|\r")
    fmt, elements, pos, number = None, [], 0, 0
    while True:
        m = eol.search(head, pos)
        if m is None:
            if len(head) == _PLY_HEADER_MAX:
                raise PalnetError("damaged PLY file: no 'end_header' in its first {} bytes".format(
                    _PLY_HEADER_MAX), name)
            raise _cut_off("the PLY header has no 'end_header' line", name)
        line, pos, number = head[pos:m.start()], m.end(), number + 1
        where = "damaged PLY header, line {} ({}): ".format(number, _show(line))
        if len(line) >= 4095 or b"\0" in line:
            raise PalnetError(where + "not a header line", name)
        k = line.find(b"vertex_index")
        if k >= 0:  # VTK's reader renames it, cutting off whatever follows
            line = line[:k] + b"vertex_indices"
        words = [w.decode("ascii", "replace") for w in line.replace(b"\t", b" ").split(b" ") if w]
        if number == 1:
            continue
        if not words:
            raise PalnetError(where + "a blank line ends VTK's reading of the header", name)
        key = words[0]
        if key == "end_header":
            break
        if key == "format":
            if len(words) != 3 or words[1] not in _PLY_FORMATS or not re.fullmatch(r"[0-9]+(\.[0-9]*)?", words[2]):
                raise PalnetError(where + "expected 'format ascii 1.0', 'format binary_little_endian 1.0' "
                                  "or 'format binary_big_endian 1.0'", name)
            fmt = words[1]
        elif key == "element":
            if len(words) < 3:
                raise PalnetError(where + "expected 'element NAME COUNT'", name)
            if not re.fullmatch(r"-?[0-9]+", words[2]) or not 0 <= int(words[2]) <= _MAX_INT:
                raise PalnetError(where + "the count must be a whole number from 0 to {}".format(_MAX_INT), name)
            if any(e.name == words[1] for e in elements):
                raise PalnetError(where + "a second element named {!r}".format(words[1]), name)
            elements.append(_PlyElement(words[1], int(words[2])))
        elif key == "property":
            is_list = len(words) > 1 and words[1] == "list"
            if not elements or len(words) < (5 if is_list else 3):
                raise PalnetError(where + "expected 'property TYPE NAME' or 'property list COUNT_TYPE TYPE NAME' "
                                  "after an element", name)
            types = words[2:4] if is_list else words[1:2]
            for t in types:
                if t not in _PLY_TYPES:
                    raise PalnetError(where + "unknown type {!r} (PLY types: {})".format(
                        t, ", ".join(sorted(_PLY_TYPES))), name)
            if is_list and _PLY_TYPES[types[0]][0] == "f":
                raise PalnetError(where + "a list's count must have an integer type, not {!r}".format(types[0]), name)
            elements[-1].props.append((words[4], types[1], types[0]) if is_list else (words[2], types[0], None))
    if fmt is None:
        raise PalnetError("damaged PLY header: no 'format' line", name)
    vertex = next((e for e in elements if e.name == "vertex"), None)
    for c in "xyz":
        if vertex is not None and vertex.index(c) >= 0 and vertex.props[vertex.index(c)][2]:
            raise PalnetError("damaged PLY header: the vertex property {!r} must be a single value".format(c), name)
    if vertex is None or any(vertex.index(c) < 0 for c in "xyz"):
        raise PalnetError("damaged PLY header: no 'vertex' element with x, y and z values", name)
    for e, values in ((vertex, _PLY_VERTEX_VALUES), (next((e for e in elements if e.name == "face"), None),
                                                     _PLY_FACE_VALUES)):
        for prop, t, count_type in (e.props if e is not None else ()):
            if (prop in values and count_type) or (e.name == "face" and prop in _PLY_FACE_LISTS and not count_type):
                raise PalnetError("damaged PLY header: the {} property {!r} must be {}".format(
                    e.name, prop, "a list" if prop in _PLY_FACE_LISTS else "a single value"), name)
            if e.name == "face" and prop == "vertex_indices" and _PLY_TYPES[t][0] == "f":
                raise PalnetError("damaged PLY header: face vertex indices must have an integer type, "
                                  "not {!r}".format(t), name)
    face = next((e for e in elements if e.name == "face"), None)
    if face is not None and face.index("vertex_indices") < 0:
        raise PalnetError("damaged PLY header: the 'face' element has no 'vertex_indices' list", name)
    if pos >= size and any(e.count for e in elements):
        raise _cut_off("nothing after the PLY header", name)
    return fmt, elements, pos, number + 1


class _PlyData:
    """What palnet keeps of an element: the x, y, z values, or each face's vertex count and indices."""
    __slots__ = ("columns", "counts", "indices")

    def __init__(self):
        self.columns, self.counts, self.indices = {}, None, None


def _gather(data: np.ndarray, starts: np.ndarray, counts: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values of ``dtype`` from byte buffer ``data``: counts[i] of them from byte starts[i] on."""
    counts = counts.astype(np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype)
    first = np.cumsum(counts) - counts
    at = np.repeat(starts.astype(np.int64) - first * dtype.itemsize, counts) + np.arange(total) * dtype.itemsize
    raw = data[at[:, None] + np.arange(dtype.itemsize)]
    return np.ascontiguousarray(raw).view(dtype).reshape(-1)


def _ply_binary_element(f, name: str, e: _PlyElement, order: str, pos: int, size: int,
                        keep: Sequence[str]) -> Tuple[int, _PlyData]:
    """Read (or, keeping nothing, step over) a binary element's records from byte ``pos``;
    returns the offset after them. Nothing is allocated before it is known to fit the file."""
    out = _PlyData()
    types = [(np.dtype(order + _PLY_TYPES[t]), np.dtype(order + _PLY_TYPES[c]) if c else None)
             for _, t, c in e.props]
    left = size - pos

    def cut(done: int, lists: bool = False) -> PalnetError:
        return PalnetError("the file is cut off{}: the data ends in {} {} of {}".format(
            ", or a list length in it is wrong" if lists else "", e.name, done + 1, e.count), name)

    if not any(c for _, c in types):
        record = np.dtype([("p%d" % i, t) for i, (t, _) in enumerate(types)])
        if e.count * record.itemsize > left:
            raise cut(left // max(record.itemsize, 1))
        if keep:
            f.seek(pos)
            rec = np.frombuffer(f.read(e.count * record.itemsize), record, e.count)
            out.columns = {p: rec["p%d" % e.index(p)] for p in keep}
        return pos + e.count * record.itemsize, out
    if e.count == 0:
        out.counts, out.indices = np.zeros(0, np.int64), np.zeros(0, np.int64)
        return pos, out
    # Guess that every record has the first record's list lengths (all triangles, say):
    # then the records are alike and read in one go.
    f.seek(pos)
    guess, at = [], pos
    for t, c in types:
        if c is None:
            at += t.itemsize
            continue
        f.seek(at)
        raw = f.read(c.itemsize)
        if len(raw) < c.itemsize:
            raise cut(0)
        n = int(np.frombuffer(raw, c)[0])
        if n < 0:
            raise PalnetError("damaged PLY data: {} 1 has a list of {} items".format(e.name, n), name)
        guess.append(n)
        at += c.itemsize + n * t.itemsize
    fields, lists = [], []
    for i, (t, c) in enumerate(types):
        if c is None:
            fields.append(("p%d" % i, t))
        else:
            fields += [("n%d" % i, c), ("p%d" % i, t, (guess[len(lists)],))]
            lists.append(i)
    record = np.dtype(fields)
    if e.count * record.itemsize <= left:
        f.seek(pos)
        rec = np.frombuffer(f.read(e.count * record.itemsize), record, e.count)
        if all(np.all(rec["n%d" % i] == g) for i, g in zip(lists, guess)):
            for p in keep:
                i = e.index(p)
                if types[i][1] is None:
                    out.columns[p] = rec["p%d" % i]
                else:
                    out.counts = np.full(e.count, guess[lists.index(i)], np.int64)
                    out.indices = rec["p%d" % i].reshape(-1)
            return pos + e.count * record.itemsize, out
    # Records of different lengths: walk them one by one, through the bytes there are.
    least = sum(t.itemsize if c is None else c.itemsize for t, c in types)
    if e.count * least > left:
        raise _cut_off("{} {} records need at least {} bytes, {} are left".format(
            e.count, e.name, e.count * least, left), name)
    f.seek(pos)
    data = f.read(left)
    counts = [[] for _ in lists]
    starts = []
    at, end = 0, len(data)
    try:
        if len(lists) == 1:  # the common case, kept lean: 0.2 s for a million faces
            i = lists[0]
            before = sum(t.itemsize for t, _ in types[:i])
            after = sum(t.itemsize for t, _ in types[i + 1:])
            t, c = types[i]
            unpack = struct.Struct(order + _STRUCT_CODES[c.str[1:]]).unpack_from
            step, item, lengths = before + c.itemsize + after, t.itemsize, counts[0]
            for r in range(e.count):
                starts.append(at)
                n = unpack(data, at + before)[0]
                if n < 0:
                    raise PalnetError("damaged PLY data: {} {} has a list of {} items".format(e.name, r + 1, n), name)
                if at + step + n * item > end:  # a length unlike the others may be what misled the walk
                    raise cut(r, bool(lengths) and (n != lengths[0] or len(set(lengths)) > 1))
                lengths.append(n)
                at += step + n * item
        else:
            steps = []  # fixed bytes, or (unpack count, count size, item size)
            for t, c in types:
                if c is None:
                    steps.append(t.itemsize)
                else:
                    steps.append((struct.Struct(order + _STRUCT_CODES[c.str[1:]]).unpack_from, c.itemsize,
                                  t.itemsize))
            for r in range(e.count):
                starts.append(at)
                k = 0
                for step in steps:
                    if isinstance(step, int):
                        at += step
                        continue
                    unpack, count_size, item_size = step
                    n = unpack(data, at)[0]
                    if n < 0:
                        raise PalnetError("damaged PLY data: {} {} has a list of {} items".format(
                            e.name, r + 1, n), name)
                    counts[k].append(n)
                    k += 1
                    at += count_size + n * item_size
                if at > end:
                    raise cut(r, True)
    except struct.error:
        raise cut(len(starts) - 1, len(set(n for lengths in counts for n in lengths)) > 1) from None
    starts_a = np.array(starts, np.int64)
    u8 = np.frombuffer(data, np.uint8)
    offset = np.zeros(e.count, np.int64)  # of the current property within each record
    for i, (t, c) in enumerate(types):
        n = np.array(counts[lists.index(i)], np.int64) if c is not None else None
        if e.props[i][0] in keep:
            if c is None:
                out.columns[e.props[i][0]] = _gather(u8, starts_a + offset, np.ones(e.count, np.int64), t)
            else:
                out.counts = n
                out.indices = _gather(u8, starts_a + offset + c.itemsize, n, t)
        offset += t.itemsize if c is None else c.itemsize + n * t.itemsize
    return pos + at, out


def _ply_row_layout(e: _PlyElement, row: List[bytes]) -> Optional[Tuple[List[Tuple[int, Optional[int]]], int]]:
    """Where each property's values start on a line, with each list's length (None for a value),
    and how many words the line then has; None when a list length is not a whole number."""
    layout, at = [], 0
    for p in e.props:
        if p[2]:
            if at >= len(row) or not row[at].isdigit():
                return None
            n = int(row[at])
            layout.append((at + 1, n))
            at += 1 + n
        else:
            layout.append((at, None))
            at += 1
    return layout, at


def _ply_ascii_element(lines: _Lines, name: str, e: _PlyElement, keep: Sequence[str]) -> _PlyData:
    """Read (or step over) an ASCII element: one record a line, as PLY writers put them."""
    out = _PlyData()
    keep_at = [(p, e.index(p)) for p in keep]
    columns = {p: [] for p in keep}  # arrays, a block at a time
    counts, indices = [], []
    lists = [i for i, p in enumerate(e.props) if p[2]]
    integer = all(_PLY_TYPES[t][0] != "f" for _, t, _ in e.props)
    done = 0
    while done < e.count:
        first, block = lines.take(min(e.count - done, 65536))
        if not block:
            raise _cut_off("the data ends in {} {} of {}".format(e.name, done + 1, e.count), name)
        row = block[0].split()
        shape = _ply_row_layout(e, row)
        if shape is not None and shape[1] == len(row):
            layout, width = shape
            got = _ply_ascii_block(block, layout, width, integer, lists, keep_at, e)
            if got is not None:  # every line holds one record laid out like the first
                for p, values in got.items():
                    if isinstance(values, tuple):
                        counts.append(values[0])
                        indices.append(values[1])
                    else:
                        columns[p].append(values)
                done += len(block)
                continue
        block_columns = {p: [] for p in keep}
        block_counts, block_indices = [], []
        for number, line in enumerate(block, first):
            row = line.split()
            if not row:
                continue
            shape = _ply_row_layout(e, row)
            if shape is None:
                raise PalnetError("damaged PLY data, line {}: the list length {} is not a whole number".format(
                    number, _show(_ply_bad_length(e, row))), name)
            layout, width = shape
            if width != len(row):
                raise PalnetError("damaged PLY data, line {}: {} where this {} record has {}".format(
                    number, _plural(len(row), "value"), e.name, width), name)
            for p, i in keep_at:
                at, n = layout[i]
                if n is None:
                    block_columns[p].append(row[at])
                else:
                    block_counts.append(n)
                    block_indices += row[at:at + n]
            done += 1
        for p, words in block_columns.items():
            if words:
                try:
                    columns[p].append(np.fromiter(map(float, words), np.float64, len(words)))
                except ValueError:
                    bad = next(w for w in words if not _parses(float, w))
                    raise PalnetError("damaged PLY data: the {} value {} is not a number".format(p, _show(bad)),
                                      name) from None
        if block_counts:
            counts.append(np.array(block_counts, np.int64))
            indices.append(_ply_ints(block_indices, name, e))
    for p, i in keep_at:
        if e.props[i][2]:
            out.counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
            out.indices = np.concatenate(indices) if indices else np.zeros(0, np.int64)
        else:
            out.columns[p] = np.concatenate(columns[p]) if columns[p] else np.zeros(0)
    return out


def _ply_ascii_block(block: List[bytes], layout, width: int, integer: bool, lists: List[int],
                     keep_at: List[Tuple[str, int]], e: _PlyElement):
    """The kept values of lines that all hold one record laid out like the first (a list of values,
    or for a list its lengths and items), or None if they do not: numpy's parser reads whole
    blocks of integers; of floats only the kept columns are read, as that parser is slow."""
    rows = len(block)
    joined = b" ".join(block)
    got = {}
    if integer:
        values = _numbers(joined, np.int64)
        if values is None or len(values) != rows * width:
            return None
        table = values.reshape(rows, width)
        if not all(np.all(table[:, layout[i][0] - 1] == layout[i][1]) for i in lists):
            return None
        for p, i in keep_at:
            at, n = layout[i]
            got[p] = table[:, at].astype(np.float64) if n is None else (
                np.full(rows, n, np.int64), table[:, at:at + n].reshape(-1))
        return got
    words = joined.split()
    if len(words) != rows * width or not all(
            words[layout[i][0] - 1::width].count(words[layout[i][0] - 1]) == rows for i in lists):
        return None
    try:
        for p, i in keep_at:
            at, n = layout[i]
            if n is None:
                got[p] = np.fromiter(map(float, words[at::width]), np.float64, rows)
            else:
                items = [np.fromiter(map(int, words[at + m::width]), np.int64, rows) for m in range(n)]
                got[p] = (np.full(rows, n, np.int64),
                          np.stack(items, axis=1).reshape(-1) if n else np.zeros(0, np.int64))
    except (ValueError, OverflowError):
        return None
    return got


def _ply_bad_length(e: _PlyElement, row: List[bytes]) -> bytes:
    at = 0
    for p in e.props:
        if p[2]:
            if at >= len(row) or not row[at].isdigit():
                return row[at] if at < len(row) else b"(nothing)"
            at += int(row[at])
        at += 1
    return b""


def _parses(convert, word: bytes) -> bool:
    try:
        convert(word)
        return True
    except (ValueError, OverflowError):
        return False


def _ply_ints(words: List[bytes], name: str, e: _PlyElement) -> np.ndarray:
    try:
        return np.fromiter(map(int, words), np.int64, len(words))
    except (ValueError, OverflowError):
        bad = next(w for w in words if not re.fullmatch(rb"[-+]?[0-9]{1,18}", w))
        raise PalnetError("damaged PLY data: the {} vertex index {} is not a whole number".format(
            e.name, _show(bad)), name) from None


def _read_ply_file(name: str, size: int):
    """(format, elements, vertices, face sizes, face vertex indices) of a PLY file, every count
    and index checked."""
    with open(name, "rb") as f:
        fmt, elements, body, first_line = _ply_header(f, name, size)
        names = [e.name for e in elements]
        last = max(names.index("vertex"), names.index("face") if "face" in names else 0)
        keep = {"vertex": ("x", "y", "z"), "face": ("vertex_indices",)}
        got = {}
        if fmt == "ascii":
            f.seek(body)
            lines = _Lines(f, name, first_line)
            for e in elements[:last + 1]:
                got[e.name] = _ply_ascii_element(lines, name, e, keep.get(e.name, ()))
        else:
            pos = body
            for e in elements[:last + 1]:
                pos, got[e.name] = _ply_binary_element(f, name, e, _PLY_FORMATS[fmt], pos, size,
                                                       keep.get(e.name, ()))
    vertex = got["vertex"]
    vertices = np.stack([vertex.columns[c] for c in "xyz"], axis=1).astype(np.float32).astype(np.float64)
    _check_vertices(vertices, name)
    face = got.get("face")
    counts = face.counts if face is not None else np.zeros(0, np.int64)
    indices = face.indices.astype(np.int64) if face is not None else np.zeros(0, np.int64)
    _check_face_ids(indices, len(vertices), name)
    return fmt, elements, vertices, counts, indices


def _faces_to_mesh(vertices: np.ndarray, counts: np.ndarray, indices: np.ndarray, units: str, source: str,
                   points: Optional[np.ndarray] = None,
                   strips: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Mesh:
    """A Mesh from checked polygons (and triangle strips), each given as sizes and vertex indices,
    triangulated as VTK's readers and :func:`polydata_to_mesh` do; ``points`` are the
    coordinates as the file stores them (float32 by default), which the triangulation uses."""
    if strips is None and np.all(counts == 3):
        return Mesh(vertices, indices.reshape(-1, 3), units, source)
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
    stored = vertices.astype(np.float32) if points is None else points.astype(points.dtype.newbyteorder("="))
    polydata = vtkPolyData()
    vtk_points = vtkPoints()
    vtk_points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(stored), deep=True))
    polydata.SetPoints(vtk_points)
    for sizes, ids, setter in ((counts, indices, polydata.SetPolys),) + (
            ((strips[0], strips[1], polydata.SetStrips),) if strips is not None else ()):
        if len(sizes):
            cells = vtkCellArray()
            cells.SetData(_id_array(np.concatenate([[0], np.cumsum(sizes)])), _id_array(ids))
            setter(cells)
    return polydata_to_mesh(polydata, units, source)


def read_triangle_ply(name: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """(vertices, triangles) of a binary PLY of triangles (or points), read directly; None for
    ASCII files and other polygons.

    The result is what VTK's reader gives: coordinates rounded to float32 (as VTK stores
    them), vertices in file order, each face's vertex list as written.
    """
    read = _read_ply_file(name, os.path.getsize(name))
    fmt, _, vertices, counts, indices = read
    if fmt == "ascii" or not np.all(counts == 3):
        return None
    return vertices, indices.reshape(-1, 3)


def _ply_needs_vtk(elements: List[_PlyElement]) -> bool:
    """Faces with texture coordinates and vertices without: VTK's reader adds a point for
    each corner whose texture coordinates differ, and palnet keeps what it gives."""
    vertex = next(e for e in elements if e.name == "vertex")
    face = next((e for e in elements if e.name == "face"), None)
    vertex_uv = any(vertex.index(a) >= 0 and vertex.index(b) >= 0
                    for a, b in (("u", "v"), ("texture_u", "texture_v"), ("s", "t")))
    return face is not None and face.index("texcoord") >= 0 and not vertex_uv


_VTK_INT = re.compile(rb"[-+]?(?:0|[1-9][0-9]*)")
_VTK_UINT = re.compile(rb"\+?(?:0|[1-9][0-9]*)")
_VTK_FLOAT = re.compile(rb"-?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|(?i:nan|inf|infinity))")


def _check_ply_for_vtk(name: str, fmt: str, elements: List[_PlyElement], counts: np.ndarray) -> None:
    """What VTK's PLY reader needs besides a file that reads here: it reads the elements in
    file order without skipping others, keeps at most 255 indices a face, and, in an ASCII
    file, stops reading correctly at the first word its number parser does not take whole."""
    names = [e.name for e in elements]
    if names.index("face") < names.index("vertex"):
        raise PalnetError("a PLY file with textured faces before its vertices is not supported", name)
    for e in elements[:max(names.index("vertex"), names.index("face"))]:
        if e.name not in ("vertex", "face") and e.count:
            raise PalnetError("a PLY file with textured faces and a {!r} element before them is not "
                              "supported".format(e.name), name)
    if counts.size and counts.max() > 255:
        raise PalnetError("a textured face has {} vertices; at most 255 are supported".format(
            int(counts.max())), name)
    if fmt != "ascii":
        return
    with open(name, "rb") as f:
        _, _, body, first_line = _ply_header(f, name, os.path.getsize(name))
        f.seek(body)
        lines = _Lines(f, name, first_line)
        for e in elements[:max(names.index("vertex"), names.index("face")) + 1]:
            done = 0
            while done < e.count:
                first, block = lines.take(min(e.count - done, 65536))
                if not block:
                    break
                for number, line in enumerate(block, first):
                    row, at = line.split(), 0
                    if not row:
                        continue
                    for _, t, c in e.props:
                        n = 1
                        if c:
                            _check_vtk_word(row[at], c, number, name)
                            n = int(row[at])
                            at += 1
                        for w in row[at:at + n]:
                            _check_vtk_word(w, t, number, name)
                        at += n
                    done += 1


def _check_vtk_word(word: bytes, ply_type: str, number: int, name: str) -> None:
    code = _PLY_TYPES[ply_type]
    if code[0] == "f":
        ok = _VTK_FLOAT.fullmatch(word) is not None and (abs(float(word)) < np.inf or b"n" in word.lower())
    else:
        ok = (_VTK_UINT if code == "u4" else _VTK_INT).fullmatch(word) is not None and \
            (-2 ** 31 <= int(word) < (2 ** 32 if code == "u4" else 2 ** 31))
    if not ok:
        raise PalnetError("damaged PLY data, line {}: {} is not a {} value VTK's reader can read".format(
            number, _show(word), ply_type), name)


def _read_ply(name: str, size: int, units: str) -> Mesh:
    fmt, elements, vertices, counts, indices = _read_ply_file(name, size)
    if not _ply_needs_vtk(elements):
        return _faces_to_mesh(vertices, counts, indices, units, name)
    _check_ply_for_vtk(name, fmt, elements, counts)
    return _read_with_vtk(name, ".ply", units)


# ---------------------------------------------------------------- legacy .vtk, read here

_LEGACY_TYPES = {"unsigned_char": "u1", "char": "i1", "signed_char": "i1", "short": "i2", "unsigned_short": "u2",
                 "int": "i4", "unsigned_int": "u4", "long": "i8", "unsigned_long": "u8", "vtktypeint64": "i8",
                 "vtktypeuint64": "u8", "float": "f4", "double": "f8", "vtkidtype": "i4"}
_WORD = re.compile(rb"\s*(\S+)")
_SPACE = np.zeros(256, bool)
_SPACE[list(b" \t\n\r\x0b\x0c")] = True


class _Legacy:
    """A legacy VTK file in memory with a read position, read the way vtkPolyDataReader reads it."""

    def __init__(self, data: bytes, name: str):
        self.data, self.name, self.pos, self.binary = data, name, 0, False

    def fail(self, what: str) -> PalnetError:
        return PalnetError("damaged VTK file: " + what, self.name)

    def line(self) -> bytes:
        end = self.data.find(b"\n", self.pos)
        end = len(self.data) if end < 0 else end
        text, self.pos = self.data[self.pos:end].rstrip(b"\r"), end + 1
        return text

    def word(self) -> bytes:
        m = _WORD.match(self.data, self.pos)
        if m is None:
            self.pos = len(self.data)
            return b""
        self.pos = m.end()
        return m.group(1)

    def count(self, what: str) -> int:
        w = self.word()
        if not w:
            raise _cut_off("it ends before the " + what, self.name)
        if not re.fullmatch(rb"[0-9]{1,18}", w):
            raise self.fail("the {} is {}, not a count".format(what, _show(w)))
        return int(w)

    def values(self, n: int, type_name: bytes, what: str) -> np.ndarray:
        """``n`` numbers of a legacy type, then any METADATA block, as VTK's reader skips it."""
        code = _LEGACY_TYPES.get(type_name.lower().decode("ascii", "replace"))
        if code is None:
            raise self.fail("{} has the type {}; palnet reads {}".format(what, _show(type_name),
                                                                        ", ".join(sorted(_LEGACY_TYPES))))
        dtype = np.dtype(">" + code)
        if self.binary:
            if n:
                end = self.data.find(b"\n", self.pos)
                if end < 0:
                    raise _cut_off("it ends before the {} data".format(what), self.name)
                start = end + 1
                if n * dtype.itemsize > len(self.data) - start:
                    raise _cut_off("{} announces {} bytes of data, {} are left".format(
                        what, n * dtype.itemsize, len(self.data) - start), self.name)
                out = np.frombuffer(self.data, dtype, n, start)
                self.pos = start + n * dtype.itemsize
            else:
                out = np.zeros(0, dtype)
        else:
            out = self.ascii_numbers(n, dtype.newbyteorder("="), what)
        self.skip_metadata()
        return out

    def ascii_numbers(self, n: int, dtype: np.dtype, what: str) -> np.ndarray:
        """The next ``n`` words as numbers: the bytes they span are found first (a window at a
        time), so nothing is allocated for more words than the file has."""
        d = self.data
        if n == 0:
            return np.zeros(0, dtype)
        window = min(len(d) - self.pos, 24 * n + 4096)
        while True:
            space = _SPACE[np.frombuffer(d, np.uint8, window, self.pos)]
            starts = np.flatnonzero(~space & np.concatenate([[True], space[:-1]]))
            if len(starts) > n or self.pos + window >= len(d):
                break
            window = min(len(d) - self.pos, 2 * window)
        if len(starts) < n:
            raise _cut_off("{} announces {} numbers, the file has {}".format(what, n, len(starts)), self.name)
        end = self.pos + (int(starts[n]) if len(starts) > n else window)
        values = _numbers(d[self.pos:end], np.float64 if dtype.kind == "f" else np.int64)
        if values is None or len(values) != n:
            convert = float if dtype.kind == "f" else int
            bad = next(w for w in d[self.pos:end].split() if not _parses(convert, w))
            raise self.fail("{} holds {}, not a number".format(what, _show(bad)))
        if dtype.kind in "iu" and len(values):
            info = np.iinfo(dtype)
            if values.min() < info.min or values.max() > info.max:
                raise self.fail("{} holds {}, out of range for its type".format(
                    what, int(values.max() if values.max() > info.max else values.min())))
        self.pos = end
        return values.astype(dtype)

    def skip_metadata(self) -> None:
        d, p = self.data, self.pos
        while True:
            while p < len(d) and d[p] in b" \r":
                p += 1
            if p < len(d) and d[p] == 10:
                p += 1
                continue
            break
        if d[p:p + 8].lower() == b"metadata":
            while p < len(d):
                end = d.find(b"\n", p)
                end = len(d) if end < 0 else end
                line, p = d[p:end].rstrip(b"\r"), end + 1
                if not line:
                    break
        self.pos = p

    def skip_strings(self, n: int, what: str) -> None:
        d = self.data
        if n > len(d) - self.pos:
            raise _cut_off("{} announces {} strings, more than the rest of the file holds".format(what, n),
                           self.name)
        end = d.find(b"\n", self.pos)
        p = len(d) if end < 0 else end + 1
        for _ in range(n):
            if self.binary:  # a length with its size in the first byte's two top bits
                if p >= len(d):
                    raise _cut_off("it ends in " + what, self.name)
                kind = d[p] >> 6
                size = {3: 1, 2: 2, 1: 4, 0: 8}[kind]
                length = int.from_bytes(d[p:p + size], "big") & ((1 << (8 * size - (2 if kind else 0))) - 1)
                p += size + length
            else:
                end = d.find(b"\n", p)
                p = len(d) + 1 if end < 0 else end + 1
            if p > len(d) + (0 if self.binary else 1):
                raise _cut_off("it ends in " + what, self.name)
        self.pos = min(p, len(d))
        self.skip_metadata()

    def skip_bits(self, n: int, what: str) -> None:
        if not self.binary:
            self.values(n, b"int", what)
            return
        if n:
            end = self.data.find(b"\n", self.pos)
            if end < 0 or (n + 7) // 8 > len(self.data) - end - 1:
                raise _cut_off("it ends in " + what, self.name)
            self.pos = end + 1 + (n + 7) // 8
        self.skip_metadata()

    def skip_field(self) -> None:
        self.word()  # the field's name
        for _ in range(self.count("FIELD's number of arrays")):
            array = self.word()
            if not array:
                raise _cut_off("it ends in a FIELD", self.name)
            if array == b"NULL_ARRAY":
                continue
            what = "the FIELD array {}".format(_show(array))
            n = self.count(what + "'s number of components") * self.count(what + "'s number of tuples")
            kind = self.word().lower()
            if kind in (b"string", b"utf8_string"):
                self.skip_strings(n, what)
            elif kind == b"bit":
                self.skip_bits(n, what)
            else:
                self.values(n, kind, what)

    def cells(self, version: int, what: str) -> Tuple[np.ndarray, np.ndarray]:
        """(offsets, connectivity) of a VERTICES/LINES/POLYGONS/TRIANGLE_STRIPS section."""
        n = self.count(what + "'s first number")
        size = self.count(what + "'s second number")
        if version >= 5:
            if n < 1:
                return np.zeros(1, np.int64), np.zeros(0, np.int64)
            for expected in (b"offsets", b"connectivity"):
                if self.word().lower() != expected:
                    raise self.fail("{} has no {} array".format(what, expected.decode().upper()))
                type_name = self.word()
                if expected == b"offsets":
                    offsets = self.values(n, type_name, what + " OFFSETS").astype(np.int64)
                else:
                    conn = self.values(size, type_name, what + " CONNECTIVITY").astype(np.int64)
            if offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != size:
                raise self.fail("the OFFSETS of {} do not run from 0 up to its {} vertex indices".format(what, size))
            return offsets, conn
        a = self.values(size, b"int", what).astype(np.int64)
        k = int(a[0]) if size else 0
        if k >= 0 and size == n * (k + 1) and np.all(a[::k + 1] == k):
            return np.arange(n + 1, dtype=np.int64) * k, a.reshape(n, k + 1)[:, 1:].reshape(-1)
        values, at, sizes = a.tolist(), 0, []
        for _ in range(n):
            m = values[at] if at < size else -1
            if m < 0 or at + 1 + m > size:
                break
            sizes.append(m)
            at += 1 + m
        if len(sizes) != n or at != size:
            raise self.fail("{} announces {} in {} numbers, but its cell sizes do not add up to "
                            "that".format(what, _plural(n, "cell"), size))
        starts = np.concatenate([[0], np.cumsum(np.array(sizes, np.int64) + 1)[:-1]]) if n else np.zeros(0, np.int64)
        keep = np.ones(size, bool)
        keep[starts] = False
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), a[keep]


def _read_legacy_vtk(name: str, units: str) -> Mesh:
    """A legacy .vtk POLYDATA file's points, polygons and strips, read as vtkPolyDataReader reads
    them (its reader allocates whatever a section announces, and a wrong version line crashes it);
    the point and cell data after them are not needed."""
    with open(name, "rb") as f:
        r = _Legacy(f.read(), name)
    first = r.line()
    m = re.match(rb"# vtk DataFile Version\s*([0-9]+)\.([0-9]+)", first)
    if m is None:
        raise PalnetError("cannot read: not a legacy VTK file (the first line is not "
                          "'# vtk DataFile Version N.N')", name)
    version = int(m.group(1))
    r.line()  # title
    kind = r.word().lower()
    if not (kind.startswith(b"ascii") or kind.startswith(b"binary")):
        raise r.fail("the third line is {}, not ASCII or BINARY".format(_show(kind)))
    r.binary = kind.startswith(b"binary")
    if r.word().lower() != b"dataset":
        raise r.fail("no DATASET line")
    dataset = r.word()
    if not dataset.lower().startswith(b"polydata"):
        raise PalnetError("cannot read: a VTK file of {} data, not POLYDATA (a surface)".format(_show(dataset)), name)
    points, cells = None, {}
    while True:
        word = r.word()
        key = word.lower()
        if key in (b"", b"point_data", b"cell_data"):
            break
        if key == b"field":
            r.skip_field()
        elif key == b"points":
            n = r.count("number of POINTS")
            points = r.values(3 * n, r.word(), "POINTS").reshape(n, 3)
            if points.dtype.kind not in "iuf":
                raise r.fail("the POINTS are not numbers")
        elif key in (b"vertices", b"lines", b"polygons", b"triangle_strips"):
            cells[key] = r.cells(version, word.decode("ascii", "replace").upper())
        else:
            raise r.fail("unknown section {}".format(_show(word)))
    if points is None or len(points) == 0:
        raise PalnetError("the mesh contains no points", name)
    vertices = points.astype(np.float64)
    _check_vertices(vertices, name)
    polys, strips = cells.get(b"polygons"), cells.get(b"triangle_strips")
    for part in (polys, strips):
        if part is not None:
            _check_face_ids(part[1], len(vertices), name)
    empty = (np.zeros(1, np.int64), np.zeros(0, np.int64))
    offsets, ids = polys if polys is not None else empty
    strips = (np.diff(strips[0]), strips[1]) if strips is not None and len(strips[0]) > 1 else None
    return _faces_to_mesh(vertices, np.diff(offsets), ids, units, name, points, strips)


# ---------------------------------------------------------------- OBJ, checked before VTK reads it

_OBJ_CORNER = re.compile(rb"([-+]?[0-9]+)(?:/([-+]?[0-9]*)(?:/([-+]?[0-9]+))?)?")
_OBJ_FORMS = {(0, 0): (1, (0,)), (1, 0): (2, (0, 1)), (2, 1): (2, (0, 2)), (2, 0): (3, (0, 1, 2))}


def _check_obj(name: str) -> None:
    """Check every face corner's vertex, texture coordinate and normal number against the file's
    counts, resolved as vtkOBJReader resolves them (negative numbers count back from the line):
    it looks them up unchecked, and crashes, when a face's texture coordinates or normals are
    numbered differently from its vertices."""
    with open(name, "rb") as f:
        data = f.read()
    if b"\0" in data:
        raise PalnetError("cannot read: not an OBJ file (it holds binary data)", name)
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if b"\\" in data:
        data = _obj_join_continued(data)
    if data[:1] in (b" ", b"\t") or b"\n " in data or b"\n\t" in data:
        data = re.sub(rb"(?m)^[ \t]+", b"", data)
    size = len(data)
    data += b"\n\n\n"  # so that a line's first three bytes are always there
    a = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(a[:size] == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [size]])
    starts, ends = starts[starts < size], ends[starts < size]  # line k of the file is number k + 1
    c0, c1, c2 = a[starts], a[starts + 1], a[starts + 2]
    blank1 = _SPACE[c1]
    blank2 = _SPACE[c2]
    is_v = c0 == ord("v")
    declared = [np.flatnonzero(is_v & blank1), np.flatnonzero(is_v & (c1 == ord("t")) & blank2),
                np.flatnonzero(is_v & (c1 == ord("n")) & blank2)]
    faces = np.flatnonzero((c0 == ord("f")) & blank1)
    if not len(faces):
        return
    # The face lines' text, other lines in between blanked, each face's 'f' too.
    first, last = int(starts[faces[0]]), int(ends[faces[-1]])
    b = a[first:last + 1].copy()
    if faces[-1] - faces[0] + 1 != len(faces):
        inside = np.zeros(faces[-1] - faces[0] + 1, bool)
        inside[faces - faces[0]] = True
        b[~np.repeat(inside, ends[faces[0]:faces[-1] + 1] - starts[faces[0]:faces[-1] + 1] + 1)] = 32
    line_at = starts[faces] - first
    b[line_at] = 32
    body = b.tobytes()
    table, form = None, None
    if not body.translate(None, b"0123456789/+- \n\t\x0b\x0c"):  # then spaces are the bytes up to 32
        word = b > 32
        word[1:] &= b[:-1] <= 32
        corner_at = np.flatnonzero(word)
        corners = np.diff(np.searchsorted(corner_at, np.concatenate([line_at, [len(b)]])))
        slashes, doubles, n = body.count(b"/"), body.count(b"//"), max(len(corner_at), 1)
        form = _OBJ_FORMS.get((slashes // n if slashes % n == 0 else -1, doubles // n if doubles % n == 0 else -1))
    if form is not None and np.all(corners >= 3):
        alike = True
        if slashes:  # each corner must hold exactly one run of the form's slashes
            skeleton = np.frombuffer(body.translate(None, b"0123456789+-"), np.uint8)
            slash = skeleton == ord("/")
            runs = np.flatnonzero(slash & ~np.concatenate([[False], slash[:-1]]))
            ends_ = np.flatnonzero(slash & ~np.concatenate([slash[1:], [False]]))
            alike = len(runs) == n and bool(np.all(ends_ - runs + 1 == slashes // n))
        values = _numbers(body.replace(b"/", b" "), np.int64) if alike else None
        if values is not None and len(values) == n * form[0] and np.all(np.abs(values) < 2 ** 62):
            table = values.reshape(n, form[0])
            corner_face = np.repeat(np.arange(len(faces)), corners)
    if table is None:  # mixed corner forms, or a problem to name: face by face
        rows = []
        for k, (s, e) in enumerate(zip((starts[faces] + 1).tolist(), ends[faces].tolist())):
            words = data[s:e].split()
            if len(words) < 3:
                raise PalnetError("line {}: a face needs at least 3 vertices, this one has {}".format(
                    int(faces[k]) + 1, len(words)), name)
            for w in words:
                m = _OBJ_CORNER.fullmatch(w)
                if m is None:
                    raise PalnetError("line {}: the face corner {} is not v, v/vt, v//vn or v/vt/vn".format(
                        int(faces[k]) + 1, _show(w)), name)
                numbers = [int(g) if g else 0 for g in m.groups()]
                if max(abs(v) for v in numbers) >= 2 ** 62:
                    raise PalnetError("line {}: the face corner {} holds a number far beyond the file's "
                                      "{}".format(int(faces[k]) + 1, _show(w), _plural(len(declared[0]), "vertex")),
                                      name)
                rows.append([k] + numbers)
        table = np.array(rows, np.int64)
        corner_face, table = table[:, 0], table[:, 1:]
        form = (3, (0, 1, 2))
    kinds = ("vertex", "texture coordinate", "normal")
    for column, kind in zip(table.T, form[1]):
        used = column != 0 if kind else np.ones(len(column), bool)  # 0: none given (only after a slash)
        lines = declared[kind]
        values, at = column[used], corner_face[used]
        if values.size and values.min() < 0:  # counted back from the face's line
            before = np.searchsorted(lines, faces[at])
            resolved = np.where(values < 0, before + values, values - 1)
        else:
            resolved = values - 1
        wrong = (values == 0) | (resolved < 0) | (resolved >= len(lines))
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            what = kinds[kind]
            if values[i] == 0:
                problem = "a face refers to {} 0 (OBJ numbers start at 1)".format(what)
            elif values[i] < 0:
                problem = "a face refers to {} {} but only {} come before it".format(
                    what, int(values[i]), _plural(int(np.searchsorted(lines, faces[at[i]])), what))
            else:
                problem = "a face refers to {} {} but the file has only {}".format(
                    what, int(values[i]), _plural(len(lines), what))
            raise PalnetError("line {}: {}".format(int(faces[at[i]]) + 1, problem), name)


def _obj_join_continued(data: bytes) -> bytes:
    """Face, line and point lines ending in a backslash continue on the next line, for vtkOBJReader;
    an empty line stands in for each joined one, so line numbers stay as in the file."""
    lines = data.split(b"\n")
    out, i = [], 0
    while i < len(lines):
        line, joined = lines[i], 0
        while line.rstrip().endswith(b"\\") and line.lstrip()[:1] in (b"f", b"l", b"p") and \
                line.lstrip()[1:2] in (b" ", b"\t") and i + 1 < len(lines):
            i += 1
            joined += 1
            line = line.rstrip()[:-1] + b" " + lines[i]
        out.append(line)
        out += [b""] * joined
        i += 1
    return b"\n".join(out)


# ---------------------------------------------------------------- STL, checked before VTK reads it

def _check_stl(name: str, size: int) -> Optional[int]:
    """vtkSTLReader reads a file starting with 'solid' as text and any other as binary: a binary
    file must hold whole 50-byte triangles, as many as it announces, and a text file must end
    with 'endsolid'. For a text file, returns its number of facets: where VTK fails to read the
    text it reads the file again as binary, and a file of the right size then gives triangles
    made of text, with more corners than the facets have."""
    with open(name, "rb") as f:
        head = f.read(84 + 4096)
        f.seek(max(0, size - 1024))
        tail = f.read()
        whole = (size - 84) // 50 if size >= 84 else -1
        announced = int(np.frombuffer(head[80:84], "<u4")[0]) if size >= 84 else -1
        if head.startswith(b"solid") and not (size >= 84 and (size - 84) % 50 == 0 and announced == whole):
            text = head[:4096]
            if b"\0" in text or re.search(rb"(?i)^\s*(facet|endsolid|color)\b", text.partition(b"\n")[2]) is None:
                raise PalnetError("cannot read: not an STL file (it starts with 'solid' but holds no facets)", name)
            if re.search(rb"(?i)endsolid", tail) is None:
                raise _cut_off("no 'endsolid' at the end of the text STL", name)
            f.seek(0)
            facets, last = 0, b""
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                chunk = (last + chunk).lower()
                facets += chunk.count(b"endloop")
                last = chunk[-6:]
            return facets
    body = head[84:]
    if size < 84 or (body and all(32 <= b < 127 or b in (9, 10, 13) for b in body)):
        raise PalnetError("cannot read: not an STL file (too short or text for a binary STL, and not "
                          "starting with 'solid')", name)
    if (size - 84) % 50:
        raise PalnetError("damaged binary STL: the {} bytes after its header are not a whole number of 50-byte "
                          "triangles".format(size - 84), name)
    if announced > whole:
        raise _cut_off("the header announces {}, the file holds {}".format(
            _plural(announced, "triangle"), whole), name)
    if announced not in (whole, 0):
        raise PalnetError("damaged binary STL: the header announces {}, the file holds {}".format(
            _plural(announced, "triangle"), whole), name)
    return None


# ---------------------------------------------------------------- VTP, checked before VTK reads it

_VTP_SIZES = {"Int8": 1, "UInt8": 1, "Int16": 2, "UInt16": 2, "Int32": 4, "UInt32": 4, "Int64": 8, "UInt64": 8,
              "Float32": 4, "Float64": 8, "String": 1, "Bit": 0}
_VTP_COMPRESSORS = {"vtkZLibDataCompressor": "zlib", "vtkLZ4DataCompressor": "lz4", "vtkLZMADataCompressor": "lzma"}
# What VTK may allocate to read a .vtp: its arrays' declared sizes, at most this many times the
# file's size (scans compress about 2 times; a bomb declares hundreds of times), or this floor.
_VTP_EXPANSION = 16
_VTP_FLOOR = 256 << 20
# VTK looks elements and arrays up by walking lists (20000 arrays take 10 s); files VTK writes
# have a few levels and a few dozen arrays.
_VTP_MAX_ELEMENTS = 20000
_VTP_MAX_ARRAYS = 2000
_VTP_MAX_DEPTH = 32
_B64 = re.compile(rb"[A-Za-z0-9+/=]*")
_B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


class _VtpData:
    """The encoded bytes of one DataArray, read as vtkXMLDataParser reads them (bounded reads)."""

    def __init__(self, name, f, size, text=None, at=0, base64=False, end=None):
        self.name, self.f, self.size, self.text, self.at, self.base64 = name, f, size, text, at, base64
        if end is None:
            end = at + _b64_run(text, at) if text is not None and base64 else (len(text) if text is not None else size)
        self.end = end  # where the encoded bytes stop

    def available(self, start: int) -> int:
        """Decoded bytes there are from decoded offset ``start`` on."""
        chars = self.end - self.at
        return max(0, (chars * 3 // 4 if self.base64 else chars) - start)

    def read(self, start: int, n: int) -> bytes:
        """``n`` decoded bytes from decoded offset ``start`` (the caller checked they exist)."""
        if not self.base64:
            if self.text is not None:
                return self.text[self.at + start:self.at + start + n]
            self.f.seek(self.at + start)
            return self.f.read(n)
        first, last = start // 3 * 4, -(-(start + n) // 3) * 4
        if self.text is not None:
            chars = self.text[self.at + first:self.at + last]
        else:
            self.f.seek(self.at + first)
            chars = self.f.read(last - first)
        try:
            raw = binascii.a2b_base64(chars)
        except binascii.Error:
            raise PalnetError("damaged VTP file: bad base64 data", self.name) from None
        return raw[start - start // 3 * 3:][:n]

    def restart(self, chars: int) -> "_VtpData":
        """The stream that starts ``chars`` encoded characters further on (after a header)."""
        return _VtpData(self.name, self.f, self.size, self.text, self.at + chars, self.base64, self.end)


def _b64_run(text: bytes, at: int) -> int:
    """How many base64 characters follow ``at``: VTK's decoder stops at the first other byte."""
    ends = [text.find(c, at) for c in (b"<", b"\n", b" ", b"\r", b"\t")]
    end = min([e for e in ends if e >= 0], default=len(text))
    if text[at:end].translate(None, _B64_CHARS):
        end = at + len(_B64.match(text, at).group())
    return end - at


def _lz4_block(src: bytes, limit: int) -> bytes:
    """An LZ4 block decompressed (as vtkLZ4DataCompressor writes them), never past ``limit`` bytes."""
    out, i, n = bytearray(), 0, len(src)
    while i < n:
        token = src[i]
        i += 1
        length = token >> 4
        if length == 15:
            while True:
                b = src[i]
                i += 1
                length += b
                if b != 255:
                    break
        out += src[i:i + length]
        i += length
        if i >= n:
            break
        back = src[i] | src[i + 1] << 8
        i += 2
        length = token & 15
        if length == 15:
            while True:
                b = src[i]
                i += 1
                length += b
                if b != 255:
                    break
        length += 4
        if back == 0 or back > len(out) or len(out) + length > limit:
            raise ValueError("bad LZ4 block")
        begin = len(out) - back
        if back >= length:
            out += out[begin:begin + length]
        else:
            for k in range(length):
                out.append(out[begin + k])
        if len(out) > limit:
            raise ValueError("bad LZ4 block")
    if len(out) > limit:
        raise ValueError("bad LZ4 block")
    return bytes(out)


def _check_vtp(name: str, size: int) -> None:
    """Check a VTK XML PolyData file against what vtkXMLPolyDataReader allocates and reads:
    every array's declared size (from the piece's counts, and for cell connectivity from the
    last offset) against the data the file holds, compression headers against the file, and
    all of it together against a memory budget (a small compressed file can declare gigabytes)."""
    import xml.etree.ElementTree as ET
    with open(name, "rb") as f:
        chunks, appended, read = [], -1, 0
        while True:  # VTK's parser stops at the first "<AppendedData"; so does this one
            chunk = f.read(_CHUNK)
            tail = chunks[-1][-16:] if chunks else b""
            found = (tail + chunk).find(b"<AppendedData")
            if found >= 0:
                appended = read - len(tail) + found
            chunks.append(chunk)
            read += len(chunk)
            if found >= 0 or not chunk:
                break
        text = b"".join(chunks)
        encoding, start = "base64", -1
        if appended >= 0:
            close = text.find(b">", appended)
            while close < 0:
                chunk = f.read(_CHUNK)
                if not chunk:
                    raise _cut_off("it ends inside the AppendedData tag", name)
                text += chunk
                close = text.find(b">", appended)
            tag = text[appended:close + 1]
            m = re.search(rb"""encoding\s*=\s*["']([^"']*)["']""", tag)
            encoding = m.group(1).decode("ascii", "replace") if m else "base64"
            f.seek(close + 1)
            lead = f.read(4096)
            skip = len(lead) - len(lead.lstrip(b" \t\r\n"))
            start = close + 1 + skip + (1 if lead[skip:skip + 1] == b"_" else 0)
            xml = text[:close].rstrip(b"/") + b"/>\n</VTKFile>\n"
        else:
            xml = text
        if b"<!DOCTYPE" in xml or b"<!ENTITY" in xml:
            raise PalnetError("cannot read: not a VTP file as VTK writes them (it declares a DOCTYPE or "
                              "entities)", name)
        parser = ET.XMLPullParser(events=("start", "end"))
        depth, elements, arrays, root = 0, 0, 0, None
        try:
            for k in range(0, len(xml), _CHUNK):
                parser.feed(xml[k:k + _CHUNK])
                for event, element in parser.read_events():
                    if event == "start":
                        depth, elements = depth + 1, elements + 1
                        arrays += element.tag == "DataArray"
                        root = element if root is None else root
                        if depth > _VTP_MAX_DEPTH or elements > _VTP_MAX_ELEMENTS or arrays > _VTP_MAX_ARRAYS:
                            raise PalnetError("cannot read: not a VTP file as VTK writes them (its XML is "
                                              "nested too deep, or has too many elements or arrays)", name)
                    else:
                        depth -= 1
            parser.close()
        except ET.ParseError as e:
            raise PalnetError("cannot read: not a VTP file, or a damaged one (XML error: {})".format(e), name) from None
        if root is None or root.tag != "VTKFile" or root.get("type") != "PolyData":
            raise PalnetError("cannot read: not a VTK PolyData (.vtp) file", name)
        header = {"UInt32": 4, "UInt64": 8}.get(root.get("header_type", "UInt32"))
        order = {"LittleEndian": "<", "BigEndian": ">"}.get(root.get("byte_order", "LittleEndian"))
        compressor = root.get("compressor", "")
        if header is None or order is None or (compressor and compressor not in _VTP_COMPRESSORS):
            raise PalnetError("damaged VTP file: unknown header_type, byte_order or compressor", name)
        if appended >= 0 and encoding not in ("raw", "base64"):
            raise PalnetError("damaged VTP file: unknown AppendedData encoding {!r}".format(encoding), name)
        appended_end = None
        if appended >= 0 and encoding == "base64":
            f.seek(start)
            appended_end = start
            while True:
                chunk = f.read(_CHUNK)
                run = _b64_run(chunk, 0)
                appended_end += run
                if run < len(chunk) or not chunk:
                    break
        polydata = root.find("PolyData")
        if polydata is None:
            raise PalnetError("damaged VTP file: no PolyData element", name)
        check = _VtpCheck(name, f, size, header, order, _VTP_COMPRESSORS.get(compressor), start,
                          encoding == "base64", appended_end)
        for field in [polydata.find("FieldData")] + [p.find("FieldData") for p in polydata.findall("Piece")]:
            for array in (field.findall("DataArray") if field is not None else ()):
                check.array(array, check.number(array, "NumberOfTuples"), "field data")
        for piece in polydata.findall("Piece"):
            n_points = check.number(piece, "NumberOfPoints")
            n_cells = 0
            for kind in ("Verts", "Lines", "Strips", "Polys"):
                n = check.number(piece, "NumberOf" + kind)
                n_cells += n
                if n == 0:
                    continue
                cells = piece.find(kind)
                arrays = {a.get("Name"): a for a in (cells.findall("DataArray") if cells is not None else ())}
                if "offsets" not in arrays or "connectivity" not in arrays:
                    raise PalnetError("damaged VTP file: {} {} without offsets and connectivity arrays".format(
                        n, kind), name)
                last = check.array(arrays["offsets"], n, kind + " offsets", last=True)
                check.array(arrays["connectivity"], last, kind + " connectivity")
            points = piece.find("Points")
            point_arrays = points.findall("DataArray") if points is not None else []
            if n_points and not point_arrays:
                raise PalnetError("damaged VTP file: {} points without a Points array".format(n_points), name)
            if point_arrays:
                check.array(point_arrays[0], n_points, "points")
            for kind, n in (("PointData", n_points), ("CellData", n_cells)):
                data = piece.find(kind)
                for array in (data.findall("DataArray") if data is not None else ()):
                    check.array(array, n, kind)
        for key in root.iter("InformationKey"):
            if check.number(key, "length") > 1024:
                raise PalnetError("damaged VTP file: an InformationKey of length {}".format(key.get("length")), name)
    if check.budget > max(_VTP_FLOOR, _VTP_EXPANSION * size):
        raise PalnetError("the file declares {:.0f} MB of data, more than a {} file of mesh data can hold "
                          "(a damaged or malicious file)".format(check.budget / 1e6, _size_text(size)), name)


class _VtpCheck:
    def __init__(self, name, f, size, header, order, compressor, appended_start, appended_base64, appended_end):
        self.name, self.f, self.size, self.header, self.order = name, f, size, header, order
        self.compressor, self.appended_start = compressor, appended_start
        self.appended_base64, self.appended_end = appended_base64, appended_end
        self.budget = 0

    def fail(self, what: str) -> PalnetError:
        return PalnetError("damaged VTP file: " + what, self.name)

    def number(self, element, attribute: str) -> int:
        value = element.get(attribute, "0").strip()
        if not re.fullmatch(r"[0-9]{1,18}", value):
            raise self.fail("{} {}={!r} is not a count".format(element.tag, attribute, value))
        return int(value)

    def words(self, raw: bytes, n: int) -> int:
        values = np.frombuffer(raw, self.order + "u%d" % self.header, n)
        return [int(v) for v in values]

    def array(self, element, tuples: int, what: str, last: bool = False) -> int:
        """Check one DataArray holds ``tuples`` tuples; with ``last``, return its last value."""
        kind = element.get("type", "")
        if kind not in _VTP_SIZES:
            raise self.fail("the {} array has the type {!r}".format(what, kind))
        if last and kind not in ("Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64"):
            raise self.fail("the {} array has the type {}, not an integer type".format(what, kind))
        components = self.number(element, "NumberOfComponents") if element.get("NumberOfComponents") else 1
        values = tuples * components
        word = _VTP_SIZES[kind]
        nbytes = (values + 7) // 8 if kind == "Bit" else values * word
        self.budget += values * 32 if kind == "String" else nbytes
        if self.budget > max(_VTP_FLOOR, _VTP_EXPANSION * self.size):
            raise PalnetError("the file declares {:.0f} MB of data, more than a {} file of mesh data can "
                              "hold (a damaged or malicious file)".format(self.budget / 1e6, _size_text(self.size)),
                              self.name)
        fmt = element.get("format", "")
        if values == 0:
            return 0
        if fmt == "ascii":
            text = (element.text or "").encode("ascii", "replace")
            word = np.frombuffer(text, np.uint8) > 32
            word[1:] &= ~word[:-1]
            starts = np.flatnonzero(word) if last else None
            found = len(starts) if last else int(np.count_nonzero(word))
            if found < values:
                raise self.fail("the {} array holds {} values where {} are declared".format(what, found, values))
            if not last:
                return 0
            value = text[starts[values - 1]:].split(None, 1)[0]
            if not re.fullmatch(rb"[0-9]{1,18}", value):
                raise self.fail("the last {} value is {}".format(what, _show(value)))
            return int(value)
        if fmt == "binary":
            raw = (element.text or "").encode("ascii", "replace")
            lead = len(raw) - len(raw.lstrip())
            data = _VtpData(self.name, self.f, self.size, raw, lead, True)
        elif fmt == "appended":
            if self.appended_start < 0:
                raise self.fail("the {} array is in appended data the file does not have".format(what))
            data = _VtpData(self.name, self.f, self.size, None, self.appended_start + self.number(element, "offset"),
                            self.appended_base64, self.appended_end)
        else:
            raise self.fail("the {} array has the format {!r}".format(what, fmt))
        h = self.header
        if self.compressor is None:
            if data.available(0) < h:
                raise self.fail("the {} array's data is missing".format(what))
            declared = self.words(data.read(0, h), 1)[0]
            if declared < nbytes or data.available(h) < nbytes:
                raise self.fail("the {} array holds {} bytes where {} are declared".format(
                    what, min(declared, data.available(h)), nbytes))
            if last:
                return self.last(data.read(h + nbytes - word, word), kind)
            return 0
        if data.available(0) < 3 * h:
            raise self.fail("the {} array's compression header is missing".format(what))
        blocks, block_size, last_size = self.words(data.read(0, 3 * h), 3)
        if blocks * h > data.available(3 * h):
            raise self.fail("the {} array's header announces {} compressed blocks, more than the file "
                            "holds".format(what, blocks))
        sizes = self.words(data.read(0, (3 + blocks) * h), 3 + blocks)[3:]
        if blocks and (block_size == 0 or last_size > block_size):
            raise self.fail("the {} array's compression header is inconsistent".format(what))
        stream = data.restart(-(-(3 + blocks) * h // 3) * 4) if data.base64 else data.restart((3 + blocks) * h)
        total = (blocks - 1) * block_size + (last_size or block_size) if blocks else 0
        if sum(sizes) > stream.available(0) or total < nbytes:
            raise self.fail("the {} array's compressed data is shorter than declared".format(what))
        self.budget += block_size
        if not last:
            return 0
        at = nbytes - word
        block = at // block_size
        raw = self.block(stream, sizes, block, block_size if block < blocks - 1 or not last_size else last_size,
                         what)
        return self.last(raw[at - block * block_size:at - block * block_size + word], kind)

    def block(self, stream: _VtpData, sizes: List[int], block: int, expected: int, what: str) -> bytes:
        packed = stream.read(sum(sizes[:block]), sizes[block])
        try:
            if self.compressor == "zlib":
                out = zlib.decompressobj().decompress(packed, expected + 1)
            elif self.compressor == "lzma":
                out = lzma.LZMADecompressor().decompress(packed, expected + 1)
            else:
                out = _lz4_block(packed, expected)
        except (zlib.error, lzma.LZMAError, ValueError, IndexError):
            raise self.fail("the {} array's compressed data is damaged".format(what)) from None
        if len(out) != expected:
            raise self.fail("the {} array's compressed data is damaged".format(what))
        return out

    def last(self, raw: bytes, kind: str) -> int:
        value = int(np.frombuffer(raw, self.order + ("u" if kind[0] == "U" else "i") + str(_VTP_SIZES[kind]))[0])
        if value < 0:
            raise self.fail("a cell offset is negative ({})".format(value))
        return value


# ---------------------------------------------------------------- reading a mesh

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


def _read_with_vtk(name: str, ext: str, units: str, failure: Optional[str] = None) -> Mesh:
    """Read a checked file with VTK's reader; ``failure`` is the message should the reader fail."""
    reader = _reader(ext)
    reader.SetFileName(name)
    with _vtk_errors([reader, reader.GetExecutive()]) as messages:
        ok = reader.GetExecutive().Update()
    if not ok or reader.GetErrorCode() or messages:
        raise PalnetError(failure or "cannot read: damaged file or not in {} format{}".format(
            ext[1:].upper(), _vtk_message(messages)), name)
    return polydata_to_mesh(reader.GetOutput(), units, name, merge_identical_points=(ext == ".obj"))


def read_mesh(path: PathLike, units: str = "mm") -> Mesh:
    """Read a surface (.ply, .obj, .stl, .vtk, .vtp) as a triangle Mesh in the file's (LPS) frame.

    ``units`` is the length unit of the file's numbers. A PLY without faces is
    a point cloud (a Mesh with no triangles). Any problem with the file, whatever its
    bytes, is a one-line PalnetError naming it: no file makes the reading crash or
    allocate more than the file can hold.
    """
    unit_scale(units, "mm")  # unknown units fail here, before any reading
    ext = mesh_extension(path)
    name = os.fspath(path)
    try:
        info = os.stat(name)
    except FileNotFoundError:
        raise PalnetError("file not found", name) from None
    except OSError as e:
        raise PalnetError("cannot read the file ({})".format(e.strerror or e), name) from None
    if stat.S_ISDIR(info.st_mode):
        raise PalnetError("is a folder, not a mesh file", name)
    if not stat.S_ISREG(info.st_mode):  # a pipe or device would block or never end
        raise PalnetError("is not a regular file", name)
    if info.st_size == 0:
        raise PalnetError("the file is empty", name)
    try:
        with open(name, "rb") as f:
            kind = _other_kind(f.read(16))
        if kind:
            raise PalnetError("cannot read: it is {}, not a mesh file".format(kind), name)
        if ext == ".ply":
            return _read_ply(name, info.st_size, units)
        if ext == ".vtk":
            return _read_legacy_vtk(name, units)
        if ext == ".obj":
            _check_obj(name)
        elif ext == ".stl":
            facets = _check_stl(name, info.st_size)
        else:
            _check_vtp(name, info.st_size)
    except OSError as e:
        raise PalnetError("cannot read the file ({})".format(e.strerror or e), name) from None
    except MemoryError:
        raise PalnetError("not enough memory to read this {} file".format(_size_text(info.st_size)), name) from None
    if ext == ".stl" and facets is not None:
        layout = "cannot read: a text STL that does not follow the solid / facet / outer loop / vertex layout"
        mesh = _read_with_vtk(name, ext, units, layout)
        if mesh.n_vertices > 3 * facets:
            raise PalnetError(layout + " (VTK read it as binary)", name)
        return mesh
    return _read_with_vtk(name, ext, units)


_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip archive"),
          (b"II*\0", "a TIFF image"), (b"MM\0*", "a TIFF image"))


def _other_kind(head: bytes) -> Optional[str]:
    """What a file is when its first bytes say it is a common non-mesh file."""
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def _size_text(n: int) -> str:
    return "{}-byte".format(n) if n < 10000 else "{:.0f} kB".format(n / 1e3) if n < 10 ** 7 else \
        "{:.0f} MB".format(n / 1e6)


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
