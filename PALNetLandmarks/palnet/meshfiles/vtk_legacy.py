"""Legacy VTK (.vtk) POLYDATA files, read here into the numbers vtkPolyDataReader gives: its
reader allocates whatever a section announces, and a wrong version line crashes it."""
import re
from typing import Tuple

import numpy as np

from ..errors import PalnetError
from ..datatypes import Mesh
from .checks import SPACE, check_face_ids, check_vertices, cut_off, damaged, numbers, parses, plural, show
from .polydata import faces_to_mesh

_TYPES = {"unsigned_char": "u1", "char": "i1", "signed_char": "i1", "short": "i2", "unsigned_short": "u2",
          "int": "i4", "unsigned_int": "u4", "long": "i8", "unsigned_long": "u8", "vtktypeint64": "i8",
          "vtktypeuint64": "u8", "float": "f4", "double": "f8", "vtkidtype": "i4"}
_WORD = re.compile(rb"\s*(\S+)")


class _LegacyFile:
    """A legacy VTK file in memory with a read position, read the way vtkPolyDataReader reads it."""

    def __init__(self, data: bytes, name: str):
        self.data, self.name, self.pos, self.binary = data, name, 0, False

    def fail(self, what: str) -> PalnetError:
        return damaged("VTK", what, self.name)

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
            raise cut_off("it ends before the " + what, self.name)
        if not re.fullmatch(rb"[0-9]{1,18}", w):
            raise self.fail("the {} is {}, not a count".format(what, show(w)))
        return int(w)

    def values(self, n: int, type_name: bytes, what: str) -> np.ndarray:
        """``n`` numbers of a legacy type, then any METADATA block, as VTK's reader skips it."""
        code = _TYPES.get(type_name.lower().decode("ascii", "replace"))
        if code is None:
            raise self.fail("{} has the type {}; palnet reads {}".format(what, show(type_name),
                                                                        ", ".join(sorted(_TYPES))))
        dtype = np.dtype(">" + code)
        if self.binary:
            if n:
                end = self.data.find(b"\n", self.pos)
                if end < 0:
                    raise cut_off("it ends before the {} data".format(what), self.name)
                start = end + 1
                if n * dtype.itemsize > len(self.data) - start:
                    raise cut_off("{} announces {} bytes of data, {} are left".format(
                        what, n * dtype.itemsize, len(self.data) - start), self.name)
                out = np.frombuffer(self.data, dtype, n, start)
                self.pos = start + n * dtype.itemsize
            else:
                out = np.zeros(0, dtype)
        else:
            out = self.asciinumbers(n, dtype.newbyteorder("="), what)
        self.skip_metadata()
        return out

    def asciinumbers(self, n: int, dtype: np.dtype, what: str) -> np.ndarray:
        """The next ``n`` words as numbers: the bytes they span are found first (a window at a
        time), so nothing is allocated for more words than the file has."""
        d = self.data
        if n == 0:
            return np.zeros(0, dtype)
        window = min(len(d) - self.pos, 24 * n + 4096)
        while True:
            space = SPACE[np.frombuffer(d, np.uint8, window, self.pos)]
            starts = np.flatnonzero(~space & np.concatenate([[True], space[:-1]]))
            if len(starts) > n or self.pos + window >= len(d):
                break
            window = min(len(d) - self.pos, 2 * window)
        if len(starts) < n:
            raise cut_off("{} announces {} numbers, the file has {}".format(what, n, len(starts)), self.name)
        end = self.pos + (int(starts[n]) if len(starts) > n else window)
        values = numbers(d[self.pos:end], np.float64 if dtype.kind == "f" else np.int64)
        if values is None or len(values) != n:
            convert = float if dtype.kind == "f" else int
            bad = next(w for w in d[self.pos:end].split() if not parses(convert, w))
            raise self.fail("{} holds {}, not a number".format(what, show(bad)))
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
            raise cut_off("{} announces {} strings, more than the rest of the file holds".format(what, n),
                           self.name)
        end = d.find(b"\n", self.pos)
        p = len(d) if end < 0 else end + 1
        for _ in range(n):
            if self.binary:  # a length with its size in the first byte's two top bits
                if p >= len(d):
                    raise cut_off("it ends in " + what, self.name)
                kind = d[p] >> 6
                size = {3: 1, 2: 2, 1: 4, 0: 8}[kind]
                length = int.from_bytes(d[p:p + size], "big") & ((1 << (8 * size - (2 if kind else 0))) - 1)
                p += size + length
            else:
                end = d.find(b"\n", p)
                p = len(d) + 1 if end < 0 else end + 1
            if p > len(d) + (0 if self.binary else 1):
                raise cut_off("it ends in " + what, self.name)
        self.pos = min(p, len(d))
        self.skip_metadata()

    def skip_bits(self, n: int, what: str) -> None:
        if not self.binary:
            self.values(n, b"int", what)
            return
        if n:
            end = self.data.find(b"\n", self.pos)
            if end < 0 or (n + 7) // 8 > len(self.data) - end - 1:
                raise cut_off("it ends in " + what, self.name)
            self.pos = end + 1 + (n + 7) // 8
        self.skip_metadata()

    def skip_field(self) -> None:
        self.word()  # the field's name
        for _ in range(self.count("FIELD's number of arrays")):
            array = self.word()
            if not array:
                raise cut_off("it ends in a FIELD", self.name)
            if array == b"NULL_ARRAY":
                continue
            what = "the FIELD array {}".format(show(array))
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
                            "that".format(what, plural(n, "cell"), size))
        starts = np.concatenate([[0], np.cumsum(np.array(sizes, np.int64) + 1)[:-1]]) if n else np.zeros(0, np.int64)
        keep = np.ones(size, bool)
        keep[starts] = False
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), a[keep]


