"""VTK XML PolyData (.vtp) files, checked here before VTK's reader reads them: every array's
declared size against the data the file holds and against a memory budget, as
vtkXMLPolyDataReader allocates whatever the file declares and reads past short data."""
import binascii
import lzma
import re
import zlib
from typing import List, Tuple

import numpy as np

from ..errors import PalnetError
from .checks import CHUNK, cut_off, damaged, show, size_text, word_starts

_SIZES = {"Int8": 1, "UInt8": 1, "Int16": 2, "UInt16": 2, "Int32": 4, "UInt32": 4, "Int64": 8, "UInt64": 8,
              "Float32": 4, "Float64": 8, "String": 1, "Bit": 0}
_COMPRESSORS = {"vtkZLibDataCompressor": "zlib", "vtkLZ4DataCompressor": "lz4", "vtkLZMADataCompressor": "lzma"}
# What VTK may allocate to read a .vtp: its arrays' declared sizes, at most this many times the
# file's size (scans compress about 2 times; a bomb declares hundreds of times), or this floor.
_EXPANSION = 16
_FLOOR = 256 << 20
# VTK looks elements and arrays up by walking lists (20000 arrays take 10 s); files VTK writes
# have a few levels and a few dozen arrays.
_MAX_ELEMENTS = 20000
_MAX_ARRAYS = 2000
_MAX_DEPTH = 32
_B64 = re.compile(rb"[A-Za-z0-9+/=]*")
_B64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


