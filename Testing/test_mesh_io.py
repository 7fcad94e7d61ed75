"""palnet.mesh_io: meshes and landmark files round-trip, and bad input gives one clear line."""
import json
import os

import numpy as np
import pytest

from palnet.errors import PalnetError
from palnet.mesh_io import (LANDMARK_FORMATS, MESH_EXTENSIONS, check_labels, describe, find_landmark_files,
                       find_scan_pairs, mesh_to_polydata, polydata_to_mesh, read_landmarks, read_mesh,
                       read_triangle_ply, scan_id_for, split_description, write_landmarks, write_mesh)
from palnet.datatypes import Landmarks, Mesh


def assert_one_line_error(excinfo, path):
    text = str(excinfo.value)
    assert "\n" not in text
    assert os.path.basename(str(path)) in text
    return text


@pytest.fixture
def landmarks():
    rng = np.random.default_rng(7)
    points = rng.uniform(-150.0, 150.0, size=(5, 3)) + rng.uniform(0, 1e-3, size=(5, 3))
    labels = ["n", "prn", "sn, soft", 'ls "upper"', "pg"]
    descriptions = ["Soft tissue nasion", "Pronasale", "Subnasale, at the septum", "Labrale superius", ""]
    confidence = np.array([0.87, 0.5, 0.123, 1.0, 0.0])
    return Landmarks(labels, points, confidence, descriptions)


# ---------------------------------------------------------------- meshes

@pytest.mark.parametrize("ext", MESH_EXTENSIONS)
def test_mesh_round_trip(tmp_path, bumpy_mesh, ext):
    path = tmp_path / ("scan" + ext)
    write_mesh(bumpy_mesh, path)
    back = read_mesh(path)
    assert back.vertices.dtype == np.float64 and back.triangles.dtype == np.int64
    assert back.source == str(path)
    tol = 1e-4 if ext in (".ply", ".stl") else 1e-9  # PLY and STL store float32
    if ext == ".stl":  # a triangle soup: the reader merges corners, same surface
        np.testing.assert_allclose(back.vertices[back.triangles], bumpy_mesh.vertices[bumpy_mesh.triangles],
                                   atol=tol)
    else:
        np.testing.assert_allclose(back.vertices, bumpy_mesh.vertices, atol=tol)
        np.testing.assert_array_equal(back.triangles, bumpy_mesh.triangles)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_mesh_units_are_kept(tmp_path, bumpy_mesh):
    write_mesh(bumpy_mesh, tmp_path / "a.vtp")
    assert read_mesh(tmp_path / "a.vtp", units="cm").units == "cm"
    with pytest.raises(PalnetError):
        read_mesh(tmp_path / "a.vtp", units="inch")


PLY_HEADER = "ply\nformat {}\nelement vertex 4\nproperty float x\nproperty float y\nproperty float z\n"
PLY_POINTS = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [10, 10, 5]], np.float32)


def test_ply_ascii_with_quads_is_triangulated(tmp_path):
    path = tmp_path / "quad.ply"
    body = "\n".join(" ".join(str(v) for v in p) for p in PLY_POINTS)
    path.write_text(PLY_HEADER.format("ascii 1.0") + "element face 1\nproperty list uchar int vertex_indices\n"
                    "end_header\n" + body + "\n4 0 1 3 2\n")
    mesh = read_mesh(path)
    np.testing.assert_array_equal(mesh.vertices, PLY_POINTS)
    assert mesh.n_triangles == 2 and set(mesh.triangles.ravel()) == {0, 1, 2, 3}


def test_ply_binary_little_endian(tmp_path):
    path = tmp_path / "bin.ply"
    faces = np.array([[3, 0, 1, 2], [3, 1, 3, 2]], np.int32)
    header = PLY_HEADER.format("binary_little_endian 1.0") + \
        "element face 2\nproperty list int int vertex_indices\nend_header\n"
    path.write_bytes(header.encode() + PLY_POINTS.astype("<f4").tobytes() + faces.astype("<i4").tobytes())
    mesh = read_mesh(path)
    np.testing.assert_array_equal(mesh.vertices, PLY_POINTS)
    np.testing.assert_array_equal(mesh.triangles, faces[:, 1:])


