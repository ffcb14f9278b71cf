"""Rule 4: the CMake lists.  A small CMake tokenizer/evaluator; each module's CMakeLists.txt lists every script and
resource (and nothing that does not exist); the top-level one ships the core packages and adds the modules."""
from __future__ import annotations

import fnmatch
import glob
import os
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from .common import discover_modules, ignored, loc, relpath, walk_files
from .config import ALLOWED_EXTRA_SUBDIRECTORIES, COMMON_LIB, CORE_PACKAGE, Problems


# --------------------------------------------------------------------------------------------------------------------
# CMake: a small tokenizer/evaluator (set, list(APPEND), file(GLOB), ${VAR}; if/foreach are not evaluated)
# --------------------------------------------------------------------------------------------------------------------
_CMAKE_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CMAKE_BRACKET_OPEN = re.compile(r"\[(=*)\[")
_CMAKE_VAR = re.compile(r"\$\{([^${}]*)\}")
_SEMICOLON_ESCAPE = "\x00"


class CMakeCommand:
    def __init__(self, name: str, line: int, args: List[Tuple[str, int]], raw: List[Tuple[str, str, int]]):
        self.name = name.lower()
        self.line = line
        self.args = args          # expanded: (value, line)
        self.raw = raw            # as written: (text, kind, line)

    def values(self) -> List[str]:
        return [v for v, _ in self.args]

    def keyword(self, keyword: str, keywords: Iterable[str]) -> Optional[List[Tuple[str, int]]]:
        """Values after ``keyword`` up to the next of ``keywords`` (None when the keyword is absent)."""
        keywords = set(keywords)
        out: Optional[List[Tuple[str, int]]] = None
        for value, line in ((piece, ln) for v, ln in self.args for piece in v.split(";") if piece):
            if value in keywords:
                if out is not None and value != keyword:
                    break
                if value == keyword:
                    out = []
                continue
            if out is not None:
                out.append((value, line))
        return out


class CMakeFile:
    def __init__(self, path: Path, commands: List[CMakeCommand], variables: Dict[str, List[Tuple[str, int]]],
                 set_lines: Dict[str, int]):
        self.path = path
        self.commands = commands
        self.variables = variables
        self.set_lines = set_lines

    def calls(self, name: str) -> List[CMakeCommand]:
        return [c for c in self.commands if c.name == name.lower()]

    def var(self, name: str) -> Optional[List[Tuple[str, int]]]:
        return self.variables.get(name)

    def var_string(self, name: str) -> Optional[str]:
        items = self.variables.get(name)
        return None if items is None else ";".join(v for v, _ in items)


def _cmake_skip_comment(text: str, i: int, line: int) -> Tuple[int, int]:
    m = _CMAKE_BRACKET_OPEN.match(text, i + 1)
    if m:
        close = text.find("]" + m.group(1) + "]", m.end())
        end = len(text) if close < 0 else close + len(m.group(1)) + 2
        return end, line + text.count("\n", i, end)
    end = text.find("\n", i)
    return (len(text) if end < 0 else end), line


def _cmake_args(text: str, i: int, line: int) -> Tuple[List[Tuple[str, str, int]], int, int]:
    args: List[Tuple[str, str, int]] = []
    depth, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "#":
            i, line = _cmake_skip_comment(text, i, line)
        elif c == "(":
            depth += 1
            args.append(("(", "paren", line))
            i += 1
        elif c == ")":
            if depth == 0:
                return args, i + 1, line
            depth -= 1
            args.append((")", "paren", line))
            i += 1
        elif c == '"':
            j, start, buf = i + 1, line, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    nxt = text[j + 1]
                    if nxt == "\n":
                        line += 1
                    else:
                        buf.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
                    j += 2
                    continue
                if text[j] == "\n":
                    line += 1
                buf.append(text[j])
                j += 1
            args.append(("".join(buf), "quoted", start))
            i = j + 1
        elif _CMAKE_BRACKET_OPEN.match(text, i):
            m = _CMAKE_BRACKET_OPEN.match(text, i)
            close = text.find("]" + m.group(1) + "]", m.end())
            close = n if close < 0 else close
            content = text[m.end():close]
            if content.startswith("\n"):
                content = content[1:]
            args.append((content, "bracket", line))
            line += text.count("\n", i, close)
            i = close + len(m.group(1)) + 2
        else:
            j, buf = i, []
            while j < n and text[j] not in ' \t\r\n()"#':
                if text[j] == "\\" and j + 1 < n:
                    nxt = text[j + 1]
                    buf.append(_SEMICOLON_ESCAPE if nxt == ";" else {"n": "\n", "t": "\t"}.get(nxt, nxt))
                    j += 2
                    continue
                buf.append(text[j])
                j += 1
            args.append(("".join(buf), "unquoted", line))
            i = j
    return args, i, line


