"""Reading and writing meshes and landmark files, and finding them in folders.

Meshes are read as VTK's readers read them and written by VTK's writers (the
same ones 3D Slicer uses), so a file palnet reads is the surface Slicer shows,
in the same frame: files without a coordinate-system header are LPS. PLY and
legacy .vtk files are read by palnet into the same numbers VTK's readers give (VTK
takes a fifth of a second just to import, and its readers of these formats
crash on damaged files); OBJ, STL and VTP files are checked, then read by
VTK. Each format's reader is in :mod:`palnet.meshfiles`, in a module named after it.
Landmark files live in :mod:`palnet.landmark_io` and are re-exported here.
"""
import os
import stat
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import PalnetError
from .landmark_io import (LANDMARK_FORMATS, PathLike, atomic_write, check_labels, describe,  # noqa: F401
                          landmark_format, landmark_stem, read_landmarks, split_description,
                          write_landmarks)
from .meshfiles.checks import size_text
from .meshfiles.obj import check_obj
from .meshfiles.ply import read_ply, read_triangle_ply  # noqa: F401
from .meshfiles.polydata import mesh_to_polydata, polydata_to_mesh, read_with_vtk, vtk_quiet  # noqa: F401
from .meshfiles.stl import check_stl, read_stl
from .meshfiles.vtk_legacy import read_legacy_vtk
from .meshfiles.vtp import check_vtp
from .datatypes import Mesh, unit_scale

MESH_EXTENSIONS = (".ply", ".obj", ".stl", ".vtk", ".vtp")
# File stems that name the content rather than the scan: the scan id is then the folder's name.
GENERIC_STEMS = frozenset({"landmarks", "landmark", "lm", "scan", "mesh"})


def mesh_extension(path: PathLike) -> str:
    """The lower-case mesh extension of ``path`` (one of MESH_EXTENSIONS), or a PalnetError."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in MESH_EXTENSIONS:
        raise PalnetError("unknown mesh file type {!r} (use {})".format(
            ext or "(none)", ", ".join(MESH_EXTENSIONS)), path)
    return ext


# ---------------------------------------------------------------- reading and writing meshes

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
            return read_ply(name, info.st_size, units)
        if ext == ".vtk":
            return read_legacy_vtk(name, units)
        if ext == ".obj":
            check_obj(name)
        elif ext == ".stl":
            facets = check_stl(name, info.st_size)
        else:
            check_vtp(name, info.st_size)
    except OSError as e:
        raise PalnetError("cannot read the file ({})".format(e.strerror or e), name) from None
    except MemoryError:
        raise PalnetError("not enough memory to read this {} file".format(size_text(info.st_size)), name) from None
    if ext == ".stl":
        return read_stl(name, units, facets)
    return read_with_vtk(name, ext, units)


_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip archive"),
          (b"II*\0", "a TIFF image"), (b"MM\0*", "a TIFF image"))


def _other_kind(head: bytes) -> Optional[str]:
    """What a file is when its first bytes say it is a common non-mesh file."""
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


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
        with vtk_quiet():
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
NOT_LANDMARK_FILES = frozenset(["palnet_summary.csv", "palnet_measurements.csv"])


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
    ``DIR/<id>.ply + DIR/<id>.mrk.json`` (mixed and nested folders work too). Linked folders are
    followed (a data set put together from links), each real folder once.
    """
    root = Path(directory)
    if not root.is_dir():
        raise PalnetError("folder not found", root)
    pairs = {}  # type: Dict[str, Tuple[Path, Path]]
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or a second link to one folder
            dirs[:] = []
            continue
        seen.add(real)
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
