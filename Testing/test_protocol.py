"""The landmark protocol: the shipped 50-landmark file, custom protocols, and their checks."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from palnet.errors import PalnetError
from palnet.protocol import (
    DEFAULT_REGION_COLORS,
    LandmarkDefinition,
    Protocol,
    default_protocol,
    mirror_label,
    protocol_markdown_table,
    side_from_label,
)
from palnet.resources import default_protocol_path

REPO = Path(__file__).resolve().parent.parent

MIDLINE = ["tr", "g", "n", "prn", "c", "sn", "ls", "sto", "li", "sl", "pg", "me"]
BILATERAL = ["ft", "os", "ps", "pi", "en", "ex", "or", "zy", "t", "go",
             "ac", "al", "sbal", "cph", "ch", "sa", "sba", "pa", "obs"]
EXPECTED_LABELS = MIDLINE + [b + s for b in BILATERAL for s in ("_R", "_L")]
REGIONS = ["forehead", "orbits", "nose", "lips", "chin", "cheeks and jaw", "ears"]


# ------------------------------------------------------------ default protocol

def test_default_protocol_has_the_50_labels_in_order():
    p = default_protocol()
    assert p.name == "palnet50"
    assert len(p) == 50
    assert p.labels == EXPECTED_LABELS
    assert [lm.label for lm in p.landmarks] == EXPECTED_LABELS
    assert default_protocol() is p  # cached


def test_default_protocol_sides_and_pairs():
    p = default_protocol()
    sides = [lm.side for lm in p]
    assert sides.count("midline") == 12
    assert sides.count("right") == 19 and sides.count("left") == 19
    for lm in p:
        if lm.side == "midline":
            assert lm.mirror == lm.label
        else:
            assert lm.label.endswith("_R" if lm.side == "right" else "_L")
            assert lm.mirror == mirror_label(lm.label)
    assert p.is_mirror_symmetric


def test_default_mirror_permutation_is_an_involution_swapping_sides():
    p = default_protocol()
    perm = p.mirror_permutation()
    assert perm.dtype.kind == "i" and perm.shape == (50,)
    assert np.array_equal(perm[perm], np.arange(50))
    labels = p.labels
    for i, j in enumerate(perm):
        a, b = labels[i], labels[j]
        if a.endswith("_R"):
            assert b == a[:-2] + "_L"
        elif a.endswith("_L"):
            assert b == a[:-2] + "_R"
        else:
            assert i == j
    assert sorted(perm.tolist()) == list(range(50))


def test_default_regions_colours_and_definitions():
    p = default_protocol()
    assert p.regions == REGIONS
    colors = [p.region_colors[r] for r in REGIONS]
    assert len(set(colors)) == len(colors)
    for c in colors:
        assert len(c) == 3 and all(0.0 <= v <= 1.0 for v in c)
    # no two regions alike (channel distance), so they stay apart on the surface
    arr = np.array(colors)
    d = np.linalg.norm(arr[:, None] - arr[None], axis=-1)
    assert d[np.triu_indices(len(arr), 1)].min() > 0.25
    one_sentence = re.compile(r"^[A-Z][^.!?]*\.$")
    for lm in p:
        assert lm.region in REGIONS
        assert p.region_of(lm.label) == lm.region
        assert p.color_of(lm.label) == p.region_colors[lm.region]
        assert lm.name.strip() and lm.definition.strip()
        assert one_sentence.match(lm.definition), lm.label
        if lm.side != "midline":
            assert "subject's " + lm.side in lm.definition, lm.label
            assert lm.name.startswith(lm.side + " ")


def test_default_definitions_spot_checks():
    p = default_protocol()
    assert p.definition("or_R").definition.startswith("Lowest point on the lower margin")
    assert "upper eyelid" in p.definition("ps_L").definition
    assert "lower eyelid" in p.definition("pi_R").definition
    assert "tragus" in p.definition("t_R").definition
    assert "zygomatic arch" in p.definition("zy_L").definition
    assert "angle of the mandible" in p.definition("go_R").definition
    assert "temporal crest" in p.definition("ft_R").definition
    assert "hairline" in p.definition("tr").definition
    assert "between the eyebrows" in p.definition("g").definition
    assert "philtrum" in p.definition("cph_R").definition
    assert "columella" in p.definition("c").definition


def test_region_indices_cover_every_landmark_once():
    p = default_protocol()
    ri = p.region_indices()
    assert list(ri) == REGIONS
    allidx = np.concatenate(list(ri.values()))
    assert sorted(allidx.tolist()) == list(range(50))
    assert p.labels.index("prn") in ri["nose"]
    assert p.index("ex_R") in ri["orbits"] and p.index("t_L") in ri["ears"]


def test_index_and_unknown_label():
    p = default_protocol()
    assert p.index("tr") == 0 and p.index("obs_L") == 49
    assert "prn" in p and "xyz" not in p
    with pytest.raises(PalnetError, match="no landmark 'xyz'"):
        p.index("xyz")


def test_shipped_file_is_canonical():
    p = default_protocol()
    on_disk = json.loads(default_protocol_path().read_text(encoding="utf-8"))
    assert on_disk == p.to_dict()
    assert on_disk["format"] == "palnet-protocol" and on_disk["version"] == 1
    assert any("Farkas" in r for r in p.references) and any("LAFAS" in r for r in p.references)


def test_docs_table_matches_the_json():
    table = protocol_markdown_table(default_protocol())
    lines = table.splitlines()
    assert lines[0] == "| Label | Name | Definition | Region |"
    assert len(lines) == 2 + 50
    assert "| `ex_R` | right exocanthion |" in table
    doc = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert table in doc, "docs/protocol.md is stale: regenerate with python -m palnet.protocol"


def test_markdown_escapes_pipes():
    p = Protocol("x", [LandmarkDefinition("a", "a|b", "One | two.", "midline", "other", "a")])
    assert "a\\|b" in protocol_markdown_table(p)


# ------------------------------------------------------------ round trips

def test_round_trip_dict_save_load(tmp_path):
    p = default_protocol()
    q = Protocol.from_dict(p.to_dict())
    assert q == p and q.labels == p.labels and hash(q) == hash(p)
    path = tmp_path / "copy.json"
    p.save(path)
    r = Protocol.load(path)
    assert r == p
    assert np.array_equal(r.mirror_permutation(), p.mirror_permutation())
    assert r.region_colors == p.region_colors
    assert [x.name for x in tmp_path.iterdir()] == ["copy.json"]  # no temp file left
    if os.name == "posix":
        assert path.stat().st_mode & 0o777 == 0o644  # readable by others, unlike a bare temp file
    # saving over an existing file replaces it
    Protocol.from_labels(["a", "b"]).save(path)
    assert Protocol.load(path).labels == ["a", "b"]


def test_save_to_missing_folder_is_a_palnet_error(tmp_path):
    with pytest.raises(PalnetError, match="cannot write"):
        default_protocol().save(tmp_path / "nope" / "p.json")


def test_list_properties_are_copies():
    p = default_protocol()
    p.labels.append("x")
    p.landmarks.clear()
    p.regions.clear()
    assert len(p) == 50 and len(p.regions) == 7


# ------------------------------------------------------------ validation errors

def _minimal(**extra):
    d = {"format": "palnet-protocol", "version": 1, "name": "t",
         "regions": [{"name": "face", "color": [1, 0, 0]}],
         "landmarks": [
             {"label": "a", "side": "midline", "region": "face", "mirror": "a"},
             {"label": "b_R", "side": "right", "region": "face", "mirror": "b_L"},
             {"label": "b_L", "side": "left", "region": "face", "mirror": "b_R"},
         ]}
    d.update(extra)
    return d


def _write(tmp_path, content, name="bad_protocol.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def _error(tmp_path, content, name="bad_protocol.json"):
    path = _write(tmp_path, content, name)
    with pytest.raises(PalnetError) as info:
        Protocol.load(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert name in msg
    assert info.value.path == str(path)
    return msg


def _with_landmark(i, **changes):
    d = _minimal()
    d["landmarks"][i].update(changes)
    return d


def test_minimal_protocol_loads(tmp_path):
    p = Protocol.load(_write(tmp_path, _minimal()))
    assert p.labels == ["a", "b_R", "b_L"]
    assert p.mirror_permutation().tolist() == [0, 2, 1]


@pytest.mark.parametrize("content, words", [
    ("{not json", "not valid JSON"),
    ("", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (dict(_minimal(), format="markups"), "not a palnet protocol"),
    ({k: v for k, v in _minimal().items() if k != "format"}, "missing field 'format'"),
    ({"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                 "Resources/Schema/markups-schema-v1.0.3.json#", "markups": []}, "is a landmark file, not a protocol"),
    ({k: v for k, v in _minimal().items() if k != "landmarks"}, "missing field 'landmarks'"),
    (_minimal(landmarks=[]), "empty"),
    (_minimal(landmarks={"a": 1}), "must be a list"),
    (_minimal(version=2), "newer"),
    (_minimal(version="one"), "version"),
    (_minimal(landmarks=[{"name": "x"}]), "missing field 'label'"),
    (_minimal(landmarks=[{"label": 3}]), "must be a string"),
    (_minimal(landmarks=["a"]), "must be a JSON object"),
    (_with_landmark(2, label="a", side="midline", mirror="a"), "duplicate landmark label 'a'"),
    (_with_landmark(0, side="centre"), "unknown side 'centre'"),
    (_with_landmark(0, region="nose"), "region 'nose', which is not listed"),
    (_with_landmark(1, mirror="b_X"), "mirror 'b_X', which is not a label"),
    (_with_landmark(2, mirror="a"), "not symmetric"),
    (_with_landmark(0, mirror="b_R"), "must be its own mirror"),
    (_with_landmark(2, side="right"), "same side"),
    (_minimal(regions=[{"name": "face", "color": [2, 0, 0]}]), "colour"),
    (_minimal(regions=[{"name": "face"}, {"name": "face"}]), "listed twice"),
    (_minimal(regions=[42]), "region 1"),
])
def test_validation_errors_are_one_line_and_name_the_file(tmp_path, content, words):
    msg = _error(tmp_path, content)
    assert words in msg


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(PalnetError, match="not found") as info:
        Protocol.load(tmp_path / "nothing.json")
    assert "nothing.json" in str(info.value)
    with pytest.raises(PalnetError, match="folder"):
        Protocol.load(tmp_path)


def test_binary_file(tmp_path):
    path = tmp_path / "scan.ply"
    path.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(PalnetError) as info:
        Protocol.load(path)
    assert "scan.ply" in str(info.value) and "\n" not in str(info.value)


def test_from_dict_names_the_source():
    with pytest.raises(PalnetError, match="^mine.json: .*duplicate"):
        Protocol.from_dict(_with_landmark(2, label="a", side="midline", mirror="a"), source="mine.json")


# ------------------------------------------------------------ custom protocols

def _numbered(n, paired=0):
    """n labels: `paired` bilateral pairs (pN_R/pN_L) then midline mN."""
    labels = []
    for i in range(paired):
        labels += ["p{}_R".format(i), "p{}_L".format(i)]
    labels += ["m{}".format(i) for i in range(n - 2 * paired)]
    return labels


@pytest.mark.parametrize("n, paired", [(5, 2), (68, 30)])
def test_custom_protocols_of_any_size(tmp_path, n, paired):
    labels = _numbered(n, paired)
    d = {"format": "palnet-protocol", "version": 1, "name": "custom{}".format(n),
         "landmarks": [{"label": lab, "definition": "Point {}.".format(lab)} for lab in labels]}
    path = _write(tmp_path, d, "custom{}.json".format(n))
    p = Protocol.load(path)
    assert len(p) == n and p.labels == labels
    perm = p.mirror_permutation()
    assert perm.shape == (n,) and np.array_equal(perm[perm], np.arange(n))
    assert perm[0] == 1 and perm[1] == 0 and perm[-1] == n - 1
    assert p.regions == ["other"]
    assert p.color_of(labels[0]) == DEFAULT_REGION_COLORS[0]
    assert list(p.region_indices()) == ["other"] and len(p.region_indices()["other"]) == n
    p.save(tmp_path / "again.json")
    assert Protocol.load(tmp_path / "again.json") == p
    assert len(protocol_markdown_table(p).splitlines()) == n + 2


def test_custom_regions_without_colours_get_defaults(tmp_path):
    many = ["r{}".format(i) for i in range(len(DEFAULT_REGION_COLORS) + 2)]
    d = {"format": "palnet-protocol",
         "landmarks": [{"label": "x{}".format(i), "region": r} for i, r in enumerate(many)]}
    p = Protocol.load(_write(tmp_path, d, "regions.json"))
    assert p.name == "regions"  # defaults to the file's stem
    assert p.regions == many
    assert p.region_colors["r0"] == DEFAULT_REGION_COLORS[0]
    assert p.region_colors["r1"] == DEFAULT_REGION_COLORS[1]
    assert p.region_colors[many[-1]] == DEFAULT_REGION_COLORS[1]  # palette wraps around
    # regions given as bare names, some landmarks without region -> "other" is added
    d2 = {"format": "palnet-protocol", "regions": ["eyes"],
          "landmarks": [{"label": "en_R", "region": "eyes"}, {"label": "en_L", "region": "eyes"},
                        {"label": "prn"}]}
    q = Protocol.from_dict(d2)
    assert q.regions == ["eyes", "other"] and q.region_of("prn") == "other"
    assert q.mirror_permutation().tolist() == [1, 0, 2]


def test_unpaired_lateral_landmark(tmp_path):
    d = {"format": "palnet-protocol", "landmarks": [{"label": "a"}, {"label": "ex_R"}]}
    p = Protocol.load(_write(tmp_path, d, "onesided.json"))
    assert p.definition("ex_R").side == "right" and p.definition("ex_R").mirror is None
    assert not p.is_mirror_symmetric
    with pytest.raises(PalnetError, match="no mirror partner for ex_R"):
        p.mirror_permutation()
    assert Protocol.from_dict(p.to_dict()) == p  # null mirror round-trips


# ------------------------------------------------------------ from_labels

def test_from_labels_infers_sides_and_mirrors():
    p = Protocol.from_labels(["prn", "ex_R", "ex_L", "en_r", "en_l", "zy_R", "Nose_tip", "a_L"])
    side = {lm.label: lm.side for lm in p}
    assert side == {"prn": "midline", "ex_R": "right", "ex_L": "left", "en_r": "right",
                    "en_l": "left", "zy_R": "right", "Nose_tip": "midline", "a_L": "left"}
    mirror = {lm.label: lm.mirror for lm in p}
    assert mirror["prn"] == "prn" and mirror["ex_R"] == "ex_L" and mirror["ex_L"] == "ex_R"
    assert mirror["en_r"] == "en_l" and mirror["en_l"] == "en_r"
    assert mirror["zy_R"] is None and mirror["a_L"] is None
    assert p.regions == ["other"]
    with pytest.raises(PalnetError):
        p.mirror_permutation()
    q = Protocol.from_labels(["prn", "ex_R", "ex_L"])
    assert q.mirror_permutation().tolist() == [0, 2, 1]
    assert q.definition("ex_R").name == "ex_R"


def test_from_labels_rejects_duplicates():
    with pytest.raises(PalnetError, match="duplicate") as info:
        Protocol.from_labels(["a", "b", "a"], source="lm_001.mrk.json")
    assert "lm_001.mrk.json" in str(info.value)


def test_label_helpers():
    assert side_from_label("ex_R") == "right" and side_from_label("ex_l") == "left"
    assert side_from_label("_R") == "midline" and side_from_label("prn") == "midline"
    assert mirror_label("sbal_L") == "sbal_R" and mirror_label("x_r") == "x_l"
    assert mirror_label("me") is None