def tokenize_cmake(text: str) -> List[Tuple[str, int, List[Tuple[str, str, int]]]]:
    """``[(command, line, [(arg, kind, line), ...]), ...]`` with comments removed."""
    commands = []
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "#":
            i, line = _cmake_skip_comment(text, i, line)
        else:
            m = _CMAKE_IDENT.match(text, i)
            if not m:
                i += 1
                continue
            j = m.end()
            while j < n and text[j] in " \t":
                j += 1
            if j < n and text[j] == "(":
                start = line
                args, i, line = _cmake_args(text, j + 1, line)
                commands.append((m.group(0), start, args))
            else:
                i = m.end()
    return commands


def _cmake_expand(value: str, variables: Dict[str, List[Tuple[str, int]]]) -> str:
    for _ in range(50):
        new = _CMAKE_VAR.sub(lambda m: ";".join(v for v, _ in variables.get(m.group(1), [])), value)
        new = re.sub(r"\$ENV\{[^}]*\}", "", new)
        if new == value:
            break
        value = new
    return value


def _cmake_glob(base: Path, args: List[str], recurse: bool) -> List[str]:
    relative, patterns, it = None, [], iter(args)
    for a in it:
        if a == "RELATIVE":
            relative = next(it, None)
        elif a == "LIST_DIRECTORIES":
            next(it, None)
        elif a in ("CONFIGURE_DEPENDS", "FOLLOW_SYMLINKS"):
            continue
        else:
            patterns.append(a)
    found = []
    for pattern in patterns:
        full = pattern if os.path.isabs(pattern) else str(base / pattern)
        if recurse:
            folder, name = os.path.split(full)
            for root, dirs, files in os.walk(folder):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                found.extend(os.path.join(root, f) for f in files if fnmatch.fnmatchcase(f, name))
        else:
            found.extend(p for p in glob.glob(full) if os.path.isfile(p))
    found = sorted(set(found))
    if relative:
        found = [Path(os.path.relpath(p, relative)).as_posix() for p in found]
    else:
        found = [Path(p).as_posix() for p in found]
    return found


def parse_cmake(path: Path) -> CMakeFile:
    path = Path(path)
    folder = path.parent.resolve().as_posix()
    variables: Dict[str, List[Tuple[str, int]]] = {
        k: [(folder, 0)] for k in ("CMAKE_CURRENT_SOURCE_DIR", "CMAKE_CURRENT_LIST_DIR", "CMAKE_SOURCE_DIR",
                                   "PROJECT_SOURCE_DIR")}
    set_lines: Dict[str, int] = {}
    commands: List[CMakeCommand] = []
    for name, line, raw in tokenize_cmake(path.read_text(encoding="utf-8")):
        args: List[Tuple[str, int]] = []
        for text, kind, arg_line in raw:
            if kind == "paren":
                continue
            if kind == "bracket":
                args.append((text, arg_line))
            elif kind == "quoted":
                args.append((_cmake_expand(text, variables), arg_line))
            else:
                for item in _cmake_expand(text, variables).split(";"):
                    if item:
                        args.append((item.replace(_SEMICOLON_ESCAPE, ";"), arg_line))
        command = CMakeCommand(name, line, args, raw)
        commands.append(command)
        values = command.values()
        if command.name == "set" and values:
            items = args[1:]
            vals = [v for v, _ in items]
            if "CACHE" in vals:
                items = items[:vals.index("CACHE")]
            if items and items[-1][0] == "PARENT_SCOPE":
                items = items[:-1]
            # a quoted value holding ';' is a list too
            flat = [(piece, ln) for v, ln in items for piece in v.split(";") if piece] if len(items) != 1 \
                else [(items[0][0], items[0][1])]
            variables[values[0]] = flat
            set_lines[values[0]] = line
        elif command.name == "list" and len(values) >= 2 and values[0] == "APPEND":
            variables.setdefault(values[1], []).extend(args[2:])
            set_lines.setdefault(values[1], line)
        elif command.name == "file" and len(values) >= 2 and values[0] in ("GLOB", "GLOB_RECURSE"):
            found = _cmake_glob(path.parent, values[2:], values[0] == "GLOB_RECURSE")
            variables[values[1]] = [(f, line) for f in found]
            set_lines[values[1]] = line
        elif command.name == "project" and values:
            variables["PROJECT_NAME"] = [(values[0], line)]
    return CMakeFile(path, commands, variables, set_lines)


