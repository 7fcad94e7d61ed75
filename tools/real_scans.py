"""Fetch the public real scans the label-free checks run on, and make surfaces of them.

    python tools/real_scans.py DIR

Writes into DIR (nothing is kept in this repository):

- ``fran_cut.vtk``: a face-only laser scan cut in front of the ears (a polygonal mesh in
  metres, 2205 vertices), from the VTK example data as kept in the pyvista/vtk-data repository
  (Apache-2.0; VTK data copyright Ken Martin, Will Schroeder, Bill Lorensen, BSD-style terms).
- ``headsq_skin.ply``: the skin surface (iso-value 500, the largest connected piece) of the
  ``headsq`` CT of a real head from the same collection, 64 x 64 pixels of 3.2 mm in 93 slices
  1.5 mm apart: a real face of another modality, with the staircase of thick slices and a tube
  in front of the mouth.
- ``lee_perry_smith.ply``: "Infinite, 3D Head Scan" by Lee Perry-Smith (CC BY 3.0, based on a
  work at www.triplegangers.com), a head and shoulders with closed eyes, retopologised to 8838
  vertices, as the three.js examples kept it in 2011 (a JSON model in the alteredq/three.js
  repository). Its coordinates have no unit; it is written scaled by LPS_MM_PER_UNIT, which
  gives it an adult face's widths (about 140 mm between the zygions and 51 mm across the mouth
  as the shipped model places them).
- ``labelled/james/scan.obj`` and ``labelled/james/landmarks.mrk.json``: a real face scan with
  landmarks placed by people, ``james.obj`` of the menpo3d project's example data (BSD 3-clause,
  Imperial College London and others): a head captured by stereo photogrammetry, 6393 vertices
  with a median edge of 4.4 mm, in mm. Its 68 landmarks follow the iBUG 300-W scheme;
  the 13 of them that mark a landmark of ours (IBUG_TO_PALNET) are written with our names.

Then ``python tools/benchmark.py --consistency DIR --png DIR/png`` checks the model on them, and
``python tools/benchmark.py --data DIR/labelled --baselines`` measures it on the annotated one (the
landmarks the file does not name are not judged).
"""
import argparse
import sys
import urllib.request
from pathlib import Path

BASE = "https://raw.githubusercontent.com/pyvista/vtk-data/master/Data/"
LPS_URL = ("https://raw.githubusercontent.com/alteredq/three.js/5fa19e8460457bcde21516479fba379221d64303/"
           "examples/obj/leeperrysmith/LeePerrySmith.js")
LPS_MM_PER_UNIT = 50.0
MENPO3D = "https://raw.githubusercontent.com/menpo/menpo3d/9a19872484f2b529b2c22b6e46d3243f9d895904/menpo3d/data/"
# Our landmarks that an iBUG 300-W point marks, as (group, index in the group) of menpo's .ljson
# (groups chin, leye, reye, leyebrow, nose, reyebrow, mouth; "leye" is the eye on the image's left,
# the subject's right). The eye and mouth corners, the nose tip, the bottom of the columella, the
# peaks of the Cupid's bow (crista philtri at the vermilion), the vermilion midpoints; stomion is
# the midpoint of the two inner-lip midpoints. The jaw contour, the brows and the nasal bridge
# are another scheme's points and match none of ours.
IBUG_TO_PALNET = {
    "ex_R": (("leye", 0),), "en_R": (("leye", 3),), "en_L": (("reye", 0),), "ex_L": (("reye", 3),),
    "prn": (("nose", 3),), "sn": (("nose", 6),),
    "ch_R": (("mouth", 0),), "cph_R": (("mouth", 2),), "ls": (("mouth", 3),), "cph_L": (("mouth", 4),),
    "ch_L": (("mouth", 6),), "li": (("mouth", 9),), "sto": (("mouth", 14), ("mouth", 18)),
}
HEADSQ_SLICES = 93
HEADSQ_SIZE = (64, 64)
HEADSQ_SPACING = (3.2, 3.2, 1.5)  # mm
SKIN_ISO_VALUE = 500.0


def download(url: str, path: Path) -> Path:
    if not path.exists():
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return path


def skin_surface(prefix: str, slices: int, size=HEADSQ_SIZE, spacing=HEADSQ_SPACING, iso: float = SKIN_ISO_VALUE):
    """The largest connected iso-surface of 16-bit little-endian slices ``prefix.1`` ... ``prefix.N``
    (VTK's volume16 layout), as vtkPolyData in mm."""
    from vtkmodules.vtkFiltersCore import vtkFlyingEdges3D, vtkPolyDataConnectivityFilter
    from vtkmodules.vtkIOImage import vtkVolume16Reader
    reader = vtkVolume16Reader()
    reader.SetDataDimensions(*size)
    reader.SetImageRange(1, slices)
    reader.SetDataByteOrderToLittleEndian()
    reader.SetFilePrefix(prefix)
    reader.SetDataSpacing(*spacing)
    surface = vtkFlyingEdges3D()
    surface.SetInputConnection(reader.GetOutputPort())
    surface.SetValue(0, iso)
    largest = vtkPolyDataConnectivityFilter()
    largest.SetInputConnection(surface.GetOutputPort())
    largest.SetExtractionModeToLargestRegion()
    largest.Update()
    return largest.GetOutput()


