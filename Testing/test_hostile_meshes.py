"""Hostile mesh files: each one ends in a single-line PalnetError naming the file and the problem.

VTK's readers trust the counts and indices in a file, and several of these files crashed the
process (a segmentation fault or an abort), hung it or made it allocate gigabytes. So the
files are read in a child process, with its memory limited: a crash, a hang or an exception
other than PalnetError fails the case it happened in, not the whole test run.
"""
import os
import re
import struct
import zlib

import numpy as np
import pytest

from palnet.errors import PalnetError
from palnet.mesh_io import read_mesh, write_mesh
from palnet.datatypes import Mesh

from child_reads import read_in_children

OK = None  # the file reads


def _grid(n: int = 8) -> Mesh:
    g = np.mgrid[0:n, 0:n].reshape(2, -1).T.astype(float)
    i = np.arange(n * n).reshape(n, n)
    a, b, c, d = i[:-1, :-1].ravel(), i[1:, :-1].ravel(), i[:-1, 1:].ravel(), i[1:, 1:].ravel()
    return Mesh(np.c_[g * 10.0, np.sin(g[:, 0]) + np.cos(g[:, 1])], np.r_[np.c_[a, b, c], np.c_[b, d, c]])


GRID = _grid()
XYZ = "property float x\nproperty float y\nproperty float z\n"


def ply_binary(vertices=GRID.vertices, faces=GRID.triangles, count="uchar", index="int", order="<",
               vertex_count=None, face_count=None, extra_header=""):
    """A binary PLY written by hand, so that any count or type can be wrong."""
    codes = {"uchar": "u1", "char": "i1", "int": "i4", "uint": "u4", "short": "i2", "float": "f4"}
    header = "ply\nformat binary_{}_endian 1.0\nelement vertex {}\n{}element face {}\n" \
             "property list {} {} vertex_indices\n{}end_header\n".format(
                 "little" if order == "<" else "big", len(vertices) if vertex_count is None else vertex_count, XYZ,
                 len(faces) if face_count is None else face_count, count, index, extra_header)
    body = np.asarray(vertices, order + "f4").tobytes()
    for f in faces:
        body += np.array([len(f)], order + codes[count]).tobytes() + np.array(f, order + codes[index]).tobytes()
    return header.encode() + body


def ply_ascii(vertex_lines=None, face_lines=None, face_header="property list uchar int vertex_indices\n",
              vertex_header=XYZ, counts=None):
    vertex_lines = ["{} {} {}".format(*v) for v in GRID.vertices] if vertex_lines is None else vertex_lines
    face_lines = ["3 {} {} {}".format(*t) for t in GRID.triangles] if face_lines is None else face_lines
    nv, nf = counts or (len(vertex_lines), len(face_lines))
    return ("ply\nformat ascii 1.0\nelement vertex {}\n{}element face {}\n{}end_header\n".format(
        nv, vertex_header, nf, face_header) + "\n".join(vertex_lines + face_lines) + "\n").encode()


def first_face(data: bytes) -> int:
    """Offset of the first face record in a binary PLY of float x, y, z vertices."""
    return data.index(b"end_header\n") + 11 + 12 * len(GRID.vertices)


def patched(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new):]


def obj(faces="f 1 2 3\nf 2 4 3\n", extra=""):
    return ("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\n" + extra + faces).encode()


def stl_binary(n=2, announced=None, header=b"binary"):
    tri = np.zeros((n, 12), "<f4")
    tri[:, 3:] = [0, 0, 0, 1, 0, 0, 0, 1, 0]
    tri[:, 3::3] += np.arange(n)[:, None]
    body = b"".join(t.tobytes() + b"\0\0" for t in tri)
    return header.ljust(80, b" ") + struct.pack("<I", n if announced is None else announced) + body


STL_FACETS = b"solid x\n" + b"".join(
    "facet normal 0 0 1\nouter loop\nvertex {0} 0 0\nvertex {1} 0 0\nvertex {0} 1 0\nendloop\nendfacet\n".format(
        k, k + 1).encode() for k in range(20)) + b"endsolid x\n"


def _binary_sized(text: bytes) -> bytes:
    """A text STL padded (in its name) to a size VTK's fallback reads as binary triangles."""
    pad = (50 - (len(text) - 84) % 50) % 50
    return text.replace(b"solid x", b"solid x" + b"x" * pad, 1)