def _cmake_script_path(value: str) -> str:
    """CTK's ctkMacroCompilePythonScript appends ``.py`` to a script without a ``py`` extension."""
    name = value.rsplit("/", 1)[-1]
    ext = name[name.index("."):] if "." in name else ""
    return value if "py" in ext else value + ".py"


def _relative_to(folder: Path, value: str) -> Optional[str]:
    """``value`` (relative to ``folder`` or absolute under it) as a normalized posix path; None when outside."""
    p = Path(value)
    if p.is_absolute():
        try:
            return Path(os.path.normpath(str(p))).relative_to(folder.resolve()).as_posix()
        except ValueError:
            return None
    norm = os.path.normpath(value).replace(os.sep, "/")
    return None if norm.startswith("../") else norm


# --------------------------------------------------------------------------------------------------------------------
# Rule 4: CMake lists
# --------------------------------------------------------------------------------------------------------------------
_MODULE_MACRO_KEYWORDS = ("NAME", "SCRIPTS", "RESOURCES", "WITH_GENERIC_TESTS", "WITH_SUBDIR")
_CTK_COMPILE_KEYWORDS = ("TARGET_NAME", "SCRIPTS", "RESOURCES", "SOURCE_DIR", "DESTINATION_DIR", "INSTALL_DIR",
                         "NO_INSTALL_SUBDIR", "GLOBAL_TARGET")


def _files_needing_listing(folder: Path) -> List[Path]:
    """Files of ``folder`` not in a sub-folder that has its own CMakeLists.txt."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith(".")
                         and not (Path(root) / d / "CMakeLists.txt").is_file())
        out.extend(Path(root) / f for f in sorted(files) if not f.startswith(".") and not ignored(f))
    return out


def check_module_cmake(repo: Path, module: str) -> Problems:
    """Rule 4: the module's CMakeLists.txt lists every script and resource, and everything it lists exists."""
    repo = Path(repo)
    folder = repo / module
    cmake_path = folder / "CMakeLists.txt"
    if not cmake_path.is_file():
        return [f"{relpath(repo, cmake_path)}:1: missing"]
    cm = parse_cmake(cmake_path)
    problems: Problems = []
    at = lambda line: loc(repo, cmake_path, line)  # noqa: E731
    listed: Dict[str, Dict[str, int]] = {}
    for var, kind in (("MODULE_PYTHON_SCRIPTS", "script"), ("MODULE_PYTHON_RESOURCES", "resource")):
        items = cm.var(var)
        if items is None:
            problems.append(f"{at(1)}: no set({var} ...)")
            items = []
        listed[kind] = {}
        for value, line in items:
            value = _cmake_script_path(value) if kind == "script" else value
            rel = _relative_to(folder, value)
            if rel is None:
                problems.append(f"{at(line)}: {var} entry {value!r} is outside {module}/")
                continue
            listed[kind][rel] = line
            if not (folder / rel).is_file():
                problems.append(f"{at(line)}: {var} lists {rel!r}, which does not exist in {module}/")
    macros = cm.calls("slicerMacroBuildScriptedModule")
    if not macros:
        problems.append(f"{at(1)}: no slicerMacroBuildScriptedModule(...)")
    for macro in macros:
        name = macro.keyword("NAME", _MODULE_MACRO_KEYWORDS) or []
        if [v for v, _ in name] != [module]:
            problems.append(f"{at(macro.line)}: slicerMacroBuildScriptedModule NAME is "
                            f"{' '.join(v for v, _ in name)!r}, expected {module!r}")
        for keyword, var in (("SCRIPTS", "MODULE_PYTHON_SCRIPTS"), ("RESOURCES", "MODULE_PYTHON_RESOURCES")):
            given = [v for v, _ in (macro.keyword(keyword, _MODULE_MACRO_KEYWORDS) or [])]
            expected = [v for v, _ in (cm.var(var) or [])]
            if given != expected:
                problems.append(f"{at(macro.line)}: slicerMacroBuildScriptedModule {keyword} is not ${{{var}}}")
    scripts_line = cm.set_lines.get("MODULE_PYTHON_SCRIPTS", 1)
    resources_line = cm.set_lines.get("MODULE_PYTHON_RESOURCES", 1)
    for path in _files_needing_listing(folder):
        rel = path.relative_to(folder).as_posix()
        if path.suffix == ".py" and rel not in listed["script"]:
            problems.append(f"{at(scripts_line)}: {module}/{rel} is not listed in MODULE_PYTHON_SCRIPTS (it would "
                            f"not be installed)")
        elif rel.startswith("Resources/") and rel not in listed["resource"]:
            problems.append(f"{at(resources_line)}: {module}/{rel} is not listed in MODULE_PYTHON_RESOURCES (it "
                            f"would not be installed)")
    return problems


