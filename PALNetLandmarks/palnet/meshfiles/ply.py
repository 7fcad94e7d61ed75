"""PLY files, read here into the numbers VTK's PLY reader gives (its reader crashes on damaged
files): the header read the way VTK reads it, the vertices' x, y, z and the faces' vertex
indices checked; only textured faces on untextured vertices are left to VTK's reader, after
checking what it needs (see :func:`read_ply`)."""
import os
import re
from typing import List, Optional, Tuple

import numpy as np

from ..errors import PalnetError
from ..datatypes import Mesh
from .checks import MAX_INT, Lines, check_face_ids, check_vertices, cut_off, show
from .ply_elements import PLY_TYPES, PlyElement, read_ascii_element, read_binary_element
from .polydata import faces_to_mesh, read_with_vtk

_FORMATS = {"ascii": "", "binary_little_endian": "<", "binary_big_endian": ">"}
_HEADER_MAX = 1 << 20
# Properties VTK's PLY reader stores in fixed places: as a list (or a value) where it expects a
# value (or a list) it writes a pointer over a number, or frees a number as a pointer.
_VERTEX_VALUES = {"x", "y", "z", "u", "v", "texture_u", "texture_v", "s", "t", "nx", "ny", "nz",
                  "red", "green", "blue", "alpha", "diffuse_red", "diffuse_green", "diffuse_blue"}
_FACE_VALUES = {"intensity", "red", "green", "blue", "alpha"}
_FACE_LISTS = {"vertex_indices", "texcoord"}


def _element(elements: List[PlyElement], name: str) -> Optional[PlyElement]:
    return next((e for e in elements if e.name == name), None)


def _read_header(f, name: str, size: int) -> Tuple[str, List[PlyElement], int, int]:
    """(format, elements, offset of the body, line number of the body's first line), read the
    way VTK's reader reads a header; anything it would misread is a PalnetError."""
    head = f.read(_HEADER_MAX)
    if not head.startswith(b"ply") or head[3:4] not in (b"\n", b"\r", b" ", b"\t"):
        raise PalnetError("cannot read: not a PLY file (it does not start with 'ply')", name)
    eol = re.compile(rb"\r\n|\n|\r")
    fmt, elements, pos, number = None, [], 0, 0
    while True:
        m = eol.search(head, pos)
        if m is None:
            if len(head) == _HEADER_MAX:
                raise PalnetError("damaged PLY file: no 'end_header' in its first {} bytes".format(
                    _HEADER_MAX), name)
            raise cut_off("the PLY header has no 'end_header' line", name)
        line, pos, number = head[pos:m.start()], m.end(), number + 1
        where = "damaged PLY header, line {} ({}): ".format(number, show(line))
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
            if len(words) != 3 or words[1] not in _FORMATS or not re.fullmatch(r"[0-9]+(\.[0-9]*)?", words[2]):
                raise PalnetError(where + "expected 'format ascii 1.0', 'format binary_little_endian 1.0' "
                                  "or 'format binary_big_endian 1.0'", name)
            fmt = words[1]
        elif key == "element":
            if len(words) < 3:
                raise PalnetError(where + "expected 'element NAME COUNT'", name)
            if not re.fullmatch(r"-?[0-9]+", words[2]) or not 0 <= int(words[2]) <= MAX_INT:
                raise PalnetError(where + "the count must be a whole number from 0 to {}".format(MAX_INT), name)
            if any(e.name == words[1] for e in elements):
                raise PalnetError(where + "a second element named {!r}".format(words[1]), name)
            elements.append(PlyElement(words[1], int(words[2])))
        elif key == "property":
            is_list = len(words) > 1 and words[1] == "list"
            if not elements or len(words) < (5 if is_list else 3):
                raise PalnetError(where + "expected 'property TYPE NAME' or 'property list COUNT_TYPE TYPE NAME' "
                                  "after an element", name)
            types = words[2:4] if is_list else words[1:2]
            for t in types:
                if t not in PLY_TYPES:
                    raise PalnetError(where + "unknown type {!r} (PLY types: {})".format(
                        t, ", ".join(sorted(PLY_TYPES))), name)
            if is_list and PLY_TYPES[types[0]][0] == "f":
                raise PalnetError(where + "a list's count must have an integer type, not {!r}".format(types[0]), name)
            elements[-1].props.append((words[4], types[1], types[0]) if is_list else (words[2], types[0], None))
    if fmt is None:
        raise PalnetError("damaged PLY header: no 'format' line", name)
    vertex, face = _element(elements, "vertex"), _element(elements, "face")
    for c in "xyz":
        if vertex is not None and vertex.index(c) >= 0 and vertex.props[vertex.index(c)][2]:
            raise PalnetError("damaged PLY header: the vertex property {!r} must be a single value".format(c), name)
    if vertex is None or any(vertex.index(c) < 0 for c in "xyz"):
        raise PalnetError("damaged PLY header: no 'vertex' element with x, y and z values", name)
    for e, values in ((vertex, _VERTEX_VALUES), (face, _FACE_VALUES)):
        for prop, t, count_type in (e.props if e is not None else ()):
            if (prop in values and count_type) or (e.name == "face" and prop in _FACE_LISTS and not count_type):
                raise PalnetError("damaged PLY header: the {} property {!r} must be {}".format(
                    e.name, prop, "a list" if prop in _FACE_LISTS else "a single value"), name)
            if e.name == "face" and prop == "vertex_indices" and PLY_TYPES[t][0] == "f":
                raise PalnetError("damaged PLY header: face vertex indices must have an integer type, "
                                  "not {!r}".format(t), name)
    if face is not None and face.index("vertex_indices") < 0:
        raise PalnetError("damaged PLY header: the 'face' element has no 'vertex_indices' list", name)
    if pos >= size and any(e.count for e in elements):
        raise cut_off("nothing after the PLY header", name)
    return fmt, elements, pos, number + 1


