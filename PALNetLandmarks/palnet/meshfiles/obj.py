"""OBJ files, checked here before VTK's reader reads them: vtkOBJReader looks face corners'
texture coordinates and normals up unchecked, and crashes on a number past the file's."""
import re

import numpy as np

from ..errors import PalnetError
from .checks import SPACE, numbers, plural, show, word_starts

_CORNER = re.compile(rb"([-+]?[0-9]+)(?:/([-+]?[0-9]*)(?:/([-+]?[0-9]+))?)?")
_FORMS = {(0, 0): (1, (0,)), (1, 0): (2, (0, 1)), (2, 1): (2, (0, 2)), (2, 0): (3, (0, 1, 2))}


def check_obj(name: str) -> None:
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
        data = _join_continued(data)
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
    blank1 = SPACE[c1]
    blank2 = SPACE[c2]
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
        corner_at = np.flatnonzero(word_starts(b))
        corners = np.diff(np.searchsorted(corner_at, np.concatenate([line_at, [len(b)]])))
        slashes, doubles, n = body.count(b"/"), body.count(b"//"), max(len(corner_at), 1)
        form = _FORMS.get((slashes // n if slashes % n == 0 else -1, doubles // n if doubles % n == 0 else -1))
    if form is not None and np.all(corners >= 3):
        alike = True
        if slashes:  # each corner must hold exactly one run of the form's slashes
            skeleton = np.frombuffer(body.translate(None, b"0123456789+-"), np.uint8)
            slash = skeleton == ord("/")
            runs = np.flatnonzero(slash & ~np.concatenate([[False], slash[:-1]]))
            ends_ = np.flatnonzero(slash & ~np.concatenate([slash[1:], [False]]))
            alike = len(runs) == n and bool(np.all(ends_ - runs + 1 == slashes // n))
        values = numbers(body.replace(b"/", b" "), np.int64) if alike else None
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
                m = _CORNER.fullmatch(w)
                if m is None:
                    raise PalnetError("line {}: the face corner {} is not v, v/vt, v//vn or v/vt/vn".format(
                        int(faces[k]) + 1, show(w)), name)
                corner = [int(g) if g else 0 for g in m.groups()]
                if max(abs(v) for v in corner) >= 2 ** 62:
                    raise PalnetError("line {}: the face corner {} holds a number far beyond the file's "
                                      "{}".format(int(faces[k]) + 1, show(w), plural(len(declared[0]), "vertex")),
                                      name)
                rows.append([k] + corner)
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
                    what, int(values[i]), plural(int(np.searchsorted(lines, faces[at[i]])), what))
            else:
                problem = "a face refers to {} {} but the file has only {}".format(
                    what, int(values[i]), plural(len(lines), what))
            raise PalnetError("line {}: {}".format(int(faces[at[i]]) + 1, problem), name)


def _join_continued(data: bytes) -> bytes:
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