def three_js_model(path: Path, mm_per_unit: float = LPS_MM_PER_UNIT):
    """Vertices (mm) and triangles of a three.js JSON model (format 2: ``var model = {...}``;
    each face a type bit mask, then 3 or 4 vertex indices, then what the mask announces)."""
    import json
    import numpy as np
    text = path.read_text(encoding="utf-8")
    model = json.loads(text[text.index("{"):text.rindex("}") + 1])
    vertices = np.asarray(model["vertices"], dtype=np.float64).reshape(-1, 3) * mm_per_unit
    faces, layers = model["faces"], len(model.get("uvs", [])) or 1
    triangles, i = [], 0
    while i < len(faces):
        kind = faces[i]
        n = 4 if kind & 1 else 3
        corners = faces[i + 1:i + 1 + n]
        i += 1 + n
        i += (kind & 2 > 0) + (kind & 4 > 0) * layers + (kind & 8 > 0) * n * layers
        i += (kind & 16 > 0) + (kind & 32 > 0) * n + (kind & 64 > 0) + (kind & 128 > 0) * n
        triangles.append(corners[:3])
        if n == 4:
            triangles.append([corners[0], corners[2], corners[3]])
    return vertices, np.asarray(triangles, dtype=np.int64)


def ljson_landmarks(path: Path):
    """Our landmarks from a menpo .ljson file of iBUG 300-W points (IBUG_TO_PALNET)."""
    import json
    import numpy as np
    from palnet.datatypes import Landmarks
    from palnet.errors import PalnetError
    try:
        group = json.loads(path.read_text(encoding="utf-8"))["groups"]["LJSON"]
        points = np.asarray(group["landmarks"]["points"], dtype=np.float64)
        masks = {g["label"]: list(g["mask"]) for g in group["labels"]}
        labels = list(IBUG_TO_PALNET)
        out = np.array([points[[masks[g][i] for g, i in IBUG_TO_PALNET[lab]]].mean(axis=0) for lab in labels])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise PalnetError("not a menpo landmark file with the iBUG 300-W groups ({})".format(exc), path)
    return Landmarks(labels, out, units="mm")


def fran_cut(out: Path) -> str:
    download(BASE + "fran_cut.vtk", out / "fran_cut.vtk")
    return "wrote {}".format(out / "fran_cut.vtk")


def headsq(out: Path) -> str:
    from vtkmodules.vtkIOPLY import vtkPLYWriter
    (out / "headsq").mkdir(parents=True, exist_ok=True)
    for i in range(1, HEADSQ_SLICES + 1):
        download(BASE + "headsq/quarter.{}".format(i), out / "headsq" / "quarter.{}".format(i))
    poly = skin_surface(str(out / "headsq" / "quarter"), HEADSQ_SLICES)
    writer = vtkPLYWriter()
    writer.SetInputData(poly)
    writer.SetFileName(str(out / "headsq_skin.ply"))
    writer.SetFileTypeToBinary()
    if not writer.Write():
        raise OSError("VTK could not write {}".format(out / "headsq_skin.ply"))
    return "wrote {} ({} vertices)".format(out / "headsq_skin.ply", poly.GetNumberOfPoints())


def lee_perry_smith(out: Path) -> str:
    from palnet.datatypes import Mesh
    from palnet.mesh_io import write_mesh
    (out / "lee_perry_smith").mkdir(parents=True, exist_ok=True)
    vertices, triangles = three_js_model(download(LPS_URL, out / "lee_perry_smith" / "LeePerrySmith.js"))
    write_mesh(Mesh(vertices, triangles, "mm"), out / "lee_perry_smith.ply")
    return "wrote {} ({} vertices)".format(out / "lee_perry_smith.ply", len(vertices))


def james(out: Path) -> str:
    from palnet.landmark_io import write_landmarks
    folder = out / "labelled" / "james"
    folder.mkdir(parents=True, exist_ok=True)
    download(MENPO3D + "james.obj", folder / "scan.obj")
    truth = ljson_landmarks(download(MENPO3D + "james.ljson", folder / "james.ljson"))
    write_landmarks(truth, folder / "landmarks.mrk.json")
    return "wrote {} and its {} annotated landmarks".format(folder / "scan.obj", len(truth.labels))


SCANS = {"fran_cut": fran_cut, "headsq": headsq, "lee_perry_smith": lee_perry_smith, "james": james}


def main(argv=None) -> int:
    """Fetch and make every scan; one that cannot be fetched (no network, a moved file) is named
    in one line and the others are still made. Exit status 1 when one is missing."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder for the scans")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name, make in SCANS.items():
        try:
            print(make(out))
        except Exception as exc:  # urllib's errors, a damaged download, VTK: the next scan still comes
            failed += 1
            print("{}: not made ({}: {})".format(name, type(exc).__name__, exc), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