STL_ASCII = (b"solid x\nfacet normal 0 0 1\nouter loop\nvertex 0 0 0\nvertex 1 0 0\nvertex 0 1 0\nendloop\n"
             b"endfacet\nendsolid x\n")


def vtk_legacy(points="POINTS 4 float\n0 0 0 1 0 0 0 1 0 1 1 0\n", cells="POLYGONS 2 8\n3 0 1 2\n3 1 3 2\n",
               version="4.2", kind="ASCII", dataset="POLYDATA"):
    return "# vtk DataFile Version {}\ntitle\n{}\nDATASET {}\n{}{}".format(
        version, kind, dataset, points, cells).encode()


def vtk_binary(n_points=4, announced=None, cells=True):
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]][:n_points], ">f4").tobytes()
    data = "# vtk DataFile Version 4.2\ntitle\nBINARY\nDATASET POLYDATA\nPOINTS {} float\n".format(
        n_points if announced is None else announced).encode() + pts + b"\n"
    if cells:
        data += b"POLYGONS 2 8\n" + np.array([3, 0, 1, 2, 3, 1, 3, 2], ">i4").tobytes() + b"\n"
    return data


def vtp(piece, appended=b"", header="UInt32", compressor="", file_type="PolyData", before=""):
    text = '<?xml version="1.0"?>\n{}<VTKFile type="{}" version="1.0" byte_order="LittleEndian" header_type="{}"{}>' \
           '\n<PolyData>\n{}\n</PolyData>\n'.format(
               before, file_type, header, ' compressor="{}"'.format(compressor) if compressor else "", piece)
    if appended:
        return text.encode() + b'<AppendedData encoding="raw">\n_' + appended + b"\n</AppendedData>\n</VTKFile>\n"
    return (text + "</VTKFile>\n").encode()


def vtp_piece(n_points=3, n_polys=1, points='<DataArray type="Float32" NumberOfComponents="3" format="ascii">'
              "0 0 0 1 0 0 0 1 0</DataArray>", connectivity="0 1 2", offsets="3"):
    return ('<Piece NumberOfPoints="{}" NumberOfPolys="{}">\n<Points>{}</Points>\n<Polys>'
            '<DataArray type="Int64" Name="connectivity" format="ascii">{}</DataArray>'
            '<DataArray type="Int64" Name="offsets" format="ascii">{}</DataArray></Polys>\n</Piece>').format(
                n_points, n_polys, points, connectivity, offsets)