def _core_listing(repo: Path, cm: CMakeFile) -> Tuple[Dict[str, int], Dict[str, int], Problems]:
    """Scripts and resources of every ctkMacroCompilePythonScript call (relative to the repository)."""
    scripts: Dict[str, int] = {}
    resources: Dict[str, int] = {}
    problems: Problems = []
    for call in cm.calls("ctkMacroCompilePythonScript"):
        source = call.keyword("SOURCE_DIR", _CTK_COMPILE_KEYWORDS)
        base = Path(source[0][0]) if source else repo
        base = base if base.is_absolute() else repo / base
        for keyword, out in (("SCRIPTS", scripts), ("RESOURCES", resources)):
            for value, line in call.keyword(keyword, _CTK_COMPILE_KEYWORDS) or []:
                value = _cmake_script_path(value) if keyword == "SCRIPTS" else value
                full = Path(value) if Path(value).is_absolute() else base / value
                rel = _relative_to(repo, str(full.resolve()) if full.exists() else os.path.normpath(str(full)))
                if rel is None:
                    problems.append(f"{loc(repo, cm.path, line)}: {keyword} entry {value!r} is outside the "
                                    f"repository")
                    continue
                out[rel] = line
    return scripts, resources, problems


def check_top_cmake(repo: Path) -> Problems:
    """Rule 4: the top-level CMakeLists.txt ships every file of ``infanite/`` and ``INFANiTECommonLib/`` with
    ctkMacroCompilePythonScript (.py as SCRIPTS, data files as RESOURCES), and everything listed exists."""
    repo = Path(repo)
    cmake_path = repo / "CMakeLists.txt"
    if not cmake_path.is_file():
        return ["CMakeLists.txt:1: missing"]
    cm = parse_cmake(cmake_path)
    problems: Problems = []
    calls = cm.calls("ctkMacroCompilePythonScript")
    if not calls:
        return [f"{loc(repo, cmake_path, 1)}: no ctkMacroCompilePythonScript(...) shipping {CORE_PACKAGE}/ and "
                f"{COMMON_LIB}/"]
    scripts, resources, problems = _core_listing(repo, cm)
    first = calls[0].line
    for kind, listing in (("SCRIPTS", scripts), ("RESOURCES", resources)):
        for rel, line in sorted(listing.items()):
            if not (repo / rel).is_file():
                problems.append(f"{loc(repo, cmake_path, line)}: ctkMacroCompilePythonScript {kind} lists {rel!r}, "
                                f"which does not exist")
            elif kind == "SCRIPTS" and not rel.endswith(".py"):
                problems.append(f"{loc(repo, cmake_path, line)}: {rel!r} is not a Python script: list it in "
                                f"RESOURCES")
    for package in (CORE_PACKAGE, COMMON_LIB):
        folder = repo / package
        if not folder.is_dir():
            problems.append(f"{package}/: missing")
            continue
        for path in walk_files(folder):
            rel = path.relative_to(repo).as_posix()
            if path.suffix == ".py" and rel not in scripts:
                problems.append(f"{loc(repo, cmake_path, first)}: {rel} is not in the SCRIPTS of "
                                f"ctkMacroCompilePythonScript (it would not be installed)")
            elif path.suffix != ".py" and rel not in resources:
                problems.append(f"{loc(repo, cmake_path, first)}: data file {rel} is not in the RESOURCES of "
                                f"ctkMacroCompilePythonScript (it would not be installed)")
    return problems


def check_top_subdirectories(repo: Path) -> Problems:
    """Rule 4: top-level add_subdirectory() list = the module folders."""
    repo = Path(repo)
    cmake_path = repo / "CMakeLists.txt"
    if not cmake_path.is_file():
        return ["CMakeLists.txt:1: missing"]
    cm = parse_cmake(cmake_path)
    added: Dict[str, int] = {}
    for call in cm.calls("add_subdirectory"):
        if call.args:
            added[os.path.normpath(call.args[0][0]).replace(os.sep, "/")] = call.line
    modules = set(discover_modules(repo))
    problems: Problems = []
    for name, line in sorted(added.items()):
        if name not in modules and name not in ALLOWED_EXTRA_SUBDIRECTORIES:
            problems.append(f"{loc(repo, cmake_path, line)}: add_subdirectory({name}) is not a module folder "
                            f"(modules: {', '.join(sorted(modules)) or 'none'})")
    for name in sorted(modules - set(added)):
        problems.append(f"{loc(repo, cmake_path, 1)}: module {name}/ is missing add_subdirectory({name})")
    return problems
