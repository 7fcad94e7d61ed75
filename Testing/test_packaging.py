"""The Slicer extension's packaging: CMake lists, PALNet.s4ext and icons agree with the files.

Slicer installs only the files listed in PALNetLandmarks/CMakeLists.txt, so a new
palnet/*.py or resource works from the source tree and is missing from the built
extension. These tests say exactly which file is missing from which list.
"""
import re
import struct
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULE_DIR = REPO / "PALNetLandmarks"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
TOP_CMAKE = REPO / "CMakeLists.txt"
S4EXT = REPO / "PALNet.s4ext"
PROJECT_URL = "https://github.com/palnet-slicer/SlicerPALNet"  # placeholder until the repository exists
SCRIPTS, RESOURCES = "MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"


def cmake_sets(path):
    """Variables from ``set(NAME values...)`` in a CMake file, ``${VAR}`` expanded (enough for our lists)."""
    text = re.sub(r'#[^\n"]*(?=\n|$)', "", path.read_text(encoding="utf-8"))
    token = re.compile(r'\s*("(?:[^"\\]|\\.)*"|[^\s()"]+|\))')
    variables = {}
    for start in re.finditer(r"\bset\(\s*(\w+)", text):
        pos, values = start.end(), []
        while True:
            m = token.match(text, pos)
            assert m, "{}: cannot parse set({} ...".format(path.name, start.group(1))
            pos = m.end()
            if m.group(1) == ")":
                break
            values.append(m.group(1)[1:-1] if m.group(1).startswith('"') else m.group(1))
        variables[start.group(1)] = [
            re.sub(r"\$\{(\w+)\}", lambda v: " ".join(variables.get(v.group(1), [])), value) for value in values]
    return variables, text


def shipped_files():
    """Files under the module folder that the installed extension needs."""
    ignored_dirs = {"__pycache__", ".pytest_cache"}
    files = []
    for p in sorted(MODULE_DIR.rglob("*")):
        rel = p.relative_to(MODULE_DIR)
        if not p.is_file() or any(part in ignored_dirs or part.startswith(".") for part in rel.parts):
            continue
        if p.suffix in (".pyc", ".pyo") or rel.as_posix() == "CMakeLists.txt" or p.name.endswith("~"):
            continue
        files.append(rel.as_posix())
    return files


def difference_message(listname, missing, extra):
    lines = []
    if missing:
        lines.append("add to {} in {}:\n  {}".format(listname, MODULE_CMAKE.relative_to(REPO), "\n  ".join(missing)))
    if extra:
        lines.append("listed in {} but not in {}/ (remove or restore):\n  {}".format(
            listname, MODULE_DIR.name, "\n  ".join(extra)))
    return "\n".join(lines)


def check_cmake_list(listname, on_disk):
    """The module CMake list ``listname`` names exactly the files ``on_disk``, once each."""
    variables, _ = cmake_sets(MODULE_CMAKE)
    listed = variables[listname]
    assert len(listed) == len(set(listed)), "duplicates in {}".format(listname)
    missing = sorted(set(on_disk) - set(listed))
    extra = sorted(f for f in listed if not (MODULE_DIR / f).is_file())
    assert not missing and not extra, difference_message(listname, missing, extra)
    return listed


def test_every_python_file_is_listed_in_the_module_cmake():
    listed = check_cmake_list(SCRIPTS, [f for f in shipped_files() if f.endswith(".py")])
    assert "PALNetLandmarks.py" in listed and "palnet/pipeline.py" in listed


def test_every_resource_is_listed_in_the_module_cmake():
    listed = check_cmake_list(RESOURCES, [f for f in shipped_files() if f.startswith("Resources/")])
    for needed in ("Resources/UI/PALNetLandmarks.ui", "Resources/Icons/PALNetLandmarks.png",
                   "Resources/Protocols/palnet50.json"):
        assert needed in listed


def test_no_other_files_would_be_left_out():
    # Data files inside the package folders (not .py, not under Resources/) are not installed by either list.
    stray = [f for f in shipped_files() if not f.endswith(".py") and not f.startswith("Resources/")]
    assert not stray, "not installed by slicerMacroBuildScriptedModule (move under Resources/): {}".format(stray)