def zlib_points(n_points: int, block=32768) -> bytes:
    """A zlib-compressed appended Points array of zeros, as VTK writes one (UInt64 header)."""
    total = n_points * 12
    blocks, last = -(-total // block), total % block
    packed, packed_last = zlib.compress(bytes(block), 9), zlib.compress(bytes(last or block), 9)
    sizes = [len(packed)] * (blocks - 1) + [len(packed_last)]
    return struct.pack("<%dQ" % (3 + blocks), blocks, block, last, *sizes) + packed * (blocks - 1) + packed_last


def appended_points(n_points: int, header: bytes, data: bytes, compressor="vtkZLibDataCompressor"):
    piece = ('<Piece NumberOfPoints="{}" NumberOfPolys="0"><Points><DataArray type="Float32" '
             'NumberOfComponents="3" format="appended" offset="0"/></Points></Piece>').format(n_points)
    return vtp(piece, header + data, header="UInt64", compressor=compressor)


PNG = b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + bytes(range(256)) * 4
ZEROS = bytes(4096)
TEXT = b"This is a text file, not a mesh.\n" * 20


def cases():
    """case -> (file name, bytes (or 'folder'/'pipe'), a pattern the message must match, or OK)."""
    ply, ply_uint, ply_int = ply_binary(), ply_binary(index="uint"), ply_binary(count="int")
    mixed = ply_binary(faces=[[0, 1, 9], [1, 10, 9, 8], [2, 3, 11]])
    f0 = first_face(ply)
    c = {
        # PLY
        "ply_face_count_byte_255": ("a.ply", patched(ply, f0, b"\xff"),
                                    r"cut off, or a list length in it is wrong: the data ends in face 7 of 98"),
        "ply_vertex_count_negative": ("a.ply", ply.replace(b"element vertex 64", b"element vertex -1"),
                                      r"line 3 .*the count must be a whole number from 0"),
        "ply_vertex_count_beyond_file": ("a.ply", ply.replace(b"element vertex 64", b"element vertex 2000000000"),
                                         r"cut off: the data ends in vertex \d+ of 2000000000"),
        "ply_face_count_beyond_file": ("a.ply", ply.replace(b"element face 98", b"element face 2000000000"),
                                       r"cut off: 2000000000 face records need at least 2000000000 bytes"),
        "ply_count_beyond_int": ("a.ply", ply.replace(b"element face 98", b"element face 99999999999"),
                                 r"count must be a whole number from 0 to 2147483647"),
        "ply_uint_index_4e9": ("a.ply", patched(ply_uint, first_face(ply_uint) + 1, struct.pack("<I", 4000000000)),
                               r"refers to vertex 4000000001 but the mesh has only 64 vertices"),
        "ply_negative_index": ("a.ply", patched(ply, f0 + 1, struct.pack("<i", -5)),
                               r"refers to vertex index -5, which is negative"),
        "ply_index_past_end": ("a.ply", patched(ply, f0 + 1, struct.pack("<i", 64)),
                               r"refers to vertex 65 but the mesh has only 64 vertices"),
        "ply_negative_int_list_count": ("a.ply", patched(ply_int, first_face(ply_int), struct.pack("<i", -1)),
                                        r"face 1 has a list of -1 items"),
        "ply_cut_in_half": ("a.ply", ply[:len(ply) // 2], r"the file is cut off: the data ends in face 13 of 98"),
        "ply_cut_in_header": ("a.ply", ply[:40], r"cut off: the PLY header has no 'end_header'"),
        "ply_nothing_after_header": ("a.ply", ply[:ply.index(b"end_header\n") + 11], r"nothing after the PLY header"),
        "ply_float_list_count": ("a.ply", ply_ascii(face_header="property list float int vertex_indices\n"),
                                 r"a list's count must have an integer type"),
        "ply_int64_indices": ("a.ply", ply_ascii(face_header="property list uchar int64 vertex_indices\n"),
                              r"unknown type 'int64'"),
        "ply_float_indices": ("a.ply", ply_ascii(face_header="property list uchar float vertex_indices\n"),
                              r"vertex indices must have an integer type"),
        "ply_faces_without_indices": ("a.ply", ply_ascii(face_header="property uchar flag\n",
                                                         face_lines=["1"] * len(GRID.triangles)),
                                      r"'face' element has no 'vertex_indices' list"),
        "ply_x_is_a_list": ("a.ply", ply_ascii(vertex_header="property list uchar float x\nproperty float y\n"
                                                             "property float z\n"),
                            r"'x' must be a single value"),
        "ply_no_xyz": ("a.ply", ply_ascii(vertex_header="property float a\nproperty float b\nproperty float c\n"),
                       r"no 'vertex' element with x, y and z"),
        "ply_property_before_element": ("a.ply", b"ply\nformat ascii 1.0\nproperty float x\nelement vertex 1\n"
                                                 + XYZ.encode() + b"end_header\n0 0 0\n", r"after an element"),
        "ply_element_without_count": ("a.ply", b"ply\nformat ascii 1.0\nelement vertex\n" + XYZ.encode()
                                               + b"end_header\n", r"expected 'element NAME COUNT'"),
        "ply_blank_header_line": ("a.ply", ply.replace(b"property float z\n", b"property float z\n\n", 1),
                                  r"blank line"),
        "ply_unknown_format": ("a.ply", ply.replace(b"binary_little_endian", b"binary_middle_endian"),
                               r"expected 'format ascii 1.0'"),
        "ply_mixed_polygons_ok": ("a.ply", ply_binary(faces=[[0, 1, 9], [1, 10, 9, 8], [2, 3, 11]]), OK),
        "ply_mixed_polygons_bad_length": ("a.ply", patched(mixed, first_face(mixed) + 13, b"\x09"),
                                          r"cut off, or a list length in it is wrong: the data ends in face 2 of 3"),
        "ply_ascii_short_vertex_line": ("a.ply", ply_ascii(vertex_lines=["0 0 0"] * 63 + ["1 2"]),
                                        r"line 73: 2 values where this vertex record has 3"),
        "ply_ascii_long_face_line": ("a.ply", ply_ascii(face_lines=["3 0 1 2 9"] + ["3 0 1 2"] * 97),
                                     r"5 values where this face record has 4"),
        "ply_ascii_huge_list_length": ("a.ply", ply_ascii(face_lines=["2000000000 0 1 2"] + ["3 0 1 2"] * 97),
                                       r"4 values where this face record has 2000000001"),
        "ply_ascii_word_not_a_number": ("a.ply", ply_ascii(face_lines=["3 0 1 x"] + ["3 0 1 2"] * 97),
                                        r"vertex index 'x' is not a whole number"),
        "ply_ascii_float_not_a_number": ("a.ply", ply_ascii(vertex_lines=["0 0 zero"] + ["0 0 0"] * 63),
                                         r"the z value 'zero' is not a number"),
        "ply_ascii_cut_off": ("a.ply", ply_ascii(counts=(64, 200)), r"cut off: the data ends in face 99 of 200"),
        "ply_ascii_index_out_of_range": ("a.ply", ply_ascii(face_lines=["3 0 1 64"] + ["3 0 1 2"] * 97),
                                         r"refers to vertex 65 but the mesh has only 64"),
        "ply_nan": ("a.ply", ply_ascii(vertex_lines=["nan 0 0"] + ["0 0 0"] * 63), r"NaN or infinite"),
        "ply_faces_before_vertices_read": ("a.ply", b"ply\nformat ascii 1.0\nelement face 1\nproperty list uchar int "
                                                    b"vertex_indices\nelement vertex 3\n" + XYZ.encode()
                                                    + b"end_header\n3 0 1 2\n0 0 0\n1 0 0\n0 1 0\n", OK),
        "ply_textured_ok": ("a.ply", _textured_ply(), OK),
        "ply_textured_bad_index": ("a.ply", _textured_ply(index=7), r"refers to vertex 8 but the mesh has only 4"),
        "ply_textured_ascii_bad_word": ("a.ply", _textured_ply(ascii=True, texcoord="+0.5"),
                                        r"line \d+: '\+0.5' is not a float value VTK's reader can read"),
        "ply_all_zero_bytes": ("a.ply", ZEROS, r"cannot read: not a PLY file"),
        "ply_png": ("a.ply", PNG, r"cannot read: it is a PNG image, not a mesh file"),
        "ply_text": ("a.ply", TEXT, r"cannot read: not a PLY file"),
        # OBJ
        "obj_index_past_end": ("a.obj", obj("f 1 2 9\n"), r"line 5: a face refers to vertex 9 but the file has "
                                                          r"only 4 vertices"),
        "obj_index_zero": ("a.obj", obj("f 0 1 2\n"), r"vertex 0 \(OBJ numbers start at 1\)"),
        "obj_relative_index_before_start": ("a.obj", obj("f -1 -2 -5\n"),
                                            r"refers to vertex -5 but only 4 vertices come before it"),
        "obj_relative_index_ok": ("a.obj", obj("f -4 -3 -2\n"), OK),
        "obj_relative_counts_back_from_its_line": ("a.obj", b"v 0 0 0\nv 1 0 0\nv 0 1 0\nf -1 -2 -4\nv 1 1 0\n",
                                                   r"line 4: .*vertex -4 but only 3 vertices come before it"),
        "obj_face_of_two": ("a.obj", obj("f 1 2\n"), r"line 5: a face needs at least 3 vertices, this one has 2"),
        "obj_face_of_one": ("a.obj", obj("f 1\n"), r"needs at least 3 vertices, this one has 1"),
        "obj_face_of_none": ("a.obj", obj("f\n"), r"needs at least 3 vertices, this one has 0"),
        "obj_texture_past_end": ("a.obj", obj("f 1/1 2/1 3/9\n", extra="vt 0 0\n"),
                                 r"refers to texture coordinate 9 but the file has only 1 texture coordinate$"),
        "obj_normal_past_end": ("a.obj", obj("f 1//1 2//1 3//99999999\n", extra="vn 0 0 1\n"),
                                r"refers to normal 99999999 but the file has only 1 normal$"),
        "obj_texture_without_any": ("a.obj", obj("f 1/1 2/1 3/1\n"),
                                    r"refers to texture coordinate 1 but the file has only 0"),
        "obj_mixed_corners_bad": ("a.obj", obj("f 1/1/1 2 3//1\nf 1 2 77\n", extra="vt 0 0\nvn 0 0 1\n"),
                                  r"line 8: a face refers to vertex 77"),
        "obj_index_beyond_int64": ("a.obj", obj("f 1 2 99999999999999999999\n"),
                                   r"corner '99999999999999999999' holds a number far beyond"),
        "obj_bad_corner": ("a.obj", obj("f 1 2 x\n"), r"line 5: the face corner 'x' is not v, v/vt"),
        "obj_corner_with_three_slashes": ("a.obj", obj("f 1/1/1/1 2 3\n", extra="vt 0 0\nvn 0 0 1\n"),
                                          r"is not v, v/vt, v//vn or v/vt/vn"),
        "obj_nan": ("a.obj", b"v nan 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", r"NaN or infinite"),
        "obj_huge_number": ("a.obj", b"v 1e999 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n", r"cannot read|NaN or infinite"),
        "obj_continued_face_ok": ("a.obj", obj("f 1 2 \\\n 3\n"), OK),
        "obj_no_faces": ("a.obj", b"# nothing\n", r"no points"),
        "obj_binary": ("a.obj", PNG, r"cannot read: it is a PNG image, not a mesh file"),
        "obj_all_zero_bytes": ("a.obj", ZEROS, r"cannot read: not an OBJ file \(it holds binary data\)"),
        # STL
        "stl_announces_more_triangles": ("a.stl", stl_binary(2, announced=5),
                                         r"cut off: the header announces 5 triangles, the file holds 2"),
        "stl_announces_billions": ("a.stl", stl_binary(2, announced=4000000000),
                                   r"cut off: the header announces 4000000000 triangles"),
        "stl_announces_fewer_triangles": ("a.stl", stl_binary(3, announced=1),
                                          r"announces 1 triangle, the file holds 3"),
        "stl_announces_none_ok": ("a.stl", stl_binary(2, announced=0), OK),
        "stl_binary_header_starting_solid_ok": ("a.stl", stl_binary(2, header=b"solid but binary"), OK),
        "stl_partial_triangle": ("a.stl", stl_binary(2) + b"1234567", r"not a whole number of 50-byte triangles"),
        "stl_too_short": ("a.stl", stl_binary(1)[:40], r"cannot read: not an STL file \(too short or text"),
        "stl_text": ("a.stl", TEXT, r"cannot read: not an STL file"),
        "stl_ascii_garbage": ("a.stl", b"solid x\ngarbage garbage\n" * 10,
                              r"cannot read: not an STL file \(it starts with 'solid' but holds no facets\)"),
        "stl_ascii_cut_off": ("a.stl", STL_ASCII[:-20], r"cut off: no 'endsolid'"),
        "stl_ascii_nan": ("a.stl", STL_ASCII.replace(b"vertex 1 0 0", b"vertex nan 0 0"), r"NaN or infinite"),
        "stl_ascii_bad_vertex": ("a.stl", STL_ASCII.replace(b"vertex 1 0 0", b"vertex one 0 0"),
                                 r"cannot read: a text STL that does not follow"),
        "stl_ascii_bad_vertex_binary_size": ("a.stl", _binary_sized(STL_FACETS.replace(b"vertex 1 0 0",
                                                                                      b"vertex one 0 0", 1)),
                                             r"a text STL that does not follow .*\(VTK read it as binary\)"),
        "stl_ascii_two_solids_ok": ("a.stl", STL_ASCII + STL_ASCII.replace(b"solid x", b"solid y"), OK),
        "stl_ascii_binary_size_ok": ("a.stl", _binary_sized(STL_FACETS), OK),
        "stl_png": ("a.stl", PNG, r"cannot read: it is a PNG image, not a mesh file"),
        "stl_all_zero_bytes": ("a.stl", ZEROS, r"not a whole number of 50-byte triangles"),
        # legacy VTK
        "vtk_points_beyond_file": ("a.vtk", vtk_legacy(points="POINTS 2000000000 float\n0 0 0 1 0 0 0 1 0\n"),
                                   r"cut off: POINTS announces 6000000000 numbers"),
        "vtk_points_beyond_binary_file": ("a.vtk", vtk_binary(announced=2000000000),
                                          r"cut off: POINTS announces 24000000000 bytes of data"),
        "vtk_binary_cut_off": ("a.vtk", vtk_binary()[:-20], r"cut off"),
        "vtk_polygons_sizes_too_big": ("a.vtk", vtk_legacy(cells="POLYGONS 1 4\n9 0 1 2\n"),
                                       r"POLYGONS announces 1 cell in 4 numbers, but its cell sizes do not add up"),
        "vtk_polygons_count_too_big": ("a.vtk", vtk_legacy(cells="POLYGONS 3 8\n3 0 1 2\n3 1 3 2\n"),
                                       r"announces 3 cells in 8 numbers"),
        "vtk_polygons_size_beyond_file": ("a.vtk", vtk_legacy(cells="POLYGONS 1 2000000000\n3 0 1 2\n"),
                                          r"cut off: POLYGONS announces 2000000000 numbers"),
        "vtk_polygon_index_past_end": ("a.vtk", vtk_legacy(cells="POLYGONS 1 4\n3 0 1 9\n"),
                                       r"refers to vertex 10 but the mesh has only 4"),
        "vtk_polygon_negative_index": ("a.vtk", vtk_legacy(cells="POLYGONS 1 4\n3 0 1 -2\n"),
                                       r"vertex index -2, which is negative"),
        "vtk_negative_point_count": ("a.vtk", vtk_legacy(points="POINTS -3 float\n0 0 0\n"),
                                     r"the number of POINTS is '-3', not a count"),
        "vtk_unreadable_version": ("a.vtk", vtk_legacy(version="x.y"), r"cannot read: not a legacy VTK file"),
        "vtk_unstructured_grid": ("a.vtk", vtk_legacy(dataset="UNSTRUCTURED_GRID"),
                                  r"cannot read: a VTK file of 'UNSTRUCTURED_GRID' data, not POLYDATA"),
        "vtk_unknown_section": ("a.vtk", vtk_legacy(cells="GARBAGE 1 2\n"), r"unknown section 'GARBAGE'"),
        "vtk_word_not_a_number": ("a.vtk", vtk_legacy(points="POINTS 4 float\n0 0 0 1 0 0 0 x 0 1 1 0\n"),
                                  r"POINTS holds 'x', not a number"),
        "vtk_v5_offsets_backwards": ("a.vtk", vtk_legacy(version="5.1", cells="POLYGONS 3 6\nOFFSETS vtktypeint64\n"
                                                                              "0 4 3\nCONNECTIVITY vtktypeint64\n"
                                                                              "0 1 2 1 3 2\n"),
                                     r"OFFSETS of POLYGONS do not run from 0 up to its 6"),
        "vtk_v5_connectivity_beyond_file": ("a.vtk", vtk_legacy(version="5.1", cells="POLYGONS 2 3000000000\n"
                                                                                     "OFFSETS vtktypeint64\n0 3\n"
                                                                                     "CONNECTIVITY vtktypeint64\n"
                                                                                     "0 1 2\n"),
                                            r"cut off: POLYGONS CONNECTIVITY announces 3000000000"),
        "vtk_field_beyond_file": ("a.vtk", vtk_legacy(points="FIELD f 1\nvalues 1 2000000000 double\n1.5\n"
                                                             "POINTS 4 float\n0 0 0 1 0 0 0 1 0 1 1 0\n"),
                                  r"cut off: the FIELD array 'values' announces 2000000000"),
        "vtk_int_out_of_range": ("a.vtk", vtk_legacy(cells="POLYGONS 1 4\n3 0 1 4294967298\n"),
                                 r"out of range for its type"),
        "vtk_huge_polygon": ("a.vtk", vtk_legacy(points="POINTS 50000 float\n" + "0 0 0\n" * 50000,
                                                 cells="POLYGONS 1 50001\n50000 " + " ".join(map(str, range(50000)))
                                                       + "\n"), r"polygons are too large to triangulate .* 50000"),
        "vtk_nan": ("a.vtk", vtk_legacy(points="POINTS 4 float\nnan 0 0 1 0 0 0 1 0 1 1 0\n"), r"NaN or infinite"),
        "vtk_png": ("a.vtk", PNG, r"cannot read: it is a PNG image, not a mesh file"),
        "vtk_all_zero_bytes": ("a.vtk", ZEROS, r"cannot read: not a legacy VTK file"),
        # VTP
        "vtp_billions_of_points": ("a.vtp", vtp(vtp_piece(n_points=2000000000)),
                                   r"declares 24000 MB of data, more than a \d+-byte file"),
        "vtp_points_shorter_than_declared": ("a.vtp", vtp(vtp_piece(n_points=5)),
                                             r"the points array holds 9 values where 15 are declared"),
        "vtp_connectivity_billions": ("a.vtp", vtp(vtp_piece(offsets="2000000000000")),
                                      r"declares \d+ MB of data"),
        "vtp_offsets_backwards": ("a.vtp", vtp(vtp_piece(n_polys=2, offsets="3 2", connectivity="0 1 2")),
                                  r"cannot read: damaged file or not in VTP format \(.*offsets"),
        "vtp_connectivity_index_past_end": ("a.vtp", vtp(vtp_piece(connectivity="0 1 7")),
                                            r"refers to vertex 8 but the mesh has only 3"),
        "vtp_zlib_bomb": ("a.vtp", appended_points(30000000, b"", zlib_points(30000000)),
                          r"declares 360 MB of data, more than a \d+ kB file"),
        "vtp_compressed_blocks_beyond_file": ("a.vtp", appended_points(3, struct.pack("<3Q", 2 ** 40, 32768, 36),
                                                                       b"x" * 64),
                                              r"announces 1099511627776 compressed blocks, more than the file holds"),
        "vtp_compressed_block_size_zero": ("a.vtp", appended_points(3, struct.pack("<4Q", 1, 0, 36, 20),
                                                                    zlib.compress(bytes(36))),
                                           r"compression header is inconsistent"),
        "vtp_compressed_block_of_a_terabyte": ("a.vtp", appended_points(3, struct.pack("<4Q", 1, 2 ** 40, 0, 20),
                                                                        zlib.compress(bytes(36))),
                                               r"declares \d+ MB of data"),
        "vtp_compressed_size_beyond_file": ("a.vtp", appended_points(3, struct.pack("<4Q", 1, 36, 36, 2 ** 60),
                                                                     zlib.compress(bytes(36))),
                                            r"compressed data is shorter than declared"),
        "vtp_compressed_garbage": ("a.vtp", appended_points(3, struct.pack("<4Q", 1, 36, 36, 20), b"\x01" * 20),
                                   r"cannot read"),
        "vtp_raw_shorter_than_declared": ("a.vtp", appended_points(1000, struct.pack("<Q", 12000), bytes(120), ""),
                                          r"the points array holds \d+ bytes where 12000 are declared"),
        "vtp_raw_header_lies": ("a.vtp", appended_points(3, struct.pack("<Q", 2 ** 62), bytes(36), ""), OK),
        "vtp_base64_shorter_than_declared": ("a.vtp", vtp(vtp_piece(n_points=100, points='<DataArray type="Float32" '
                                                                                         'NumberOfComponents="3" '
                                                                                         'format="binary">AAAAAAAA'
                                                                                         '</DataArray>')),
                                             r"the points array's data is missing|holds \d+ bytes where 1200"),
        "vtp_deep_nesting": ("a.vtp", vtp("<a>" * 5000 + "</a>" * 5000 + vtp_piece()),
                             r"cannot read: not a VTP file as VTK writes them \(its XML is nested too deep"),
        "vtp_many_arrays": ("a.vtp", vtp(vtp_piece().replace("</Points>", "</Points><PointData>" + "".join(
            '<DataArray type="Float32" Name="a{}" format="ascii">1 2 3</DataArray>'.format(i)
            for i in range(3000)) + "</PointData>")), r"has too many elements or arrays"),
        "vtp_entities": ("a.vtp", vtp(vtp_piece(), before='<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>\n'),
                         r"cannot read: not a VTP file as VTK writes them \(it declares a DOCTYPE"),
        "vtp_unstructured_grid": ("a.vtp", vtp(vtp_piece(), file_type="UnstructuredGrid"),
                                  r"cannot read: not a VTK PolyData"),
        "vtp_unknown_compressor": ("a.vtp", vtp(vtp_piece(), compressor="vtkBrotliCompressor"),
                                   r"unknown header_type, byte_order or compressor"),
        "vtp_long_information_key": ("a.vtp", vtp(vtp_piece().replace(
            "0 0 0 1 0 0 0 1 0</DataArray>", '0 0 0 1 0 0 0 1 0<InformationKey name="L2_NORM_RANGE" '
            'location="vtkDataArray" length="100000000"/></DataArray>')), r"InformationKey of length 100000000"),
        "vtp_ok": ("a.vtp", vtp(vtp_piece()), OK),
        "vtp_xml_cut_off": ("a.vtp", vtp(vtp_piece())[:200],
                            r"cannot read: not a VTP file, or a damaged one \(XML error"),
        "vtp_png": ("a.vtp", PNG, r"cannot read: it is a PNG image, not a mesh file"),
        "vtp_all_zero_bytes": ("a.vtp", ZEROS, r"cannot read: not a VTP file, or a damaged one \(XML error"),
        # any format
        "empty_file": ("a.ply", b"", r"the file is empty"),
        "folder_named_like_a_mesh": ("a.ply", "folder", r"is a folder, not a mesh file"),
        "pipe_named_like_a_mesh": ("a.stl", "pipe", r"is not a regular file"),
    }
    return c


def _textured_ply(index=2, ascii=False, texcoord="0.5"):
    """Faces with texture coordinates and vertices without: read by VTK's reader (it adds points)."""
    header = ("ply\nformat {} 1.0\nelement vertex 4\n{}element face 2\nproperty list uchar int vertex_indices\n"
              "property list uchar float texcoord\nend_header\n").format(
                  "ascii" if ascii else "binary_little_endian", XYZ)
    faces = [[0, 1, index], [1, 3, 2]]
    if ascii:
        body = "0 0 0\n1 0 0\n0 1 0\n1 1 0\n" + "".join(
            "3 {} {} {} 6 0 0 1 0 {} 1\n".format(*f, texcoord) for f in faces)
        return (header + body).encode()
    body = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], "<f4").tobytes()
    for f in faces:
        body += b"\3" + np.array(f, "<i4").tobytes() + b"\6" + np.array([0, 0, 1, 0, 0.5, 1], "<f4").tobytes()
    return header.encode() + body


CASES = cases()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    jobs = []
    for case, (filename, content, _) in sorted(CASES.items()):
        path = folder / case / filename
        path.parent.mkdir()
        if content == "folder":
            path.mkdir()
        elif content == "pipe":
            if not hasattr(os, "mkfifo"):
                continue
            os.mkfifo(str(path))
        else:
            path.write_bytes(content)
        jobs.append([case, str(path)])
    return read_in_children(jobs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_file_gives_one_clear_line(case, outcomes):
    if case not in outcomes:
        pytest.skip("no such file on this system")
    _, _, expected = CASES[case]
    outcome = outcomes[case]
    assert outcome["status"] in ("ok", "error"), outcome  # not a crash, a hang or another exception
    if expected is OK:
        assert outcome["status"] == "ok", outcome
    else:
        assert outcome["status"] == "error", outcome
        message = outcome["message"]
        assert "\n" not in message
        assert message.startswith(outcome["path"] + ": "), message  # names the file first
        assert re.search(expected, message), message
    assert outcome["stderr"] == "", outcome  # VTK's own messages stay quiet


def test_valid_files_read_as_before(tmp_path):
    """A mesh written in every format reads back the same after the checks (the checks pass it)."""
    from palnet.mesh_io import read_mesh
    for ext in (".ply", ".obj", ".stl", ".vtk", ".vtp"):
        write_mesh(GRID, tmp_path / ("grid" + ext))
        back = read_mesh(tmp_path / ("grid" + ext))
        assert back.n_triangles == GRID.n_triangles
        np.testing.assert_allclose(np.sort(back.vertices, axis=0), np.sort(GRID.vertices, axis=0), atol=1e-4)


def test_padding_inside_base64_data_is_one_line(tmp_path):
    """A '=' inside a binary VTP's base64 data ends its decoding early: the compression header
    then came out shorter than its declared size, which raised a ValueError, not one line."""
    from vtkmodules.vtkFiltersSources import vtkSphereSource
    from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter
    source = vtkSphereSource()
    source.Update()
    writer = vtkXMLPolyDataWriter()
    writer.SetInputData(source.GetOutput())
    writer.SetFileName(str(tmp_path / "good.vtp"))
    writer.SetDataModeToBinary()
    writer.Write()
    text = (tmp_path / "good.vtp").read_text()
    start = re.search(r'format="binary"[^>]*>\s*', text).end()
    for pos in (2, 3, 5):
        bad = tmp_path / "bad{}.vtp".format(pos)
        bad.write_text(text[:start + pos] + "==" + text[start + pos:])
        with pytest.raises(PalnetError) as info:
            read_mesh(bad)
        assert str(info.value).startswith(str(bad)) and "\n" not in str(info.value)