def test_ply_point_cloud(tmp_path):
    path = tmp_path / "cloud.ply"
    path.write_text(PLY_HEADER.format("ascii 1.0") + "end_header\n" +
                    "\n".join(" ".join(str(v) for v in p) for p in PLY_POINTS) + "\n")
    mesh = read_mesh(path)
    assert mesh.n_vertices == 4 and mesh.n_triangles == 0
    write_mesh(mesh, tmp_path / "cloud2.ply")
    np.testing.assert_array_equal(read_mesh(tmp_path / "cloud2.ply").vertices, PLY_POINTS)


def test_obj_keeps_vertex_order_and_drops_lines(tmp_path):
    path = tmp_path / "a.obj"
    path.write_text("# test\nv 5 5 5\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 2 3 4\nf 1 2 3\nl 1 2\n")
    mesh = read_mesh(path)
    np.testing.assert_array_equal(mesh.vertices, [[5, 5, 5], [0, 0, 0], [1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(mesh.triangles, [[1, 2, 3], [0, 1, 2]])


def test_textured_obj_stays_connected(tmp_path):
    # vtkOBJReader makes one point per face corner when there are texture coordinates.
    path = tmp_path / "tex.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nvt 1 1\nvt .5 .5\n"
                    "f 1/1 2/2 3/3\nf 2/5 4/4 3/3\n")
    mesh = read_mesh(path)
    np.testing.assert_array_equal(mesh.vertices, [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    np.testing.assert_array_equal(mesh.triangles, [[0, 1, 2], [1, 3, 2]])


def test_polydata_conversion_round_trip(bumpy_mesh):
    back = polydata_to_mesh(mesh_to_polydata(bumpy_mesh))
    np.testing.assert_array_equal(back.vertices, bumpy_mesh.vertices)
    np.testing.assert_array_equal(back.triangles, bumpy_mesh.triangles)
    empty = Mesh(bumpy_mesh.vertices)
    assert polydata_to_mesh(mesh_to_polydata(empty)).n_triangles == 0


def test_write_mesh_replaces_existing_file(tmp_path, bumpy_mesh):
    path = tmp_path / "scan.ply"
    write_mesh(Mesh(PLY_POINTS, [[0, 1, 2]]), path)
    write_mesh(bumpy_mesh, path)
    assert read_mesh(path).n_vertices == bumpy_mesh.n_vertices
    assert [p.name for p in tmp_path.iterdir()] == ["scan.ply"]


def _binary_ply(order, vertex_props, vertices, faces=None, count="uchar", index="int", extra=""):
    """A binary PLY: ``vertex_props`` [(type, name)] filled from ``vertices`` columns, then
    faces (one vertex list each), then ``extra`` header text for elements with no data."""
    types = {"float": "f4", "double": "f8", "uchar": "u1", "int": "i4", "uint": "u4", "short": "i2"}
    lines = ["ply", "format binary_{}_endian 1.0".format(order), "element vertex {}".format(len(vertices))]
    lines += ["property {} {}".format(t, n) for t, n in vertex_props]
    end = "<" if order == "little" else ">"
    rec = np.zeros(len(vertices), [(n, end + types[t]) for t, n in vertex_props])
    for k, (_, n) in enumerate(vertex_props):
        rec[n] = vertices[:, k]
    body = rec.tobytes()
    if faces is not None:
        lines += ["element face {}".format(len(faces)), "property list {} {} vertex_indices".format(count, index)]
        for f in faces:
            body += np.array([len(f)], end + types[count]).tobytes() + np.array(f, end + types[index]).tobytes()
    return ("\n".join(lines) + "\n" + extra + "end_header\n").encode() + body


def _read_with_vtk(path):
    from vtkmodules.vtkIOPLY import vtkPLYReader
    reader = vtkPLYReader()
    reader.SetFileName(str(path))
    reader.Update()
    return polydata_to_mesh(reader.GetOutput(), source=str(path))


XYZ = [("float", "x"), ("float", "y"), ("float", "z")]
PLY_LAYOUTS = {
    "little_float": ("little", XYZ, {}),
    "big_float": ("big", XYZ, {}),
    "double": ("little", [("double", "x"), ("double", "y"), ("double", "z")], {}),
    "normals_and_colours": ("little", XYZ + [("float", "nx"), ("float", "ny"), ("float", "nz"), ("uchar", "red"),
                                            ("uchar", "green"), ("uchar", "blue")], {}),
    "z_first_and_uint_indices": ("big", [("float", "z"), ("short", "flag"), ("float", "x"), ("float", "y")],
                                 {"index": "uint"}),
    "int_counts": ("little", XYZ, {"count": "int"}),
    "quads": ("little", XYZ, {"quads": True}),  # read by VTK: its triangulation is the reference
    "edges_after_faces": ("little", XYZ, {"extra": "element edge 0\nproperty int vertex1\nproperty int vertex2\n"}),
    "point_cloud": ("little", XYZ, {"cloud": True}),
}


@pytest.mark.parametrize("layout", sorted(PLY_LAYOUTS))
def test_binary_ply_read_directly_matches_vtk(tmp_path, layout):
    order, props, opt = PLY_LAYOUTS[layout]
    rng = np.random.default_rng(3)
    xyz = rng.normal(0, 50, (40, 3)) + 1e-5  # not exact in float32: rounding must match VTK's
    columns = np.zeros((40, len(props)))
    for k, (_, name) in enumerate(props):
        columns[:, k] = xyz[:, "xyz".index(name)] if name in "xyz" else rng.integers(0, 200, 40)
    faces = None if opt.get("cloud") else [list(rng.choice(40, 4 if opt.get("quads") else 3, replace=False))
                                           for _ in range(30)]
    path = tmp_path / "scan.ply"
    path.write_bytes(_binary_ply(order, props, columns, faces, opt.get("count", "uchar"), opt.get("index", "int"),
                                 opt.get("extra", "")))
    mesh, reference = read_mesh(path), _read_with_vtk(path)
    np.testing.assert_array_equal(mesh.vertices, reference.vertices)
    np.testing.assert_array_equal(mesh.triangles, reference.triangles)
    assert mesh.vertices.dtype == np.float64 and mesh.triangles.dtype == np.int64
    assert (read_triangle_ply(str(path)) is None) == bool(opt.get("quads"))


@pytest.mark.parametrize("problem, message", [
    ("index", "refers to vertex 10 but the mesh has only 4"),
    ("nan", "NaN or infinite"),
    ("none", "no points"),
])
def test_bad_binary_ply_gives_one_line(tmp_path, problem, message):
    v = PLY_POINTS.astype(np.float64)
    faces = [[0, 1, 9 if problem == "index" else 2]]
    if problem == "nan":
        v[1, 1] = np.nan
    if problem == "none":
        v, faces = v[:0], None
    path = tmp_path / "bad.ply"
    path.write_bytes(_binary_ply("little", XYZ, v, faces))
    with pytest.raises(PalnetError, match=message) as excinfo:
        read_mesh(path)
    assert_one_line_error(excinfo, path)


BAD_MESHES = {
    "garbage.ply": b"hello, I am not a mesh\n",
    "garbage.stl": b"garbage garbage\n",
    "garbage.vtp": b"<xml unclosed\n",
    "garbage.vtk": b"garbage\n",
    "empty.obj": b"# nothing here\n",
    "empty.ply": (PLY_HEADER.replace("vertex 4", "vertex 0").format("ascii 1.0") + "end_header\n").encode(),
    "nan.ply": (PLY_HEADER.format("ascii 1.0") + "end_header\n0 0 0\n1 nan 0\n0 1 0\n1 1 1\n").encode(),
    "inf.obj": b"v 0 0 0\nv inf 0 0\nv 0 1 0\nf 1 2 3\n",
    "index.ply": (PLY_HEADER.format("ascii 1.0") + "element face 1\nproperty list uchar int vertex_indices\n"
                  "end_header\n0 0 0\n1 0 0\n0 1 0\n1 1 1\n3 0 1 9\n").encode(),
    "index.obj": b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3 7\n",
    "scan.xyz": b"0 0 0\n",
    "noext": b"0 0 0\n",
}


@pytest.mark.parametrize("name", sorted(BAD_MESHES))
def test_bad_mesh_gives_one_line(tmp_path, capfd, name):
    path = tmp_path / name
    path.write_bytes(BAD_MESHES[name])
    with pytest.raises(PalnetError) as excinfo:
        read_mesh(path)
    assert_one_line_error(excinfo, path)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # VTK's own messages stay quiet


def test_missing_mesh_and_folder(tmp_path):
    with pytest.raises(PalnetError, match="not found") as excinfo:
        read_mesh(tmp_path / "missing.ply")
    assert_one_line_error(excinfo, "missing.ply")
    (tmp_path / "dir.ply").mkdir()
    with pytest.raises(PalnetError, match="folder"):
        read_mesh(tmp_path / "dir.ply")


def test_write_mesh_errors(tmp_path, bumpy_mesh):
    with pytest.raises(PalnetError) as excinfo:
        write_mesh(bumpy_mesh, tmp_path / "nope" / "scan.ply")
    assert_one_line_error(excinfo, "scan.ply")
    with pytest.raises(PalnetError):
        write_mesh(bumpy_mesh, tmp_path / "scan.off")
    with pytest.raises(PalnetError):
        write_mesh(Mesh(bumpy_mesh.vertices), tmp_path / "cloud.stl")


# ---------------------------------------------------------------- landmarks

@pytest.mark.parametrize("fmt", LANDMARK_FORMATS)
def test_landmark_round_trip(tmp_path, landmarks, fmt):
    path = tmp_path / ("S01." + fmt)
    write_landmarks(landmarks, path)
    back = read_landmarks(path)
    assert back.labels == landmarks.labels
    np.testing.assert_allclose(back.points, landmarks.points, rtol=0, atol=1e-6)
    if fmt == "txt":
        assert back.confidence is None and back.descriptions is None
    else:
        assert back.descriptions == landmarks.descriptions
        np.testing.assert_allclose(back.confidence, landmarks.confidence, atol=1e-3)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("fmt", LANDMARK_FORMATS)
def test_landmark_round_trip_without_extras(tmp_path, fmt):
    lm = Landmarks(["a", "b"], [[1.0 / 3, -2e-7, 123456.123456789], [0, 0, 0]])
    written = tmp_path / "x.dat"
    write_landmarks(lm, written, fmt=fmt)  # fmt wins over the extension
    path = written.rename(tmp_path / ("x." + fmt))
    back = read_landmarks(path)
    np.testing.assert_array_equal(back.points, lm.points)  # exact: shortest round-trip text
    assert back.confidence is None and back.descriptions is None


def test_mrk_json_matches_slicer_schema(tmp_path, landmarks):
    path = tmp_path / "p.mrk.json"
    write_landmarks(landmarks, path)
    doc = json.loads(path.read_text())
    assert "markups-schema-v1.0.3.json" in doc["@schema"]
    markup = doc["markups"][0]
    assert markup["type"] == "Fiducial" and markup["coordinateSystem"] == "LPS"
    assert markup["coordinateUnits"] == "mm" and "display" in markup
    cp = markup["controlPoints"][0]
    for key in ("id", "label", "description", "associatedNodeID", "position", "orientation", "selected",
                "locked", "visibility", "positionStatus"):
        assert key in cp
    assert cp["positionStatus"] == "defined"
    assert cp["description"] == "Soft tissue nasion; confidence 0.87"


def test_describe_and_split():
    assert describe("Pronasale", 0.87) == "Pronasale; confidence 0.87"
    assert describe("Pronasale") == "Pronasale"
    assert describe("", 0.5) == "confidence 0.5"
    assert describe("x; confidence 0.2", 0.9) == "x; confidence 0.2"  # already has one
    assert split_description("Pronasale; confidence 0.87") == ("Pronasale", 0.87)
    assert split_description("Pronasale") == ("Pronasale", None)
    assert split_description("confidence: 1") == ("", 1.0)


def _mrk(system, points, status=None):
    cps = [{"label": "L{}".format(i), "position": p, "positionStatus": (status or {}).get(i, "defined")}
           for i, p in enumerate(points)]
    return json.dumps({"@schema": "x", "markups": [{"type": "Fiducial", "coordinateSystem": system,
                                                     "controlPoints": cps}]})


def test_ras_files_convert_to_lps(tmp_path):
    (tmp_path / "ras.mrk.json").write_text(_mrk("RAS", [[1, 2, 3], [-4, 5, -6]]))
    np.testing.assert_array_equal(read_landmarks(tmp_path / "ras.mrk.json").points, [[-1, -2, 3], [4, -5, -6]])
    (tmp_path / "lps.mrk.json").write_text(_mrk("LPS", [[1, 2, 3]]))
    np.testing.assert_array_equal(read_landmarks(tmp_path / "lps.mrk.json").points, [[1, 2, 3]])
    cols = "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
    row = "vtkMRMLMarkupsFiducialNode_0,1,2,3,0,0,0,1,1,1,0,A,,vtkMRMLModelNode4,2,0\n"
    for header, expected in (("RAS", [-1, -2, 3]), ("0", [-1, -2, 3]), ("LPS", [1, 2, 3]), ("1", [1, 2, 3])):
        path = tmp_path / "f{}.fcsv".format(header)
        path.write_text("# Markups fiducial file version = 4.11\n# CoordinateSystem = {}\n".format(header) + cols + row)
        lm = read_landmarks(path)
        assert lm.labels == ["A"]
        np.testing.assert_array_equal(lm.points, [expected])
    path = tmp_path / "noheader.fcsv"  # Slicer assumes LPS
    path.write_text("# Markups fiducial file version = 4.11\n" + cols + row)
    np.testing.assert_array_equal(read_landmarks(path).points, [[1, 2, 3]])


def test_undefined_control_points_are_skipped(tmp_path):
    path = tmp_path / "u.mrk.json"
    path.write_text(_mrk("LPS", [[1, 2, 3], [0, 0, 0], [4, 5, 6]], {1: "undefined"}))
    lm = read_landmarks(path)
    assert lm.labels == ["L0", "L2"]
    np.testing.assert_array_equal(lm.points, [[1, 2, 3], [4, 5, 6]])


def test_txt_reader_skips_header_and_accepts_spaces_in_names(tmp_path):
    path = tmp_path / "ref.txt"
    path.write_text("landmark names\nSoft tissue nasion\t(1.5, -2, 3e1)\npg\t( 4, 5, 6 )\n\n")
    lm = read_landmarks(path)
    assert lm.labels == ["Soft tissue nasion", "pg"]
    np.testing.assert_array_equal(lm.points, [[1.5, -2, 30], [4, 5, 6]])


def test_csv_reader_accepts_any_column_order(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("z,y,x,name\n3,2,1,A\n6,5,4,B\n")
    lm = read_landmarks(path)
    assert lm.labels == ["A", "B"]
    np.testing.assert_array_equal(lm.points, [[1, 2, 3], [4, 5, 6]])


FCSV_HEAD = ("# Markups fiducial file version = 4.11\n# CoordinateSystem = LPS\n"
             "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n")
BAD_LANDMARKS = {
    "broken.mrk.json": ('{"markups": [', "not valid JSON"),
    "nomarkups.mrk.json": ('{"a": 1}', "markups"),
    "empty.mrk.json": (_mrk("LPS", []), "no landmarks"),
    "allundefined.mrk.json": (_mrk("LPS", [[1, 2, 3]], {0: "undefined"}), "no landmarks"),
    "short.mrk.json": (_mrk("LPS", [[1, 2]]), "control point 1"),
    "text.mrk.json": (_mrk("LPS", [[1, "a", 3]]), "not a number"),
    "nan.mrk.json": (_mrk("LPS", [[1, 2, 3], [1, float("nan"), 3]]), "NaN"),
    "dup.mrk.json": (json.dumps({"markups": [{"type": "Fiducial", "controlPoints": [
        {"label": "A", "position": [1, 2, 3]}, {"label": "A", "position": [1, 2, 4]}]}]}), "duplicate"),
    "weird.mrk.json": (_mrk("XYZ", [[1, 2, 3]]), "coordinateSystem"),
    "short.fcsv": (FCSV_HEAD + "1,1,2,3,0,0,0,1,1,1,0,A,,\n2,4,5\n", "line 5"),
    "text.fcsv": (FCSV_HEAD + "1,1,two,3,0,0,0,1,1,1,0,A,,\n", "line 4"),
    "empty.fcsv": (FCSV_HEAD, "no landmarks"),
    "dup.fcsv": (FCSV_HEAD + "1,1,2,3,0,0,0,1,1,1,0,A,,\n2,1,2,3,0,0,0,1,1,1,0,A,,\n", "duplicate"),
    "nan.fcsv": (FCSV_HEAD + "1,1,nan,3,0,0,0,1,1,1,0,A,,\n", "NaN"),
    "cs.fcsv": ("# CoordinateSystem = 7\n" + FCSV_HEAD, "CoordinateSystem"),
    "short.csv": ("label,x,y,z\nA,1,2,3\nB,1,2\n", "line 3"),
    "text.csv": ("label,x,y,z\nA,1,2,zz\n", "line 2"),
    "empty.csv": ("label,x,y,z\n", "no landmarks"),
    "dup.csv": ("label,x,y,z\nA,1,2,3\nA,1,2,3\n", "duplicate"),
    "inf.csv": ("label,x,y,z\nA,1,2,inf\n", "NaN"),
    "short.txt": ("landmark names\nA\t(1, 2, 3)\nB\n", "line 3"),
    "text.txt": ("A\t(1, 2, x)\n", "line 1"),
    "empty.txt": ("landmark names\n", "no landmarks"),
    "dup.txt": ("A\t(1, 2, 3)\nA\t(1, 2, 3)\n", "duplicate"),
    "binary.csv": (b"\xff\xfe\x00\x81garbage", "text"),
    "points.xyz": ("A 1 2 3\n", "unknown landmark file type"),
}


@pytest.mark.parametrize("name", sorted(BAD_LANDMARKS))
def test_bad_landmark_file_gives_one_line(tmp_path, name):
    content, expected = BAD_LANDMARKS[name]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(PalnetError) as excinfo:
        read_landmarks(path)
    assert expected in assert_one_line_error(excinfo, path)


def test_missing_landmark_file(tmp_path):
    with pytest.raises(PalnetError, match="not found") as excinfo:
        read_landmarks(tmp_path / "gone.fcsv")
    assert_one_line_error(excinfo, "gone.fcsv")


def test_write_landmarks_errors(tmp_path, landmarks):
    with pytest.raises(PalnetError):
        write_landmarks(landmarks, tmp_path / "a.xyz")
    with pytest.raises(PalnetError):
        write_landmarks(landmarks, tmp_path / "a.csv", fmt="xml")
    with pytest.raises(PalnetError):
        write_landmarks(landmarks, tmp_path / "missing" / "a.csv")
    bad = Landmarks(["a"], [[np.nan, 0, 0]])
    with pytest.raises(PalnetError) as excinfo:
        write_landmarks(bad, tmp_path / "bad.mrk.json")
    assert_one_line_error(excinfo, "bad.mrk.json")
    assert not list(tmp_path.iterdir())


def test_failed_write_keeps_old_file(tmp_path, landmarks):
    path = tmp_path / "keep.csv"
    write_landmarks(landmarks, path)
    before = path.read_text()
    with pytest.raises(PalnetError):
        write_landmarks(Landmarks(["a"], [[np.inf, 0, 0]]), path)
    assert path.read_text() == before


def test_check_labels(landmarks):
    expected = list(reversed(landmarks.labels))
    ordered = check_labels(landmarks, expected, "gt.csv")
    assert ordered.labels == expected
    np.testing.assert_array_equal(ordered.points, landmarks.points[::-1])
    with pytest.raises(PalnetError) as excinfo:
        check_labels(landmarks, expected[1:] + ["go"], "gt.csv")
    text = assert_one_line_error(excinfo, "gt.csv")
    assert "missing landmark(s) go" in text and "unknown landmark(s) pg" in text
    assert check_labels(landmarks, expected[1:], "gt.csv", allow_extra=True).labels == expected[1:]


# ---------------------------------------------------------------- finding files

def test_scan_id_for():
    assert scan_id_for("data/S01/landmarks.mrk.json") == "S01"
    assert scan_id_for("data/S01/lm.fcsv") == "S01"
    assert scan_id_for("data/S01/scan.ply") == "S01"
    assert scan_id_for("out/S01.mrk.json") == "S01"
    assert scan_id_for("out/S01.fcsv") == "S01"
    assert scan_id_for("out/face.v2.ply") == "face.v2"


def test_find_files_and_pairs(tmp_path, landmarks):
    mesh = Mesh(PLY_POINTS, [[0, 1, 2]])
    for sid in ("S02", "S01"):
        (tmp_path / "nested" / sid).mkdir(parents=True)
        write_mesh(mesh, tmp_path / "nested" / sid / "scan.ply")
        write_landmarks(landmarks, tmp_path / "nested" / sid / "landmarks.mrk.json")
    (tmp_path / "nested" / "S03").mkdir()
    write_mesh(mesh, tmp_path / "nested" / "S03" / "scan.obj")  # no landmarks: not a pair
    flat = tmp_path / "flat"
    flat.mkdir()
    for sid in ("B", "A"):
        write_mesh(mesh, flat / (sid + ".ply"))
        write_landmarks(landmarks, flat / (sid + ".mrk.json"))
        write_landmarks(landmarks, flat / (sid + ".csv"))  # .mrk.json is preferred
    write_mesh(mesh, flat / "C.stl")
    (flat / "protocol.json").write_text("{}")  # not a landmark file when searching

    pairs = find_scan_pairs(tmp_path / "nested")
    assert [(i, m.name, lm.name) for i, m, lm in pairs] == [
        ("S01", "scan.ply", "landmarks.mrk.json"), ("S02", "scan.ply", "landmarks.mrk.json")]
    pairs = find_scan_pairs(flat)
    assert [(i, m.name, lm.name) for i, m, lm in pairs] == [("A", "A.ply", "A.mrk.json"), ("B", "B.ply", "B.mrk.json")]

    assert [p.name for p in find_landmark_files(flat)] == ["A.csv", "A.mrk.json", "B.csv", "B.mrk.json"]
    assert [p.name for p in find_landmark_files(flat, formats=("mrk.json",))] == ["A.mrk.json", "B.mrk.json"]
    assert len(find_landmark_files(tmp_path)) == 6
    with pytest.raises(PalnetError):
        find_scan_pairs(tmp_path / "nothing")


@pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="folder links need a POSIX file system")
def test_scan_pairs_follow_linked_folders_once(tmp_path, landmarks):
    """A data set put together from links to scan folders (train, calibration, a subset) is read
    like one of real folders: each linked scan once, and a link back up the tree is no loop."""
    mesh = Mesh(PLY_POINTS, [[0, 1, 2]])
    for sid in ("S01", "S02"):
        (tmp_path / "store" / sid).mkdir(parents=True)
        write_mesh(mesh, tmp_path / "store" / sid / "scan.ply")
        write_landmarks(landmarks, tmp_path / "store" / sid / "landmarks.mrk.json")
    subset = tmp_path / "subset"
    subset.mkdir()
    os.symlink(tmp_path / "store" / "S02", subset / "S02")
    os.symlink(tmp_path / "store" / "S01", subset / "p_S01")  # a renamed link: the id is its folder's
    os.symlink(subset, subset / "S02" / "loop")  # back up the tree
    pairs = find_scan_pairs(subset)
    assert [(i, m.parent.name) for i, m, _ in pairs] == [("S02", "S02"), ("p_S01", "p_S01")]
