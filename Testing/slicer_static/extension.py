"""Rule 5: the extension's description.  ``<Extension>.s4ext`` agrees with the EXTENSION_* values of
CMakeLists.txt; icon and screenshot URLs are raw image URLs of files in the repository; the Extensions Index
catalog entry ``<Extension>.json`` agrees with both."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlparse

from .cmake import parse_cmake
from .common import loc
from .config import EXTENSION_NAME, IMAGE_SUFFIXES, S4EXT_MAY_BE_EMPTY, S4EXT_REQUIRED_KEYS, S4EXT_TO_CMAKE, Problems


# --------------------------------------------------------------------------------------------------------------------
# Rule 5: s4ext ↔ CMake metadata, image URLs
# --------------------------------------------------------------------------------------------------------------------
def parse_s4ext(path: Path) -> Tuple[Dict[str, Tuple[str, int]], Problems]:
    entries: Dict[str, Tuple[str, int]] = {}
    problems: Problems = []
    for number, raw in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        key, value = parts[0].lower(), (parts[1].strip() if len(parts) > 1 else "")
        if key in entries:
            problems.append(f"{path.name}:{number}: duplicate key {key!r} (first at line {entries[key][1]})")
        entries[key] = (value, number)
    return entries, problems


def _words(value: str) -> List[str]:
    return [w for w in re.split(r"[\s;]+", value.strip()) if w]


def _depends(value: str) -> set:
    return {w for w in _words(value) if w.upper() != "NA"}


def _norm_text(value: str) -> str:
    return " ".join(value.split())


def check_s4ext(repo: Path) -> Problems:
    """Rule 5: ``<Extension>.s4ext`` has every key and agrees with the EXTENSION_* values of CMakeLists.txt."""
    repo = Path(repo)
    s4ext = repo / f"{EXTENSION_NAME}.s4ext"
    cmake_path = repo / "CMakeLists.txt"
    problems: Problems = []
    if not s4ext.is_file():
        problems.append(f"{s4ext.name}:1: missing")
    if not cmake_path.is_file():
        problems.append("CMakeLists.txt:1: missing")
    if problems:
        return problems
    entries, problems = parse_s4ext(s4ext)
    cm = parse_cmake(cmake_path)
    projects = cm.calls("project")
    if not projects or not projects[0].args or projects[0].args[0][0] != EXTENSION_NAME:
        problems.append(f"{loc(repo, cmake_path, projects[0].line if projects else 1)}: expected "
                        f"project({EXTENSION_NAME})")
    raw_text = " ".join(t for c in cm.commands for t, _, _ in c.raw)
    for needed in ("${Slicer_USE_FILE}", "${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"):
        if needed not in raw_text:
            problems.append(f"{loc(repo, cmake_path, 1)}: missing include({needed})")
    if not any(c.values()[:1] == ["Slicer"] for c in cm.calls("find_package")):
        problems.append(f"{loc(repo, cmake_path, 1)}: missing find_package(Slicer REQUIRED)")
    for key in S4EXT_REQUIRED_KEYS:
        if key not in entries:
            problems.append(f"{s4ext.name}:1: missing key {key!r}")
        elif not entries[key][0] and key not in S4EXT_MAY_BE_EMPTY:
            problems.append(f"{s4ext.name}:{entries[key][1]}: key {key!r} is empty")
    if "build_subdirectory" in entries and entries["build_subdirectory"][0] \
            and not (repo / entries["build_subdirectory"][0] / "CMakeLists.txt").is_file():
        problems.append(f"{s4ext.name}:{entries['build_subdirectory'][1]}: build_subdirectory "
                        f"{entries['build_subdirectory'][0]!r} has no CMakeLists.txt")
    if "enabled" in entries and entries["enabled"][0] not in ("0", "1"):
        problems.append(f"{s4ext.name}:{entries['enabled'][1]}: enabled must be 0 or 1")
    for key, var in S4EXT_TO_CMAKE.items():
        cvalue = cm.var_string(var)
        cline = cm.set_lines.get(var, 1)
        if cvalue is None or (not cvalue.strip() and key not in ("screenshoturls",)):
            problems.append(f"{loc(repo, cmake_path, cline)}: {var} is not set")
            continue
        if key not in entries:
            continue
        svalue, sline = entries[key]
        if key == "depends":
            same = _depends(svalue) == _depends(cvalue)
        elif key == "screenshoturls":
            same = _words(svalue) == _words(cvalue)
        elif key in ("contributors", "description"):
            same = _norm_text(svalue) == _norm_text(cvalue)
        else:
            same = svalue.strip() == cvalue.strip()
        if not same:
            problems.append(f"{s4ext.name}:{sline}: {key} {svalue!r} differs from {var} {cvalue!r} "
                            f"({loc(repo, cmake_path, cline)})")
    if "depends" in entries and not _words(entries["depends"][0]):
        problems.append(f"{s4ext.name}:{entries['depends'][1]}: depends is empty: write NA when there is none")
    return problems


def _github_repo(url: str) -> Optional[Tuple[str, str]]:
    u = urlparse(url)
    parts = [p for p in u.path.split("/") if p]
    if u.netloc.lower() in ("github.com", "www.github.com") and len(parts) >= 2:
        return parts[0].lower(), re.sub(r"\.git$", "", parts[1]).lower()
    return None


def _url_repo_path(repo: Path, url: str) -> Tuple[Optional[str], Optional[str], Optional[Tuple[str, str]]]:
    """``(repository path, problem, (owner, repo))`` for a raw image URL."""
    u = urlparse(url)
    host = u.netloc.lower()
    parts = [p for p in u.path.split("/") if p]
    if host == "raw.githubusercontent.com" and len(parts) >= 4:
        rest = parts[2:]
        if rest[:2] == ["refs", "heads"] or rest[:2] == ["refs", "tags"]:
            rest = rest[2:]
        return "/".join(rest[1:]), None, (parts[0].lower(), parts[1].lower())
    if host in ("github.com", "www.github.com") and len(parts) >= 5:
        owner_repo = (parts[0].lower(), parts[1].lower())
        if parts[2] == "raw" or (parts[2] == "blob" and parse_qs(u.query).get("raw") == ["true"]):
            return "/".join(parts[4:]), None, owner_repo
        return None, "is a GitHub page, not a raw image URL (use https://raw.githubusercontent.com/...)", owner_repo
    for i in range(len(parts)):        # other hosts: the longest suffix that exists in the repository
        candidate = "/".join(parts[i:])
        if (repo / candidate).is_file():
            return candidate, None, None
    return None, "names no file of the repository", None


def check_image_urls(repo: Path) -> Problems:
    """Rule 5: icon and screenshot URLs (CMake and s4ext) are https raw image URLs of files in the repository."""
    repo = Path(repo)
    problems: Problems = []
    urls: List[Tuple[str, str]] = []
    homepage = None
    if (repo / "CMakeLists.txt").is_file():
        cm = parse_cmake(repo / "CMakeLists.txt")
        for var in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
            line = cm.set_lines.get(var, 1)
            urls.extend((u, f"CMakeLists.txt:{line} {var}") for u in _words(cm.var_string(var) or ""))
        homepage = cm.var_string("EXTENSION_HOMEPAGE")
    s4ext = repo / f"{EXTENSION_NAME}.s4ext"
    if s4ext.is_file():
        entries, _ = parse_s4ext(s4ext)
        for key in ("iconurl", "screenshoturls"):
            if key in entries:
                urls.extend((u, f"{s4ext.name}:{entries[key][1]} {key}") for u in _words(entries[key][0]))
        homepage = homepage or entries.get("homepage", ("", 0))[0]
    if not any("ICONURL" in where or "iconurl" in where for _, where in urls):
        problems.append("no icon URL in CMakeLists.txt (EXTENSION_ICONURL) nor in the .s4ext (iconurl)")
    home = _github_repo(homepage or "")
    for url, where in dict.fromkeys(urls):
        u = urlparse(url)
        if u.scheme != "https":
            problems.append(f"{where}: {url} is not an https URL")
            continue
        if not u.path.lower().endswith(IMAGE_SUFFIXES):
            problems.append(f"{where}: {url} is not an image URL ({', '.join(IMAGE_SUFFIXES)})")
            continue
        rel, problem, owner_repo = _url_repo_path(repo, url)
        if problem:
            problems.append(f"{where}: {url} {problem}")
            continue
        if home and owner_repo and owner_repo != home:
            problems.append(f"{where}: {url} points to {'/'.join(owner_repo)}, not to the homepage's repository "
                            f"{'/'.join(home)}")
        if rel is not None and not (repo / rel).is_file():
            problems.append(f"{where}: {url} → {rel} does not exist in the repository")
    return problems


# --------------------------------------------------------------------------------------------------------------------
# The Extensions Index catalog entry
# --------------------------------------------------------------------------------------------------------------------
def check_catalog_entry(repo: Path) -> Problems:
    """The Extensions Index catalog entry ``<Extension>.json`` (what the Index takes today) agrees with CMake and the
    s4ext: required keys, category, build dependencies = EXTENSION_DEPENDS, scm url = the s4ext's."""
    repo = Path(repo)
    path = repo / f"{EXTENSION_NAME}.json"
    if not path.is_file():
        return [f"{path.name}:1: missing (the Extensions Index catalog entry)"]
    try:
        entry = json.loads(path.read_text())
    except ValueError as exc:
        return [f"{path.name}:1: not JSON ({exc})"]
    problems: Problems = [f"{path.name}:1: missing key {key!r}" for key in ("$schema", "category", "scm_url")
                          if key not in entry]
    cm = parse_cmake(repo / "CMakeLists.txt")
    if entry.get("category") != (cm.var_string("EXTENSION_CATEGORY") or "").strip():
        problems.append(f"{path.name}:1: category {entry.get('category')!r} differs from EXTENSION_CATEGORY")
    if set(entry.get("build_dependencies", [])) != _depends(cm.var_string("EXTENSION_DEPENDS") or ""):
        problems.append(f"{path.name}:1: build_dependencies {entry.get('build_dependencies')} differ from "
                        f"EXTENSION_DEPENDS")
    entries, _ = parse_s4ext(repo / f"{EXTENSION_NAME}.s4ext")
    if "scmurl" in entries and entry.get("scm_url") != entries["scmurl"][0].strip():
        problems.append(f"{path.name}:1: scm_url {entry.get('scm_url')!r} differs from the s4ext's scmurl")
    return problems
