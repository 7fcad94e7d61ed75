"""STL files, checked here before VTK's reader reads them: vtkSTLReader trusts a binary file's
triangle count, and reads a text file it fails to parse again as binary."""
import re
from typing import Optional

import numpy as np

from ..errors import PalnetError
from ..datatypes import Mesh
from .checks import CHUNK, cut_off, plural
from .polydata import read_with_vtk


def check_stl(name: str, size: int) -> Optional[int]:
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
                raise cut_off("no 'endsolid' at the end of the text STL", name)
            f.seek(0)
            facets, last = 0, b""
            for chunk in iter(lambda: f.read(CHUNK), b""):
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
        raise cut_off("the header announces {}, the file holds {}".format(
            plural(announced, "triangle"), whole), name)
    if announced not in (whole, 0):
        raise PalnetError("damaged binary STL: the header announces {}, the file holds {}".format(
            plural(announced, "triangle"), whole), name)
    return None


def read_stl(name: str, units: str, facets: Optional[int]) -> Mesh:
    """The Mesh of an STL file checked by :func:`check_stl` (``facets`` is what it returned), as
    VTK's reader gives it."""
    if facets is None:
        return read_with_vtk(name, ".stl", units)
    layout = "cannot read: a text STL that does not follow the solid / facet / outer loop / vertex layout"
    mesh = read_with_vtk(name, ".stl", units, layout)
    if mesh.n_vertices > 3 * facets:
        raise PalnetError(layout + " (VTK read it as binary)", name)
    return mesh
