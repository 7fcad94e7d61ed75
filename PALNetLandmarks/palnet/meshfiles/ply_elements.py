"""The records of a PLY file's elements after its header, binary or ASCII, read (or stepped
over) with every count checked against the bytes the file has left before anything is
allocated; what palnet keeps of them is each vertex's x, y, z and each face's vertex indices."""
import re
import struct
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import PalnetError
from .checks import Lines, cut_off, numbers, parses, plural, show

PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
             "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
             "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}
_STRUCT_CODES = {"i1": "b", "u1": "B", "i2": "h", "u2": "H", "i4": "i", "u4": "I"}


class PlyElement:
    """An element the header declares: its name, number of records and properties."""
    __slots__ = ("name", "count", "props")

    def __init__(self, name: str, count: int):
        self.name, self.count, self.props = name, count, []  # props: (name, type, count type or None)

    def index(self, prop: str) -> int:
        return next((i for i, p in enumerate(self.props) if p[0] == prop), -1)


class PlyData:
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


def read_binary_element(f, name: str, e: PlyElement, order: str, pos: int, size: int,
                        keep: Sequence[str]) -> Tuple[int, PlyData]:
    """Read (or, keeping nothing, step over) a binary element's records from byte ``pos``;
    returns the offset after them. Nothing is allocated before it is known to fit the file."""
    out = PlyData()
    types = [(np.dtype(order + PLY_TYPES[t]), np.dtype(order + PLY_TYPES[c]) if c else None)
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
        raise cut_off("{} {} records need at least {} bytes, {} are left".format(
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


def _row_layout(e: PlyElement, row: List[bytes]) -> Tuple[Optional[List[Tuple[int, Optional[int]]]], int]:
    """Where each property's values start on a line, with each list's length (None for a value),
    and how many words the line then has; or (None, k) when the list length at word k of the
    line is not a whole number (or k is past the line's end)."""
    layout, at = [], 0
    for p in e.props:
        if p[2]:
            if at >= len(row) or not row[at].isdigit():
                return None, at
            n = int(row[at])
            layout.append((at + 1, n))
            at += 1 + n
        else:
            layout.append((at, None))
            at += 1
    return layout, at


def read_ascii_element(lines: Lines, name: str, e: PlyElement, keep: Sequence[str]) -> PlyData:
    """Read (or step over) an ASCII element: one record a line, as PLY writers put them."""
    out = PlyData()
    keep_at = [(p, e.index(p)) for p in keep]
    columns = {p: [] for p in keep}  # arrays, a block at a time
    counts, indices = [], []
    lists = [i for i, p in enumerate(e.props) if p[2]]
    integer = all(PLY_TYPES[t][0] != "f" for _, t, _ in e.props)
    done = 0
    while done < e.count:
        first, block = lines.take(min(e.count - done, 65536))
        if not block:
            raise cut_off("the data ends in {} {} of {}".format(e.name, done + 1, e.count), name)
        row = block[0].split()
        layout, width = _row_layout(e, row)
        if layout is not None and width == len(row):
            got = _ascii_block(block, layout, width, integer, lists, keep_at, e)
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
            layout, width = _row_layout(e, row)
            if layout is None:
                raise PalnetError("damaged PLY data, line {}: the list length {} is not a whole number".format(
                    number, show(row[width] if width < len(row) else b"(nothing)")), name)
            if width != len(row):
                raise PalnetError("damaged PLY data, line {}: {} where this {} record has {}".format(
                    number, plural(len(row), "value"), e.name, width), name)
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
                    bad = next(w for w in words if not parses(float, w))
                    raise PalnetError("damaged PLY data: the {} value {} is not a number".format(p, show(bad)),
                                      name) from None
        if block_counts:
            counts.append(np.array(block_counts, np.int64))
            indices.append(_ints(block_indices, name, e))
    for p, i in keep_at:
        if e.props[i][2]:
            out.counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
            out.indices = np.concatenate(indices) if indices else np.zeros(0, np.int64)
        else:
            out.columns[p] = np.concatenate(columns[p]) if columns[p] else np.zeros(0)
    return out


def _ascii_block(block: List[bytes], layout, width: int, integer: bool, lists: List[int],
                     keep_at: List[Tuple[str, int]], e: PlyElement):
    """The kept values of lines that all hold one record laid out like the first (a list of values,
    or for a list its lengths and items), or None if they do not: numpy's parser reads whole
    blocks of integers; of floats only the kept columns are read, as that parser is slow."""
    rows = len(block)
    joined = b" ".join(block)
    got = {}
    if integer:
        values = numbers(joined, np.int64)
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


def _ints(words: List[bytes], name: str, e: PlyElement) -> np.ndarray:
    try:
        return np.fromiter(map(int, words), np.int64, len(words))
    except (ValueError, OverflowError):
        bad = next(w for w in words if not re.fullmatch(rb"[-+]?[0-9]{1,18}", w))
        raise PalnetError("damaged PLY data: the {} vertex index {} is not a whole number".format(
            e.name, show(bad)), name) from None