def test_module_cmake_builds_the_scripted_module_with_its_self_test():
    variables, text = cmake_sets(MODULE_CMAKE)
    assert variables["MODULE_NAME"] == ["PALNetLandmarks"]
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME \$\{MODULE_NAME\}\s+SCRIPTS \$\{MODULE_PYTHON_SCRIPTS\}"
                     r"\s+RESOURCES \$\{MODULE_PYTHON_RESOURCES\}", text)
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT \$\{MODULE_NAME\}\.py\s*\)", text)
    assert "class PALNetLandmarksTest(ScriptedLoadableModuleTest)" in (MODULE_DIR / "PALNetLandmarks.py").read_text()


def test_extension_cmake():
    variables, text = cmake_sets(TOP_CMAKE)
    assert re.search(r"\bproject\(\s*PALNet\s*\)", text)
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert " ".join(variables.get("EXTENSION_" + key, [])).strip(), "EXTENSION_{} is empty".format(key)
    assert variables["EXTENSION_DEPENDS"] == ["NA"]
    assert variables["EXTENSION_HOMEPAGE"] == [PROJECT_URL]
    for needed in (r"find_package\(\s*Slicer REQUIRED\s*\)", r"include\(\$\{Slicer_USE_FILE\}\)",
                   r"add_subdirectory\(\s*PALNetLandmarks\s*\)", r"include\(\$\{Slicer_EXTENSION_GENERATE_CONFIG\}\)",
                   r"include\(\$\{Slicer_EXTENSION_CPACK\}\)"):
        assert re.search(needed, text), needed


def s4ext_fields():
    fields = {}
    for line in S4EXT.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            fields[key] = value.strip()
    return fields


def test_s4ext_matches_the_cmake_description():
    fields = s4ext_fields()
    for key in ("scm", "scmurl", "homepage", "category", "description", "iconurl", "screenshoturls", "depends",
                "build_subdirectory", "contributors", "status"):
        assert fields.get(key), "PALNet.s4ext lacks {!r}".format(key)
    assert fields["scm"] == "git" and fields["depends"] == "NA" and fields["build_subdirectory"] == "."
    assert fields["scmurl"].rstrip("/").replace(".git", "") == PROJECT_URL
    variables, _ = cmake_sets(TOP_CMAKE)
    for key in ("homepage", "category", "contributors", "description", "iconurl", "screenshoturls"):
        assert fields[key] == " ".join(variables["EXTENSION_" + key.upper()]), "{} differs from CMakeLists.txt".format(key)


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "{} is not a PNG".format(path)
    return struct.unpack(">II", head[16:24])


def test_urls_point_at_files_of_this_repository_and_icons_are_128px():
    fields = s4ext_fields()
    raw = PROJECT_URL.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    for url in [fields["iconurl"]] + fields["screenshoturls"].split():
        assert url.startswith(raw), url
        assert (REPO / url[len(raw):]).is_file(), "{} names a file that is not in the repository".format(url)
    assert png_size(REPO / fields["iconurl"][len(raw):]) == (128, 128)
    assert png_size(MODULE_DIR / "Resources" / "Icons" / "PALNetLandmarks.png") == (128, 128)
    module_text = (MODULE_DIR / "PALNetLandmarks.py").read_text(encoding="utf-8")
    docs = re.search(r'DOCS_URL = "([^"]+)"', module_text).group(1)
    assert docs.startswith(PROJECT_URL + "/") and (REPO / docs.split("/blob/main/")[1]).is_file()


# The keys of Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json, which rejects
# any other ("additionalProperties": false); the Extensions Index takes this file since Slicer 5.8.
CATALOG_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                "build_subdirectory", "enabled", "tier"}
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}


def test_catalog_entry_follows_slicers_schema_and_agrees_with_the_s4ext():
    import json
    entry = json.loads((REPO / "PALNet.json").read_text(encoding="utf-8"))
    assert CATALOG_REQUIRED <= set(entry) <= CATALOG_KEYS, set(entry) ^ CATALOG_KEYS
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#")
    assert entry.get("scm_type", "git") in ("git", "local") and entry.get("tier", 5) in (1, 3, 5)
    assert isinstance(entry["build_dependencies"], list) and isinstance(entry["enabled"], bool)
    fields = s4ext_fields()
    assert entry["category"] == fields["category"] and entry["scm_url"] == fields["scmurl"]
    assert entry["scm_revision"] == fields["scmrevision"] and entry["build_subdirectory"] == fields["build_subdirectory"]