class _VtpData:
    """The encoded bytes of one DataArray, read as vtkXMLDataParser reads them (bounded reads)."""

    def __init__(self, name, f, size, text=None, at=0, base64=False, end=None):
        self.name, self.f, self.size, self.text, self.at, self.base64 = name, f, size, text, at, base64
        if end is None:
            end = at + _b64_run(text, at) if text is not None and base64 else (len(text) if text is not None else size)
        self.end = end  # where the encoded bytes stop

    def available(self, start: int) -> int:
        """Decoded bytes there are from decoded offset ``start`` on."""
        chars = self.end - self.at
        return max(0, (chars * 3 // 4 if self.base64 else chars) - start)

    def read(self, start: int, n: int) -> bytes:
        """``n`` decoded bytes from decoded offset ``start`` (the caller checked they exist)."""
        if not self.base64:
            if self.text is not None:
                return self.text[self.at + start:self.at + start + n]
            self.f.seek(self.at + start)
            return self.f.read(n)
        first, last = start // 3 * 4, -(-(start + n) // 3) * 4
        if self.text is not None:
            chars = self.text[self.at + first:self.at + last]
        else:
            self.f.seek(self.at + first)
            chars = self.f.read(last - first)
        try:
            raw = binascii.a2b_base64(chars)
        except binascii.Error:
            raise damaged("VTP", "bad base64 data", self.name) from None
        return raw[start - start // 3 * 3:][:n]

    def restart(self, chars: int) -> "_VtpData":
        """The stream that starts ``chars`` encoded characters further on (after a header)."""
        return _VtpData(self.name, self.f, self.size, self.text, self.at + chars, self.base64, self.end)


def _b64_run(text: bytes, at: int) -> int:
    """How many base64 characters follow ``at``: VTK's decoder stops at the first other byte."""
    ends = [text.find(c, at) for c in (b"<", b"\n", b" ", b"\r", b"\t")]
    end = min([e for e in ends if e >= 0], default=len(text))
    if text[at:end].translate(None, _B64_CHARS):
        end = at + len(_B64.match(text, at).group())
    return end - at


def _lz4_length(src: bytes, i: int, length: int) -> Tuple[int, int]:
    """(an LZ4 length, where its bytes end): 15 in the token means bytes from ``i`` on add to it
    up to the first one below 255."""
    if length == 15:
        while True:
            b = src[i]
            i += 1
            length += b
            if b != 255:
                break
    return length, i


def _lz4_block(src: bytes, limit: int) -> bytes:
    """An LZ4 block decompressed (as vtkLZ4DataCompressor writes them), never past ``limit`` bytes."""
    out, i, n = bytearray(), 0, len(src)
    while i < n:
        token = src[i]
        i += 1
        length, i = _lz4_length(src, i, token >> 4)
        out += src[i:i + length]
        i += length
        if i >= n:
            break
        back = src[i] | src[i + 1] << 8
        i += 2
        length, i = _lz4_length(src, i, token & 15)
        length += 4
        if back == 0 or back > len(out) or len(out) + length > limit:
            raise ValueError("bad LZ4 block")
        begin = len(out) - back
        if back >= length:
            out += out[begin:begin + length]
        else:
            for k in range(length):
                out.append(out[begin + k])
        if len(out) > limit:
            raise ValueError("bad LZ4 block")
    if len(out) > limit:
        raise ValueError("bad LZ4 block")
    return bytes(out)


def _xml_part(f, name: str) -> Tuple[bytes, int, str, int]:
    """(the XML up to any AppendedData, closed, where the AppendedData tag starts or -1, its
    encoding, where its data starts or -1): VTK's parser stops at the first "<AppendedData"."""
    chunks, appended, read = [], -1, 0
    while True:
        chunk = f.read(CHUNK)
        tail = chunks[-1][-16:] if chunks else b""
        found = (tail + chunk).find(b"<AppendedData")
        if found >= 0:
            appended = read - len(tail) + found
        chunks.append(chunk)
        read += len(chunk)
        if found >= 0 or not chunk:
            break
    text = b"".join(chunks)
    if appended < 0:
        return text, appended, "base64", -1
    close = text.find(b">", appended)
    while close < 0:
        chunk = f.read(CHUNK)
        if not chunk:
            raise cut_off("it ends inside the AppendedData tag", name)
        text += chunk
        close = text.find(b">", appended)
    tag = text[appended:close + 1]
    m = re.search(rb"""encoding\s*=\s*["']([^"']*)["']""", tag)
    encoding = m.group(1).decode("ascii", "replace") if m else "base64"
    f.seek(close + 1)
    lead = f.read(4096)
    skip = len(lead) - len(lead.lstrip(b" \t\r\n"))
    start = close + 1 + skip + (1 if lead[skip:skip + 1] == b"_" else 0)
    return text[:close].rstrip(b"/") + b"/>\n</VTKFile>\n", appended, encoding, start


def _parse_xml(document: bytes, name: str):
    """The root element of ``document``, parsed within limits on its depth, elements and arrays."""
    import xml.etree.ElementTree as ET
    if b"<!DOCTYPE" in document or b"<!ENTITY" in document:
        raise PalnetError("cannot read: not a VTP file as VTK writes them (it declares a DOCTYPE or "
                          "entities)", name)
    parser = ET.XMLPullParser(events=("start", "end"))
    depth, elements, arrays, root = 0, 0, 0, None
    try:
        for k in range(0, len(document), CHUNK):
            parser.feed(document[k:k + CHUNK])
            for event, element in parser.read_events():
                if event == "start":
                    depth, elements = depth + 1, elements + 1
                    arrays += element.tag == "DataArray"
                    root = element if root is None else root
                    if depth > _MAX_DEPTH or elements > _MAX_ELEMENTS or arrays > _MAX_ARRAYS:
                        raise PalnetError("cannot read: not a VTP file as VTK writes them (its XML is "
                                          "nested too deep, or has too many elements or arrays)", name)
                else:
                    depth -= 1
        parser.close()
    except ET.ParseError as e:
        raise PalnetError("cannot read: not a VTP file, or a damaged one (XML error: {})".format(e), name) from None
    return root


def check_vtp(name: str, size: int) -> None:
    """Check a VTK XML PolyData file against what vtkXMLPolyDataReader allocates and reads:
    every array's declared size (from the piece's counts, and for cell connectivity from the
    last offset) against the data the file holds, compression headers against the file, and
    all of it together against a memory budget (a small compressed file can declare gigabytes)."""
    with open(name, "rb") as f:
        document, appended, encoding, start = _xml_part(f, name)
        root = _parse_xml(document, name)
        if root is None or root.tag != "VTKFile" or root.get("type") != "PolyData":
            raise PalnetError("cannot read: not a VTK PolyData (.vtp) file", name)
        header = {"UInt32": 4, "UInt64": 8}.get(root.get("header_type", "UInt32"))
        order = {"LittleEndian": "<", "BigEndian": ">"}.get(root.get("byte_order", "LittleEndian"))
        compressor = root.get("compressor", "")
        if header is None or order is None or (compressor and compressor not in _COMPRESSORS):
            raise damaged("VTP", "unknown header_type, byte_order or compressor", name)
        if appended >= 0 and encoding not in ("raw", "base64"):
            raise damaged("VTP", "unknown AppendedData encoding {!r}".format(encoding), name)
        appended_end = None
        if appended >= 0 and encoding == "base64":
            f.seek(start)
            appended_end = start
            while True:
                chunk = f.read(CHUNK)
                run = _b64_run(chunk, 0)
                appended_end += run
                if run < len(chunk) or not chunk:
                    break
        polydata = root.find("PolyData")
        if polydata is None:
            raise damaged("VTP", "no PolyData element", name)
        check = _VtpCheck(name, f, size, header, order, _COMPRESSORS.get(compressor), start,
                          encoding == "base64", appended_end)
        for field in [polydata.find("FieldData")] + [p.find("FieldData") for p in polydata.findall("Piece")]:
            for array in (field.findall("DataArray") if field is not None else ()):
                check.array(array, check.number(array, "NumberOfTuples"), "field data")
        for piece in polydata.findall("Piece"):
            n_points = check.number(piece, "NumberOfPoints")
            n_cells = 0
            for kind in ("Verts", "Lines", "Strips", "Polys"):
                n = check.number(piece, "NumberOf" + kind)
                n_cells += n
                if n == 0:
                    continue
                cells = piece.find(kind)
                arrays = {a.get("Name"): a for a in (cells.findall("DataArray") if cells is not None else ())}
                if "offsets" not in arrays or "connectivity" not in arrays:
                    raise damaged("VTP", "{} {} without offsets and connectivity arrays".format(n, kind), name)
                last = check.array(arrays["offsets"], n, kind + " offsets", last=True)
                check.array(arrays["connectivity"], last, kind + " connectivity")
            points = piece.find("Points")
            point_arrays = points.findall("DataArray") if points is not None else []
            if n_points and not point_arrays:
                raise damaged("VTP", "{} points without a Points array".format(n_points), name)
            if point_arrays:
                check.array(point_arrays[0], n_points, "points")
            for kind, n in (("PointData", n_points), ("CellData", n_cells)):
                data = piece.find(kind)
                for array in (data.findall("DataArray") if data is not None else ()):
                    check.array(array, n, kind)
        for key in root.iter("InformationKey"):
            if check.number(key, "length") > 1024:
                raise damaged("VTP", "an InformationKey of length {}".format(key.get("length")), name)
    check.within_budget()


class _VtpCheck:
    def __init__(self, name, f, size, header, order, compressor, appended_start, appended_base64, appended_end):
        self.name, self.f, self.size, self.header, self.order = name, f, size, header, order
        self.compressor, self.appended_start = compressor, appended_start
        self.appended_base64, self.appended_end = appended_base64, appended_end
        self.budget = 0

    def fail(self, what: str) -> PalnetError:
        return damaged("VTP", what, self.name)

    def within_budget(self) -> None:
        if self.budget > max(_FLOOR, _EXPANSION * self.size):
            raise PalnetError("the file declares {:.0f} MB of data, more than a {} file of mesh data can hold "
                              "(a damaged or malicious file)".format(self.budget / 1e6, size_text(self.size)),
                              self.name)

    def number(self, element, attribute: str) -> int:
        value = element.get(attribute, "0").strip()
        if not re.fullmatch(r"[0-9]{1,18}", value):
            raise self.fail("{} {}={!r} is not a count".format(element.tag, attribute, value))
        return int(value)

    def words(self, raw: bytes, n: int) -> int:
        if len(raw) < n * self.header:  # damaged base64 can decode to fewer bytes than the header needs
            raise self.fail("its compression header is cut off ({} of {} bytes)".format(len(raw), n * self.header))
        values = np.frombuffer(raw, self.order + "u%d" % self.header, n)
        return [int(v) for v in values]

    def array(self, element, tuples: int, what: str, last: bool = False) -> int:
        """Check one DataArray holds ``tuples`` tuples; with ``last``, return its last value."""
        kind = element.get("type", "")
        if kind not in _SIZES:
            raise self.fail("the {} array has the type {!r}".format(what, kind))
        if last and kind not in ("Int8", "UInt8", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64"):
            raise self.fail("the {} array has the type {}, not an integer type".format(what, kind))
        components = self.number(element, "NumberOfComponents") if element.get("NumberOfComponents") else 1
        values = tuples * components
        word = _SIZES[kind]
        nbytes = (values + 7) // 8 if kind == "Bit" else values * word
        self.budget += values * 32 if kind == "String" else nbytes
        self.within_budget()
        fmt = element.get("format", "")
        if values == 0:
            return 0
        if fmt == "ascii":
            text = (element.text or "").encode("ascii", "replace")
            word = word_starts(np.frombuffer(text, np.uint8))
            starts = np.flatnonzero(word) if last else None
            found = len(starts) if last else int(np.count_nonzero(word))
            if found < values:
                raise self.fail("the {} array holds {} values where {} are declared".format(what, found, values))
            if not last:
                return 0
            value = text[starts[values - 1]:].split(None, 1)[0]
            if not re.fullmatch(rb"[0-9]{1,18}", value):
                raise self.fail("the last {} value is {}".format(what, show(value)))
            return int(value)
        if fmt == "binary":
            raw = (element.text or "").encode("ascii", "replace")
            lead = len(raw) - len(raw.lstrip())
            data = _VtpData(self.name, self.f, self.size, raw, lead, True)
        elif fmt == "appended":
            if self.appended_start < 0:
                raise self.fail("the {} array is in appended data the file does not have".format(what))
            data = _VtpData(self.name, self.f, self.size, None, self.appended_start + self.number(element, "offset"),
                            self.appended_base64, self.appended_end)
        else:
            raise self.fail("the {} array has the format {!r}".format(what, fmt))
        h = self.header
        if self.compressor is None:
            if data.available(0) < h:
                raise self.fail("the {} array's data is missing".format(what))
            declared = self.words(data.read(0, h), 1)[0]
            if declared < nbytes or data.available(h) < nbytes:
                raise self.fail("the {} array holds {} bytes where {} are declared".format(
                    what, min(declared, data.available(h)), nbytes))
            if last:
                return self.last(data.read(h + nbytes - word, word), kind)
            return 0
        if data.available(0) < 3 * h:
            raise self.fail("the {} array's compression header is missing".format(what))
        blocks, block_size, last_size = self.words(data.read(0, 3 * h), 3)
        if blocks * h > data.available(3 * h):
            raise self.fail("the {} array's header announces {} compressed blocks, more than the file "
                            "holds".format(what, blocks))
        sizes = self.words(data.read(0, (3 + blocks) * h), 3 + blocks)[3:]
        if blocks and (block_size == 0 or last_size > block_size):
            raise self.fail("the {} array's compression header is inconsistent".format(what))
        stream = data.restart(-(-(3 + blocks) * h // 3) * 4) if data.base64 else data.restart((3 + blocks) * h)
        total = (blocks - 1) * block_size + (last_size or block_size) if blocks else 0
        if sum(sizes) > stream.available(0) or total < nbytes:
            raise self.fail("the {} array's compressed data is shorter than declared".format(what))
        self.budget += block_size
        if not last:
            return 0
        at = nbytes - word
        block = at // block_size
        raw = self.block(stream, sizes, block, block_size if block < blocks - 1 or not last_size else last_size,
                         what)
        return self.last(raw[at - block * block_size:at - block * block_size + word], kind)

    def block(self, stream: _VtpData, sizes: List[int], block: int, expected: int, what: str) -> bytes:
        packed = stream.read(sum(sizes[:block]), sizes[block])
        try:
            if self.compressor == "zlib":
                out = zlib.decompressobj().decompress(packed, expected + 1)
            elif self.compressor == "lzma":
                out = lzma.LZMADecompressor().decompress(packed, expected + 1)
            else:
                out = _lz4_block(packed, expected)
        except (zlib.error, lzma.LZMAError, ValueError, IndexError):
            raise self.fail("the {} array's compressed data is damaged".format(what)) from None
        if len(out) != expected:
            raise self.fail("the {} array's compressed data is damaged".format(what))
        return out

    def last(self, raw: bytes, kind: str) -> int:
        value = int(np.frombuffer(raw, self.order + ("u" if kind[0] == "U" else "i") + str(_SIZES[kind]))[0])
        if value < 0:
            raise self.fail("a cell offset is negative ({})".format(value))
        return value