def read_legacy_vtk(name: str, units: str) -> Mesh:
    """A legacy .vtk POLYDATA file's points, polygons and strips, read as vtkPolyDataReader reads
    them (its reader allocates whatever a section announces, and a wrong version line crashes it);
    the point and cell data after them are not needed."""
    with open(name, "rb") as f:
        r = _LegacyFile(f.read(), name)
    first = r.line()
    m = re.match(rb"# vtk DataFile Version\s*([0-9]+)\.([0-9]+)", first)
    if m is None:
        raise PalnetError("cannot read: not a legacy VTK file (the first line is not "
                          "'# vtk DataFile Version N.N')", name)
    version = int(m.group(1))
    r.line()  # title
    kind = r.word().lower()
    if not (kind.startswith(b"ascii") or kind.startswith(b"binary")):
        raise r.fail("the third line is {}, not ASCII or BINARY".format(show(kind)))
    r.binary = kind.startswith(b"binary")
    if r.word().lower() != b"dataset":
        raise r.fail("no DATASET line")
    dataset = r.word()
    if not dataset.lower().startswith(b"polydata"):
        raise PalnetError("cannot read: a VTK file of {} data, not POLYDATA (a surface)".format(show(dataset)), name)
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
            raise r.fail("unknown section {}".format(show(word)))
    if points is None or len(points) == 0:
        raise PalnetError("the mesh contains no points", name)
    vertices = points.astype(np.float64)
    check_vertices(vertices, name)
    polys, strips = cells.get(b"polygons"), cells.get(b"triangle_strips")
    for part in (polys, strips):
        if part is not None:
            check_face_ids(part[1], len(vertices), name)
    empty = (np.zeros(1, np.int64), np.zeros(0, np.int64))
    offsets, ids = polys if polys is not None else empty
    strips = (np.diff(strips[0]), strips[1]) if strips is not None and len(strips[0]) > 1 else None
    return faces_to_mesh(vertices, np.diff(offsets), ids, units, name, points, strips)