def _read_ply_file(name: str, size: int):
    """(format, elements, vertices, face sizes, face vertex indices) of a PLY file, every count
    and index checked."""
    with open(name, "rb") as f:
        fmt, elements, body, first_line = _read_header(f, name, size)
        names = [e.name for e in elements]
        last = max(names.index("vertex"), names.index("face") if "face" in names else 0)
        keep = {"vertex": ("x", "y", "z"), "face": ("vertex_indices",)}
        got = {}
        if fmt == "ascii":
            f.seek(body)
            lines = Lines(f, name, first_line)
            for e in elements[:last + 1]:
                got[e.name] = read_ascii_element(lines, name, e, keep.get(e.name, ()))
        else:
            pos = body
            for e in elements[:last + 1]:
                pos, got[e.name] = read_binary_element(f, name, e, _FORMATS[fmt], pos, size,
                                                       keep.get(e.name, ()))
    vertex = got["vertex"]
    vertices = np.stack([vertex.columns[c] for c in "xyz"], axis=1).astype(np.float32).astype(np.float64)
    check_vertices(vertices, name)
    face = got.get("face")
    counts = face.counts if face is not None else np.zeros(0, np.int64)
    indices = face.indices.astype(np.int64) if face is not None else np.zeros(0, np.int64)
    check_face_ids(indices, len(vertices), name)
    return fmt, elements, vertices, counts, indices


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


def _needs_vtk(elements: List[PlyElement]) -> bool:
    """Faces with texture coordinates and vertices without: VTK's reader adds a point for
    each corner whose texture coordinates differ, and palnet keeps what it gives."""
    vertex, face = _element(elements, "vertex"), _element(elements, "face")
    vertex_uv = any(vertex.index(a) >= 0 and vertex.index(b) >= 0
                    for a, b in (("u", "v"), ("texture_u", "texture_v"), ("s", "t")))
    return face is not None and face.index("texcoord") >= 0 and not vertex_uv


_VTK_INT = re.compile(rb"[-+]?(?:0|[1-9][0-9]*)")
_VTK_UINT = re.compile(rb"\+?(?:0|[1-9][0-9]*)")
_VTK_FLOAT = re.compile(rb"-?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|(?i:nan|inf|infinity))")


def _check_for_vtk(name: str, fmt: str, elements: List[PlyElement], counts: np.ndarray) -> None:
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
        _, _, body, first_line = _read_header(f, name, os.path.getsize(name))
        f.seek(body)
        lines = Lines(f, name, first_line)
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
    code = PLY_TYPES[ply_type]
    if code[0] == "f":
        ok = _VTK_FLOAT.fullmatch(word) is not None and (abs(float(word)) < np.inf or b"n" in word.lower())
    else:
        ok = (_VTK_UINT if code == "u4" else _VTK_INT).fullmatch(word) is not None and \
            (-2 ** 31 <= int(word) < (2 ** 32 if code == "u4" else 2 ** 31))
    if not ok:
        raise PalnetError("damaged PLY data, line {}: {} is not a {} value VTK's reader can read".format(
            number, show(word), ply_type), name)


def read_ply(name: str, size: int, units: str) -> Mesh:
    """The Mesh of a PLY file of ``size`` bytes, as VTK's PLY reader gives it."""
    fmt, elements, vertices, counts, indices = _read_ply_file(name, size)
    if not _needs_vtk(elements):
        return faces_to_mesh(vertices, counts, indices, units, name)
    _check_for_vtk(name, fmt, elements, counts)
    return read_with_vtk(name, ".ply", units)
