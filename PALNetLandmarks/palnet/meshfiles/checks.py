"""What every mesh file reader here shares: bounded reads, counts and indices checked against
the file, and the one-line errors (a :class:`PalnetError` naming the file) they raise.

VTK's readers trust a file's counts and indices: a wrong one crashes the process (a
segmentation fault, or an abort no try/except can catch), or makes it allocate whatever a
header claims. So every count is checked against the bytes the file has left before anything
is allocated or read, and every index against the vertices.
"""
import warnings
from typing import List, Optional, Tuple

import numpy as np

from ..errors import PalnetError

CHUNK = 1 << 22  # bytes of a text file read at a time
MAX_LINE = 1 << 20  # a longer line is not mesh data
MAX_INT = 2 ** 31 - 1  # VTK keeps counts in an int
SPACE = np.zeros(256, bool)  # the bytes that separate words for C's number parsers
SPACE[list(b" \t\n\r\x0b\x0c")] = True


# ---------------------------------------------------------------- one-line errors

def cut_off(what: str, name: str) -> PalnetError:
    return PalnetError("the file is cut off: " + what, name)


def damaged(kind: str, what: str, name: str) -> PalnetError:
    """'damaged ``kind`` file: ``what``', e.g. damaged("VTP", ...)."""
    return PalnetError("damaged {} file: {}".format(kind, what), name)


def plural(n: int, word: str) -> str:
    return "{} {}".format(n, word if n == 1 else "vertices" if word == "vertex" else word + "s")


def show(token: bytes, limit: int = 40) -> str:
    """A token of a file as it can be quoted in a one-line message."""
    text = token[:limit].decode("ascii", "replace")
    return repr(text + ("..." if len(token) > limit else ""))


def size_text(n: int) -> str:
    return "{}-byte".format(n) if n < 10000 else "{:.0f} kB".format(n / 1e3) if n < 10 ** 7 else \
        "{:.0f} MB".format(n / 1e6)


# ---------------------------------------------------------------- numbers in text

def numbers(text: bytes, dtype) -> Optional[np.ndarray]:
    """The whitespace-separated numbers in ``text`` (numpy's parser: the same values as Python's),
    or None where a word is not a number of that type."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # older numpy warns and stops at a bad word; newer raises
        try:
            return np.fromstring(text, dtype=dtype, sep=" ")
        except ValueError:
            return None


def parses(convert, word: bytes) -> bool:
    try:
        convert(word)
        return True
    except (ValueError, OverflowError):
        return False


def word_starts(text: np.ndarray) -> np.ndarray:
    """Where words start in ``text`` (bytes as uint8), words being runs of bytes above 32."""
    word = text > 32
    word[1:] &= text[:-1] <= 32
    return word


class Lines:
    """The lines of a text file from an offset, read a chunk at a time, with line numbers."""

    def __init__(self, f, name: str, first_line: int):
        self.f, self.name, self.number = f, name, first_line  # number: of the next line handed out
        self.lines, self.i, self.rest, self.eof = [], 0, b"", False

    def take(self, n: int) -> Tuple[int, List[bytes]]:
        """(number of the first line, up to ``n`` lines); fewer only at the end of the file."""
        while len(self.lines) - self.i < n and not self.eof:
            chunk = self.f.read(CHUNK)
            parts = (self.rest + chunk).split(b"\n")
            if chunk:
                self.rest = parts.pop()
                if len(self.rest) > MAX_LINE:
                    raise PalnetError("line {} is longer than {} bytes: not a text mesh file".format(
                        self.number + len(self.lines) - self.i + len(parts), MAX_LINE), self.name)
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


# ---------------------------------------------------------------- what a mesh's numbers must be

def check_vertices(vertices: np.ndarray, source: Optional[str]) -> None:
    if len(vertices) == 0:
        raise PalnetError("the mesh contains no points", source)
    if not np.isfinite(vertices).all():
        raise PalnetError("the mesh has NaN or infinite vertex coordinates", source)


def check_face_ids(ids: np.ndarray, n_points: int, source: Optional[str]) -> None:
    if not ids.size:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0:
        raise PalnetError("a face refers to vertex index {}, which is negative".format(low), source)
    if high >= n_points:
        raise PalnetError("a face refers to vertex {} but the mesh has only {} vertices".format(
            high + 1, n_points), source)
