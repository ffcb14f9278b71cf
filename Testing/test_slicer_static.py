"""Static checks of what only desktop 3D Slicer runs: the scripted modules, their .ui files, the CMake build and
the extension description.  Nothing here imports Qt, Slicer or the modules; everything is read with ``ast``,
``xml`` and a small CMake tokenizer, so it runs on a clean clone with the standard library and pytest.

Modules are discovered: every top-level folder ``INFANiTE*/`` holding ``<Folder>.py`` (``INFANiTECommonLib/`` is a
shared package, not a module).  The checkers are plain functions taking the repository root (and a module name)
and returning a list of problems ``"path:line: message"``; the ``test_checker_*`` tests at the end build a small
fake extension under ``tmp_path``, show that it passes, then break it once per rule and show each checker fails.

The lists and tables just below are the knobs: extend them when a new Slicer API or widget is used.
"""
from __future__ import annotations

import ast
import fnmatch
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import warnings
import xml.etree.ElementTree as ET
import xml.parsers.expat
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlparse

import pytest

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------------------------------
# Configuration (easy to extend)
# --------------------------------------------------------------------------------------------------------------------
EXTENSION_NAME = "INFANiTE"          # project(...) name, <name>.s4ext, module folder prefix
MODULE_PREFIX = "INFANiTE"
COMMON_LIB = "INFANiTECommonLib"     # shared package, not a module
CORE_PACKAGE = "infanite"            # core package (imports torch/nibabel): never at file scope of Slicer code
MAX_MODULE_LINES = 400               # <Module>.py stays short; logic lives in <Module>Lib

#: ``self.<name> = …`` allowed inside ``<Module>Widget`` (fnmatch patterns).  Everything else is state that belongs
#: in the parameter node or in the logic.
ALLOWED_WIDGET_ATTRIBUTES = [
    "ui", "logic", "_parameterNode", "_parameterNodeGuiTag",
    "_timer", "_timer*",              # QTimer polling a background process
    "_process", "_process*", "_proc",  # background process handles
    "_shortcuts", "_shortcut*",        # QShortcut objects (must be deleted in cleanup)
    "layout", "_layout*", "_previousLayout*", "_savedLayout*",  # layout switching / restoring
]

#: top widget class of every .ui file
ALLOWED_TOP_WIDGETS = {"qMRMLWidget", "QWidget"}

#: top-level packages that may be imported at file scope by module files, their Lib packages and INFANiTECommonLib
#: (besides the standard library, INFANiTECommonLib, the module's own Lib and relative imports): what Slicer bundles.
ALLOWED_FILE_SCOPE_IMPORTS = {
    "__future__", "slicer", "vtk", "vtkmodules", "qt", "ctk", "numpy", "SimpleITK", "sitkUtils", "scipy",
    "SampleData", "vtkSegmentationCorePython", "PythonQt",
}
#: never at file scope, with the reason shown in the failure
FORBIDDEN_FILE_SCOPE_IMPORTS = {
    CORE_PACKAGE: "it imports torch/nibabel transitively; import it inside the function that needs it",
}

#: calls that install packages: never at file scope nor in a module class __init__
INSTALLER_CALLS = {"pip_install", "pip_ensure", "installTorch", "install_python_dependencies"}
#: calls that must never receive a torch requirement (PyTorch comes from the PyTorch extension)
PIP_CALLS = {"pip_install", "pip_ensure"}
TORCH_RE = re.compile(r"(?<![\w.\-])torch(?![\w])")

#: files under a module's Resources/ or in the shipped packages that need not be listed in CMake
IGNORED_FILE_PATTERNS = ["*.pyc", ".DS_Store", "Thumbs.db", "*~", "*.swp", ".gitignore", ".gitkeep"]

#: folders added with add_subdirectory() at top level that are not modules
ALLOWED_EXTRA_SUBDIRECTORIES: set = set()

# --- widget classes by family ------------------------------------------------------------------------------------
BUTTONS = {"QAbstractButton", "QPushButton", "QToolButton", "QCheckBox", "QRadioButton", "QCommandLinkButton",
           "ctkPushButton", "ctkCheckablePushButton", "ctkCheckBox", "ctkMenuButton", "ctkExpandButton",
           "ctkColorPickerButton", "ctkCollapsibleButton", "ctkActionsWidget"}
CHECKABLE_GROUPS = {"QGroupBox", "ctkCollapsibleGroupBox"}
SPIN_SLIDERS = {"QSpinBox", "QDoubleSpinBox", "ctkSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget", "ctkDoubleSlider",
                "QSlider", "QDial", "QScrollBar", "QAbstractSlider", "qMRMLSliderWidget", "qMRMLSpinBox"}
RANGES = {"ctkRangeWidget", "ctkDoubleRangeSlider", "ctkRangeSlider", "qMRMLRangeWidget"}
PROGRESS = {"QProgressBar"}
PATH_EDITS = {"ctkPathLineEdit"}
DIRECTORY_BUTTONS = {"ctkDirectoryButton"}
PLAIN_TEXT_EDITS = {"QPlainTextEdit"}
RICH_TEXT_EDITS = {"QTextEdit", "QTextBrowser", "ctkFittedTextBrowser"}
TEXT_EDITS = PLAIN_TEXT_EDITS | RICH_TEXT_EDITS
LINE_EDITS = {"QLineEdit", "ctkSearchBox"}
LABELS = {"QLabel", "ctkElidedLabel"}
COMBOS = {"QComboBox", "QFontComboBox", "ctkComboBox", "ctkCheckableComboBox"}
TABLE_VIEWS = {"QTableView", "QTableWidget", "qMRMLTableView"}
ITEM_VIEWS = TABLE_VIEWS | {"QListView", "QListWidget", "QTreeView", "QTreeWidget", "QColumnView", "QAbstractItemView",
                            "qMRMLTreeView", "qMRMLSubjectHierarchyTreeView", "qMRMLListWidget"}
TABS = {"QTabWidget", "ctkTabWidget", "QTabBar"}
COLLAPSIBLES = {"ctkCollapsibleButton", "ctkCollapsibleGroupBox"}
COORDINATES = {"ctkCoordinatesWidget", "qMRMLCoordinatesWidget"}
ACTIONS = {"QAction"}                # <action> elements of a .ui
MRML = {"qMRML*", "qSlicer*"}        # "*" = prefix

#: ``self.ui.<widget>.<member>`` (call, signal, property, or a "signal(args)" string given to .connect) → the
#: widget classes that have it.  Members not listed are not checked.
METHOD_CLASSES: Dict[str, set] = {}


def _allow(members: str, classes: Iterable[str]) -> None:
    for member in members.split():
        METHOD_CLASSES.setdefault(member, set()).update(classes)


_allow("clicked", BUTTONS | CHECKABLE_GROUPS)
_allow("toggled checked setChecked isChecked checkable setCheckable", BUTTONS | CHECKABLE_GROUPS | ACTIONS)
_allow("click pressed released animateClick iconSize setIconSize", BUTTONS)
_allow("toggle icon setIcon", BUTTONS | ACTIONS)
_allow("triggered trigger", ACTIONS)
_allow("checkState setCheckState", {"QCheckBox", "ctkCheckBox", "ctkCheckablePushButton"})
_allow("stateChanged", {"QCheckBox", "ctkCheckBox"})
_allow("checkBoxToggled checkBoxControlsButton setCheckBoxControlsButton", {"ctkCheckablePushButton"})
_allow("setMRMLScene mrmlScene currentNode setCurrentNode currentNodeChanged currentNodeID setCurrentNodeID "
       "currentNodeIDChanged nodeTypes setNodeTypes addEnabled setAddEnabled removeEnabled setRemoveEnabled "
       "noneEnabled setNoneEnabled renameEnabled setRenameEnabled showHidden setShowHidden nodeAdded nodeAddedByUser "
       "nodeActivated nodeAboutToBeRemoved selectNodeUponCreation baseName setBaseName addAttribute "
       "setMRMLTransformNode setMRMLVolumeNode", MRML)
_allow("value setValue valueChanged", SPIN_SLIDERS | PROGRESS)
_allow("minimum maximum setMinimum setMaximum setRange", SPIN_SLIDERS | PROGRESS | RANGES)
_allow("singleStep setSingleStep decimals setDecimals suffix setSuffix prefix setPrefix", SPIN_SLIDERS | RANGES)
_allow("minimumValue maximumValue setMinimumValue setMaximumValue setValues valuesChanged minimumValueChanged "
       "maximumValueChanged", RANGES)
_allow("format setFormat textVisible setTextVisible invertedAppearance setInvertedAppearance", PROGRESS)
_allow("currentPath setCurrentPath currentPathChanged filters setFilters nameFilters setNameFilters settingKey "
       "setSettingKey addCurrentPathToHistory validInputChanged showBrowseButton showHistoryButton", PATH_EDITS)
_allow("directory setDirectory directoryChanged directorySelected", DIRECTORY_BUTTONS)
_allow("setMRMLTableNode mrmlTableNode selectedMRMLTableRows selectedMRMLTableColumns", {"qMRMLTableView"})
_allow("selectionChanged", ITEM_VIEWS | LINE_EDITS | TEXT_EDITS)
_allow("setMRMLPlotViewNode mrmlPlotViewNode", {"qMRMLPlotView", "qMRMLPlotWidget"})
_allow("setMRMLSequenceBrowserNode", {"qMRMLSequenceBrowser*"})
_allow("plainText setPlainText toPlainText", TEXT_EDITS)
_allow("appendPlainText maximumBlockCount setMaximumBlockCount", PLAIN_TEXT_EDITS)
_allow("html setHtml toHtml append", RICH_TEXT_EDITS)
_allow("setText", BUTTONS | LABELS | LINE_EDITS | RICH_TEXT_EDITS | ACTIONS)
_allow("text", BUTTONS | LABELS | LINE_EDITS | RICH_TEXT_EDITS | PROGRESS | ACTIONS
       | {"QAbstractSpinBox", "QSpinBox", "QDoubleSpinBox"})
_allow("textChanged", LINE_EDITS | TEXT_EDITS | {"QSpinBox", "QDoubleSpinBox"})
_allow("textEdited returnPressed echoMode setEchoMode", LINE_EDITS)
_allow("placeholderText setPlaceholderText", LINE_EDITS | TEXT_EDITS | COMBOS)
_allow("currentIndexChanged currentText setCurrentText itemText setItemText itemData currentData findText findData "
       "removeItem", COMBOS)
_allow("addItem addItems insertItem currentTextChanged", COMBOS | {"QListWidget"})
_allow("pixmap setPixmap linkActivated wordWrap setWordWrap", LABELS)
_allow("openExternalLinks setOpenExternalLinks", LABELS | {"QTextBrowser", "ctkFittedTextBrowser"})
_allow("rowCount setRowCount columnCount setColumnCount setItem item cellClicked cellChanged cellDoubleClicked "
       "setHorizontalHeaderLabels setVerticalHeaderLabels", {"QTableWidget"})
_allow("currentRow setCurrentRow", {"QTableWidget", "QListWidget"})
_allow("horizontalHeader verticalHeader selectRow selectColumn resizeColumnsToContents resizeRowsToContents",
       TABLE_VIEWS)
_allow("selectionModel setSelectionMode setSelectionBehavior selectedIndexes setEditTriggers itemSelectionChanged",
       ITEM_VIEWS)
_allow("currentItem setCurrentItem currentItemChanged", {"QListWidget", "QTreeWidget", "QTableWidget",
                                                           "qMRMLSubjectHierarchyTreeView",
                                                           "qMRMLSubjectHierarchyComboBox"})
_allow("setTabEnabled isTabEnabled setTabText tabText setTabVisible addTab insertTab removeTab setTabToolTip tabBar",
       TABS)
_allow("currentChanged", TABS | {"QStackedWidget", "QToolBox"})
_allow("collapsed setCollapsed", COLLAPSIBLES)
_allow("contentsCollapsed", {"ctkCollapsibleButton"})
_allow("title setTitle", CHECKABLE_GROUPS)
_allow("coordinates setCoordinates coordinatesChanged", COORDINATES)
_allow("color setColor colorChanged", {"ctkColorPickerButton"})
_allow("placeModeEnabled setPlaceModeEnabled placeMultipleMarkups setPlaceMultipleMarkups", {"qSlicer*"})

#: names that only exist in newer Pythons than 3.9: (module, name) → version, and whole modules
NEW_STDLIB_NAMES = {
    "typing": {"TypeAlias": (3, 10), "ParamSpec": (3, 10), "ParamSpecArgs": (3, 10), "ParamSpecKwargs": (3, 10),
               "Concatenate": (3, 10), "TypeGuard": (3, 10), "is_typeddict": (3, 10), "Self": (3, 11),
               "LiteralString": (3, 11), "Never": (3, 11), "Required": (3, 11), "NotRequired": (3, 11),
               "Unpack": (3, 11), "TypeVarTuple": (3, 11), "assert_never": (3, 11), "assert_type": (3, 11),
               "reveal_type": (3, 11), "dataclass_transform": (3, 11), "override": (3, 12),
               "TypeAliasType": (3, 12), "TypeIs": (3, 13), "ReadOnly": (3, 13)},
    "itertools": {"pairwise": (3, 10), "batched": (3, 12)},
    "enum": {"StrEnum": (3, 11), "ReprEnum": (3, 11), "verify": (3, 11)},
    "datetime": {"UTC": (3, 11)},
    "contextlib": {"chdir": (3, 11), "aclosing": (3, 10)},
    "dataclasses": {"KW_ONLY": (3, 10)},
    "operator": {"call": (3, 11)},
}
NEW_STDLIB_MODULES = {"tomllib": (3, 11)}
#: removed by Python 3.12 (Slicer ≥ 5.10)
REMOVED_312_MODULES = {"distutils", "imp", "asynchat", "asyncore", "smtpd"}
REMOVED_312_UNITTEST_ALIASES = {
    "assertEquals": "assertEqual", "assertNotEquals": "assertNotEqual", "assertAlmostEquals": "assertAlmostEqual",
    "assertNotAlmostEquals": "assertNotAlmostEqual", "assertRegexpMatches": "assertRegex",
    "assertNotRegexpMatches": "assertNotRegex", "assertRaisesRegexp": "assertRaisesRegex",
    "failUnless": "assertTrue", "failIf": "assertFalse", "failUnlessEqual": "assertEqual",
    "failIfEqual": "assertNotEqual", "failUnlessRaises": "assertRaises", "assert_": "assertTrue",
    "failUnlessAlmostEqual": "assertAlmostEqual", "failIfAlmostEqual": "assertNotAlmostEqual",
    "assertDictContainsSubset": "assertLessEqual(sub.items(), d.items())",
}
BUILTIN_TYPE_NAMES = {"int", "float", "str", "bytes", "bool", "complex", "list", "dict", "tuple", "set", "frozenset",
                      "type", "object", "bytearray"}
TYPING_GENERICS = {"Optional", "Union", "List", "Dict", "Tuple", "Set", "FrozenSet", "Callable", "Literal", "Type",
                   "Sequence", "Mapping", "Iterable", "Iterator", "Annotated"}

# s4ext key → CMake variable; how the two values are compared
S4EXT_REQUIRED_KEYS = ["scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors",
                       "category", "iconurl", "status", "description", "screenshoturls", "enabled"]
S4EXT_MAY_BE_EMPTY = {"status", "screenshoturls"}
S4EXT_TO_CMAKE = {"homepage": "EXTENSION_HOMEPAGE", "category": "EXTENSION_CATEGORY",
                  "contributors": "EXTENSION_CONTRIBUTORS", "description": "EXTENSION_DESCRIPTION",
                  "iconurl": "EXTENSION_ICONURL", "screenshoturls": "EXTENSION_SCREENSHOTURLS",
                  "depends": "EXTENSION_DEPENDS"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif")

Problems = List[str]


# --------------------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------------------
def _rel(repo: Path, path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(repo).resolve()).as_posix()
    except ValueError:
        return str(path)


def _loc(repo: Path, path: Path, line: Optional[int]) -> str:
    return f"{_rel(repo, path)}:{line or 1}"


def _ignored(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in IGNORED_FILE_PATTERNS)


def _walk_files(folder: Path) -> Iterator[Path]:
    """Files under ``folder`` (recursively), skipping caches, hidden entries and ignored names."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and not _ignored(name):
                yield Path(root) / name


def discover_modules(repo: Path) -> List[str]:
    """Top-level folders ``INFANiTE*/`` holding ``<Folder>.py``."""
    repo = Path(repo)
    return sorted(d.name for d in repo.iterdir()
                  if d.is_dir() and d.name.startswith(MODULE_PREFIX) and d.name != COMMON_LIB
                  and (d / f"{d.name}.py").is_file())


def incomplete_module_folders(repo: Path) -> List[str]:
    """``INFANiTE*/`` folders that look like modules (a Lib, Resources/ or CMakeLists.txt) but lack ``<Folder>.py``."""
    repo = Path(repo)
    out = []
    for d in sorted(p for p in repo.iterdir() if p.is_dir() and p.name.startswith(MODULE_PREFIX)):
        if d.name == COMMON_LIB or (d / f"{d.name}.py").is_file() or (d / "__init__.py").is_file():
            continue
        if (d / f"{d.name}Lib").is_dir() or (d / "Resources").is_dir() or (d / "CMakeLists.txt").is_file():
            out.append(d.name)
    return out


def python_groups(repo: Path, *, with_core: bool = True) -> List[str]:
    """Folders whose .py files are checked: every module-like ``INFANiTE*/`` folder, the common lib, the core."""
    repo = Path(repo)
    names = [d.name for d in sorted(repo.iterdir()) if d.is_dir() and d.name.startswith(MODULE_PREFIX)]
    if with_core and (repo / CORE_PACKAGE).is_dir():
        names.append(CORE_PACKAGE)
    return names


def group_py_files(repo: Path, group: str) -> List[Path]:
    folder = Path(repo) / group
    return [p for p in _walk_files(folder) if p.suffix == ".py"] if folder.is_dir() else []


def _parse(path: Path) -> Optional[ast.Module]:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return None  # the compile checks report it


def _call_name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func)
    return ""


def _is_type_checking(test: ast.AST) -> bool:
    return _dotted(test).split(".")[-1] == "TYPE_CHECKING"


def _type_checking_nodes(tree: ast.AST) -> set:
    """ids of every node inside an ``if TYPE_CHECKING:`` body (never executed)."""
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for stmt in node.body:
                ids.update(id(n) for n in ast.walk(stmt))
    return ids


def _file_scope_statements(body: Sequence[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements executed when the file is imported: the module body, recursing into if/try/with/for/while and
    class bodies, not into function bodies nor ``if TYPE_CHECKING:`` bodies."""
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from _file_scope_statements(stmt.body)
            yield from _file_scope_statements(stmt.orelse)
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            yield from _file_scope_statements(stmt.body)
            for handler in stmt.handlers:
                yield from _file_scope_statements(handler.body)
            yield from _file_scope_statements(stmt.orelse)
            yield from _file_scope_statements(stmt.finalbody)
        elif isinstance(stmt, (ast.With, ast.AsyncWith, ast.For, ast.AsyncFor, ast.While)):
            yield from _file_scope_statements(stmt.body)
            yield from _file_scope_statements(getattr(stmt, "orelse", []))
        elif isinstance(stmt, ast.ClassDef):
            yield from _file_scope_statements(stmt.body)
        elif type(stmt).__name__ == "Match":
            for case in stmt.cases:
                yield from _file_scope_statements(case.body)


def _walk_executed(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` that does not enter function/lambda bodies nor nested statement blocks of compound statements
    (those come separately from :func:`_file_scope_statements`); decorators and default values are executed."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        roots = list(node.decorator_list) + list(node.args.defaults) + [d for d in node.args.kw_defaults if d]
    elif isinstance(node, ast.ClassDef):
        roots = list(node.decorator_list) + list(node.bases) + [k.value for k in node.keywords]
    elif isinstance(node, ast.If):
        roots = [node.test]
    elif isinstance(node, (ast.For, ast.AsyncFor)):
        roots = [node.iter]
    elif isinstance(node, ast.While):
        roots = [node.test]
    elif isinstance(node, (ast.With, ast.AsyncWith)):
        roots = [item.context_expr for item in node.items]
    elif isinstance(node, ast.Try) or type(node).__name__ in ("TryStar", "Match"):
        roots = [getattr(node, "subject")] if hasattr(node, "subject") else []
    else:
        roots = [node]
    stack = list(roots)
    while stack:
        n = stack.pop()
        yield n
        for child in ast.iter_child_nodes(n):
            if isinstance(child, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            stack.append(child)


def _string_constants(node: ast.AST) -> List[str]:
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            out.append(n.value)
    return out


def _class_bases(cls: ast.ClassDef) -> List[str]:
    return [_dotted(b).split(".")[-1] for b in cls.bases]


def _is_pnw_decorator(dec: ast.AST) -> bool:
    return _dotted(dec).split(".")[-1] in ("parameterNodeWrapper", "parameterPack")


def parameter_node_classes(tree: ast.Module) -> List[ast.ClassDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
            and any(_dotted(d).split(".")[-1] == "parameterNodeWrapper" for d in n.decorator_list)]


def parameter_fields(cls: ast.ClassDef) -> Dict[str, int]:
    return {stmt.target.id: stmt.lineno for stmt in cls.body
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)}


@lru_cache(maxsize=None)
def stdlib_module_names() -> frozenset:
    names = getattr(sys, "stdlib_module_names", None)
    if names:
        return frozenset(names)
    found = set(sys.builtin_module_names)      # Python 3.9: list the standard library directory
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for entry in stdlib.iterdir():
        if entry.name in ("site-packages", "dist-packages"):
            continue
        if entry.suffix == ".py":
            found.add(entry.stem)
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            found.add(entry.name)
    dynload = stdlib / "lib-dynload"
    if dynload.is_dir():
        found.update(p.name.split(".")[0] for p in dynload.iterdir())
    return frozenset(found)


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
# .ui files
# --------------------------------------------------------------------------------------------------------------------
class UiInfo:
    def __init__(self):
        self.top_class: Optional[str] = None
        self.top_line = 1
        self.objects: Dict[str, Tuple[str, int]] = {}       # name → (class, line): widgets, layouts, actions
        self.parameters: List[Tuple[str, int, str, str]] = []  # (SlicerParameterName, line, widget, class)
        self.extends: Dict[str, str] = {}                  # custom widget class → base class


def parse_ui(path: Path) -> UiInfo:
    """Parse a Qt Designer file with expat (for line numbers); raises ``ET.ParseError`` when not well-formed."""
    ET.parse(str(path))  # well-formedness, with ElementTree's error message and position
    info = UiInfo()
    stack: List[dict] = []
    widgets: List[Tuple[str, str]] = []
    parser = xml.parsers.expat.ParserCreate()

    def start(tag, attrs):
        entry = {"tag": tag, "attrs": attrs, "text": [], "line": parser.CurrentLineNumber}
        parent = stack[-1]["tag"] if stack else None
        stack.append(entry)
        if tag == "widget":
            cls, name = attrs.get("class", ""), attrs.get("name", "")
            if parent == "ui" and info.top_class is None:
                info.top_class, info.top_line = cls, entry["line"]
            if name:
                info.objects.setdefault(name, (cls, entry["line"]))
            widgets.append((name, cls))
        elif tag == "layout" and attrs.get("name"):
            info.objects.setdefault(attrs["name"], (attrs.get("class", ""), entry["line"]))
        elif tag == "action" and attrs.get("name"):
            info.objects.setdefault(attrs["name"], ("QAction", entry["line"]))

    def end(tag):
        entry = stack.pop()
        text = "".join(entry["text"]).strip()
        if tag == "widget":
            widgets.pop()
        elif tag in ("string", "cstring") and stack and stack[-1]["tag"] == "property" \
                and stack[-1]["attrs"].get("name") == "SlicerParameterName":
            name, cls = widgets[-1] if widgets else ("", "")
            info.parameters.append((text, stack[-1]["line"], name, cls))
        elif tag in ("class", "extends") and stack and stack[-1]["tag"] == "customwidget":
            stack[-1][tag] = text
        elif tag == "customwidget" and entry.get("class") and entry.get("extends"):
            info.extends[entry["class"]] = entry["extends"]

    def chars(data):
        if stack:
            stack[-1]["text"].append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.Parse(Path(path).read_bytes(), True)
    return info


def _class_matches(cls: str, allowed: Iterable[str], extends: Dict[str, str]) -> bool:
    seen = set()
    while cls and cls not in seen:
        seen.add(cls)
        for a in allowed:
            if (a.endswith("*") and cls.startswith(a[:-1])) or cls == a:
                return True
        cls = extends.get(cls, "")
    return False


def ui_usages(tree: ast.AST) -> List[Tuple[str, Optional[str], int]]:
    """``(widget, member or None, line)`` for every ``self.ui.<widget>[.<member>]``, ``getattr(self.ui, "w")`` and
    ``self.ui.<widget>.connect("signal(args)", …)``."""

    def is_self_ui(n):
        return (isinstance(n, ast.Attribute) and n.attr == "ui" and isinstance(n.value, ast.Name)
                and n.value.id == "self")

    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_self_ui(node.value):
            out.append((node.attr, None, node.lineno))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and is_self_ui(node.value.value):
            out.append((node.value.attr, node.attr, node.lineno))
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == "connect" and isinstance(f.value, ast.Attribute)
                    and is_self_ui(f.value.value) and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                out.append((f.value.attr, node.args[0].value.split("(")[0].strip(), node.lineno))
            if (isinstance(f, ast.Name) and f.id == "getattr" and len(node.args) >= 2
                    and is_self_ui(node.args[0]) and isinstance(node.args[1], ast.Constant)
                    and isinstance(node.args[1].value, str)):
                out.append((node.args[1].value, None, node.lineno))
    return out


def check_ui_files(repo: Path, module: str) -> Problems:
    """Rule 1: every .ui of the module parses, its top widget is qMRMLWidget/QWidget; every ``self.ui.X`` used in
    ``<Module>.py`` is an object of ``Resources/UI/<Module>.ui`` whose class has the members used on it."""
    repo = Path(repo)
    folder = repo / module
    problems: Problems = []
    parsed: Dict[Path, UiInfo] = {}
    for ui in sorted(p for p in _walk_files(folder) if p.suffix == ".ui"):
        try:
            info = parse_ui(ui)
        except ET.ParseError as e:
            problems.append(f"{_loc(repo, ui, e.position[0])}: not well-formed XML: {e}")
            continue
        except xml.parsers.expat.ExpatError as e:
            problems.append(f"{_loc(repo, ui, e.lineno)}: not well-formed XML: {e}")
            continue
        parsed[ui] = info
        if info.top_class not in ALLOWED_TOP_WIDGETS:
            problems.append(f"{_loc(repo, ui, info.top_line)}: top widget class is {info.top_class!r}, expected one "
                            f"of {sorted(ALLOWED_TOP_WIDGETS)}")
    main_ui = folder / "Resources" / "UI" / f"{module}.ui"
    module_py = folder / f"{module}.py"
    tree = _parse(module_py)
    if not main_ui.is_file():
        problems.append(f"{_rel(repo, main_ui)}:1: missing (the module's UI)")
        return problems
    info = parsed.get(main_ui)
    if info is None or tree is None:
        return problems
    reported = set()
    for name, member, line in ui_usages(tree):
        if name not in info.objects:
            if name not in reported:
                reported.add(name)
                problems.append(f"{_loc(repo, module_py, line)}: self.ui.{name} — no widget/layout named {name!r} in "
                                f"{_rel(repo, main_ui)}")
            continue
        allowed = METHOD_CLASSES.get(member or "")
        cls, ui_line = info.objects[name]
        if allowed and not _class_matches(cls, allowed, info.extends):
            key = (name, member)
            if key not in reported:
                reported.add(key)
                problems.append(f"{_loc(repo, module_py, line)}: self.ui.{name}.{member} — {name!r} is a {cls} "
                                f"({_loc(repo, main_ui, ui_line)}), but .{member} needs one of "
                                f"{', '.join(sorted(allowed))}")
    return problems


def check_parameter_bindings(repo: Path, module: str) -> Problems:
    """Rule 1 (parameter node): every ``SlicerParameterName`` in the module's .ui files names a field of its
    ``@parameterNodeWrapper`` class; every field is bound by a widget or used as ``.<field>`` in the module file (or
    its Lib)."""
    repo = Path(repo)
    folder = repo / module
    module_py = folder / f"{module}.py"
    tree = _parse(module_py)
    if tree is None:
        return [f"{_rel(repo, module_py)}:1: missing or does not parse"]
    classes = parameter_node_classes(tree)
    if not classes:
        return [f"{_rel(repo, module_py)}:1: no @parameterNodeWrapper class"]
    fields: Dict[str, Tuple[str, int]] = {}
    for cls in classes:
        for name, line in parameter_fields(cls).items():
            fields[name] = (cls.name, line)
    problems: Problems = []
    bound = set()
    for ui in sorted(p for p in _walk_files(folder) if p.suffix == ".ui"):
        try:
            info = parse_ui(ui)
        except (ET.ParseError, xml.parsers.expat.ExpatError):
            continue  # reported by check_ui_files
        for value, line, widget, wcls in info.parameters:
            head = value.split(".")[0]
            bound.add(head)
            if head not in fields:
                problems.append(f"{_loc(repo, ui, line)}: SlicerParameterName {value!r} (widget {widget!r}, {wcls}) "
                                f"is not a field of {', '.join(c.name for c in classes)} "
                                f"(fields: {', '.join(sorted(fields)) or 'none'})")
    used = set()
    for path in [module_py] + group_py_files(repo, module):
        t = tree if path == module_py else _parse(path)
        if t is not None:
            used.update(n.attr for n in ast.walk(t) if isinstance(n, ast.Attribute))
    for name, (cls_name, line) in sorted(fields.items()):
        if name not in bound and name not in used:
            problems.append(f"{_loc(repo, module_py, line)}: parameter {cls_name}.{name} is neither bound to a widget "
                            f"(SlicerParameterName) nor used as .{name} in {module}.py or {module}Lib")
    return problems


# --------------------------------------------------------------------------------------------------------------------
# Rule 2: Python 3.9 and 3.12
# --------------------------------------------------------------------------------------------------------------------
_VERSION_PROBE = "import sys; print(tuple(sys.version_info[:2]))"
_COMPILE_SCRIPT = r"""
import json, os, py_compile, sys, tempfile, warnings
warnings.simplefilter("error", SyntaxWarning)
files = json.loads(sys.stdin.read())
errors = []
with tempfile.TemporaryDirectory() as tmp:
    for i, f in enumerate(files):
        try:
            py_compile.compile(f, cfile=os.path.join(tmp, "%d.pyc" % i), doraise=True)
        except py_compile.PyCompileError as e:
            ev = e.exc_value
            errors.append([f, getattr(ev, "lineno", None) or 0,
                           "%s: %s" % (e.exc_type_name, getattr(ev, "msg", None) or str(ev))])
        except Exception as e:
            errors.append([f, 0, "%s: %s" % (type(e).__name__, e)])
print(json.dumps(errors))
"""


@lru_cache(maxsize=None)
def find_python(version: Tuple[int, int]) -> Optional[str]:
    """A working ``python3.X`` interpreter (pyenv versions, PATH); pyenv shims that fail are skipped."""
    tag = f"{version[0]}.{version[1]}"
    candidates: List[str] = []
    if tuple(sys.version_info[:2]) == tuple(version):
        candidates.append(sys.executable)
    roots = [os.environ.get("PYENV_ROOT", ""), str(Path.home() / ".pyenv"), "/root/.pyenv", "/opt/pyenv"]
    for root in dict.fromkeys(r for r in roots if r):
        found = glob.glob(os.path.join(root, "versions", f"{tag}.*", "bin", f"python{tag}"))
        found.sort(key=lambda p: [int(x) if x.isdigit() else 0 for x in re.split(r"[.\-]", Path(p).parents[1].name)],
                   reverse=True)
        candidates.extend(found)
    for name in (f"python{tag}",):
        w = shutil.which(name)
        if w:
            candidates.append(w)
    for exe in dict.fromkeys(candidates):
        try:
            out = subprocess.run([exe, "-c", _VERSION_PROBE], capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip() == str(tuple(version)):
            return exe
    return None


def check_compile(repo: Path, version: Tuple[int, int], files: Optional[List[Path]] = None
                  ) -> Tuple[Problems, Optional[str]]:
    """Rule 2: the files compile with Python ``version`` (SyntaxWarnings count).  Returns ``(problems, note)``:
    ``note`` says when no such interpreter was found and the in-process fallback was used."""
    repo = Path(repo)
    if files is None:
        files = [f for g in python_groups(repo) for f in group_py_files(repo, g)]
    problems: Problems = []
    exe = find_python(version)
    if exe is not None:
        try:
            out = subprocess.run([exe, "-I", "-c", _COMPILE_SCRIPT], input=json.dumps([str(f) for f in files]),
                                 capture_output=True, text=True, timeout=1800)
            errors = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            errors = None
        if errors is not None:
            for f, line, msg in errors:
                problems.append(f"{_loc(repo, Path(f), line)}: does not compile with Python {version[0]}.{version[1]} "
                                f"({exe}; SyntaxWarnings count as errors): {msg}")
            return problems, None
    # fallback: the running interpreter, with ast's feature_version for older targets
    note = (f"no working python{version[0]}.{version[1]} found; checked with ast.parse(feature_version="
            f"{version}) under Python {sys.version_info[0]}.{sys.version_info[1]}")
    for f in files:
        try:
            src = f.read_text(encoding="utf-8")
            with warnings.catch_warnings():
                warnings.simplefilter("error", SyntaxWarning)
                if tuple(sys.version_info[:2]) > tuple(version):
                    ast.parse(src, filename=str(f), feature_version=version)
                compile(src, str(f), "exec", dont_inherit=True)
        except SyntaxError as e:
            problems.append(f"{_loc(repo, f, e.lineno)}: does not compile for Python {version[0]}.{version[1]} "
                            f"(SyntaxWarnings count as errors): {type(e).__name__}: {e.msg}")
        except (ValueError, UnicodeDecodeError, SyntaxWarning) as e:
            problems.append(f"{_loc(repo, f, None)}: does not compile for Python {version[0]}.{version[1]}: {e}")
    return problems, note


def _contains_bitor(node: ast.AST) -> bool:
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(node))


def _string_annotation_has_bitor(node: ast.AST) -> bool:
    for s in _string_constants(node):
        try:
            if _contains_bitor(ast.parse(s, mode="eval")):
                return True
        except SyntaxError:
            continue
    return False


def _typeish(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.Name) and node.id in BUILTIN_TYPE_NAMES:
        return True
    if isinstance(node, ast.Subscript):
        head = _dotted(node.value).split(".")[-1]
        return head in BUILTIN_TYPE_NAMES or head in TYPING_GENERICS
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _typeish(node.left) or _typeish(node.right)
    return False


def check_runtime_compat(repo: Path, files: Iterable[Path]) -> Problems:
    """Rule 2 (runtime): what compiles on 3.9 but fails when run there (or on 3.12)."""
    repo = Path(repo)
    problems: Problems = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except SyntaxError as e:
            problems.append(f"{_loc(repo, path, e.lineno)}: cannot be analysed (SyntaxError under Python "
                            f"{sys.version_info[0]}.{sys.version_info[1]}: {e.msg}): `{(e.text or '').strip()}`")
            continue
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(f"{_loc(repo, path, None)}: cannot be analysed: {e}")
            continue
        loc = lambda n: _loc(repo, path, getattr(n, "lineno", None))  # noqa: E731
        future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                     and any(a.name == "annotations" for a in n.names) for n in tree.body)
        skip = _type_checking_nodes(tree)
        annotation_ids = set()
        # annotations: evaluated at runtime on 3.9 without the __future__ import (not those of local variables)
        local_ann = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for stmt in ast.walk(fn):
                    if isinstance(stmt, ast.AnnAssign) and stmt is not fn:
                        local_ann.add(id(stmt))
        for node in ast.walk(tree):
            anns: List[ast.AST] = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                for arg in list(a.posonlyargs) + list(a.args) + list(a.kwonlyargs) + [a.vararg, a.kwarg]:
                    if arg is not None and arg.annotation is not None:
                        anns.append(arg.annotation)
                if node.returns is not None:
                    anns.append(node.returns)
            elif isinstance(node, ast.AnnAssign):
                anns.append(node.annotation)
            for ann in anns:
                annotation_ids.update(id(n) for n in ast.walk(ann))
                evaluated = not (isinstance(node, ast.AnnAssign) and id(node) in local_ann)
                if not future and evaluated and id(ann) not in skip and _contains_bitor(ann):
                    problems.append(f"{loc(ann)}: `{ast.unparse(ann)}` (PEP 604 union) in an annotation is evaluated "
                                    f"at runtime on Python 3.9: add `from __future__ import annotations` or use "
                                    f"Optional/Union")
        # parameterNodeWrapper runs typing.get_type_hints: string annotations are evaluated too
        for cls in ast.walk(tree):
            if isinstance(cls, ast.ClassDef) and any(_is_pnw_decorator(d) for d in cls.decorator_list):
                for stmt in cls.body:
                    if isinstance(stmt, ast.AnnAssign) and (_contains_bitor(stmt.annotation)
                                                            or _string_annotation_has_bitor(stmt.annotation)):
                        problems.append(f"{loc(stmt)}: {cls.name}.{ast.unparse(stmt.target)}: `X | Y` in a "
                                        f"@{_dotted(cls.decorator_list[0]).split('.')[-1]} class fails on Python "
                                        f"3.9 (typing.get_type_hints evaluates it even with `from __future__ import "
                                        f"annotations`); use Optional[...] / Union[...]")
        for node in ast.walk(tree):
            if id(node) in skip or id(node) in annotation_ids:
                continue
            if type(node).__name__ == "Match":
                problems.append(f"{loc(node)}: `match` statement needs Python 3.10")
            elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) \
                    and (_typeish(node.left) or _typeish(node.right)):
                problems.append(f"{loc(node)}: `{ast.unparse(node)}` builds a union type at runtime: TypeError on "
                                f"Python 3.9; use Optional/Union or a tuple")
            elif isinstance(node, ast.Call):
                name = _call_name(node.func)
                kws = {k.arg for k in node.keywords if k.arg}
                if name in ("isinstance", "issubclass") and len(node.args) == 2 and _contains_bitor(node.args[1]) \
                        and not _typeish(node.args[1]):
                    problems.append(f"{loc(node)}: `{ast.unparse(node)}`: a `|` union as {name}() argument needs "
                                    f"Python 3.10; pass a tuple")
                if name == "zip" and "strict" in kws:
                    problems.append(f"{loc(node)}: zip(..., strict=...) needs Python 3.10")
                new_kws = sorted(kws & {"slots", "kw_only", "match_args", "weakref_slot"})
                if name == "dataclass" and new_kws:
                    problems.append(f"{loc(node)}: dataclass({', '.join(new_kws)}=...) needs Python 3.10+")
                if name == "field" and "kw_only" in kws:
                    problems.append(f"{loc(node)}: field(kw_only=...) needs Python 3.10")
                if isinstance(node.func, ast.Attribute) and node.func.attr in REMOVED_312_UNITTEST_ALIASES:
                    problems.append(f"{loc(node)}: .{node.func.attr}() was removed in Python 3.12 (Slicer ≥ 5.10); "
                                    f"use {REMOVED_312_UNITTEST_ALIASES[node.func.attr]}")
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                new = NEW_STDLIB_NAMES.get(node.module, {})
                for alias in node.names:
                    if alias.name in new:
                        v = new[alias.name]
                        problems.append(f"{loc(node)}: `from {node.module} import {alias.name}` needs Python "
                                        f"{v[0]}.{v[1]} (use typing_extensions or guard with TYPE_CHECKING)")
                root = node.module.split(".")[0]
                if root in NEW_STDLIB_MODULES:
                    problems.append(f"{loc(node)}: module {root} needs Python 3.11")
                if root in REMOVED_312_MODULES:
                    problems.append(f"{loc(node)}: module {root} was removed in Python 3.12")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    root = alias.name.split(".")[0]
                    if root in NEW_STDLIB_MODULES:
                        problems.append(f"{loc(node)}: module {root} needs Python 3.11")
                    if root in REMOVED_312_MODULES:
                        problems.append(f"{loc(node)}: module {root} was removed in Python 3.12")
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.attr in NEW_STDLIB_NAMES.get(node.value.id, {}):
                v = NEW_STDLIB_NAMES[node.value.id][node.attr]
                problems.append(f"{loc(node)}: {node.value.id}.{node.attr} needs Python {v[0]}.{v[1]}")
    return problems


# --------------------------------------------------------------------------------------------------------------------
# Rule 3: imports at file scope and package installation
# --------------------------------------------------------------------------------------------------------------------
def _own_lib(group: str) -> Optional[str]:
    return None if group in (COMMON_LIB, CORE_PACKAGE) else f"{group}Lib"


def check_file_scope_imports(repo: Path, group: str) -> Problems:
    """Rule 3: file-scope imports of a module folder (or of INFANiTECommonLib) name only the standard library, what
    Slicer bundles, INFANiTECommonLib and the module's own Lib (relative imports are fine)."""
    repo = Path(repo)
    allowed = set(ALLOWED_FILE_SCOPE_IMPORTS) | {COMMON_LIB}
    own = _own_lib(group)
    if own:
        allowed.add(own)
    stdlib = stdlib_module_names()
    problems: Problems = []
    for path in group_py_files(repo, group):
        tree = _parse(path)
        if tree is None:
            continue
        for stmt in _file_scope_statements(tree.body):
            if isinstance(stmt, ast.Import):
                names = [a.name for a in stmt.names]
            elif isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and stmt.module:
                names = [stmt.module]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root in FORBIDDEN_FILE_SCOPE_IMPORTS:
                    problems.append(f"{_loc(repo, path, stmt.lineno)}: `{ast.unparse(stmt)}` at file scope: "
                                    f"{FORBIDDEN_FILE_SCOPE_IMPORTS[root]}")
                elif root not in allowed and root not in stdlib:
                    problems.append(f"{_loc(repo, path, stmt.lineno)}: `{ast.unparse(stmt)}` at file scope: {root!r} "
                                    f"is not bundled with Slicer (allowed: standard library, "
                                    f"{', '.join(sorted(allowed))}); import it inside the function that needs it")
    return problems


def _installer_calls(nodes: Iterable[ast.AST]) -> Iterator[ast.Call]:
    for n in nodes:
        if isinstance(n, ast.Call) and _call_name(n.func) in INSTALLER_CALLS:
            yield n


def check_no_installs(repo: Path, group: str) -> Problems:
    """Rule 3: no package installation at file scope or in a ScriptedLoadableModule* class ``__init__``; no pip
    install of torch anywhere."""
    repo = Path(repo)
    problems: Problems = []
    for path in group_py_files(repo, group):
        tree = _parse(path)
        if tree is None:
            continue
        executed = [n for stmt in _file_scope_statements(tree.body) for n in _walk_executed(stmt)]
        for call in _installer_calls(executed):
            problems.append(f"{_loc(repo, path, call.lineno)}: `{ast.unparse(call)}` installs packages at import "
                            f"time (file scope): call it from a button handler")
        for cls in ast.walk(tree):
            if isinstance(cls, ast.ClassDef) and any(b.startswith("ScriptedLoadableModule") for b in _class_bases(cls)):
                for fn in cls.body:
                    if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name == "__init__":
                        for call in _installer_calls(ast.walk(fn)):
                            problems.append(f"{_loc(repo, path, call.lineno)}: `{ast.unparse(call)}` in "
                                            f"{cls.name}.__init__ installs packages when Slicer starts")
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            strings = _string_constants(call)
            name = _call_name(call.func)
            is_pip = name in PIP_CALLS or ("pip" in strings and "install" in strings) \
                or any(re.search(r"\bpip\s+install\b", s) for s in strings)
            if is_pip and any(TORCH_RE.search(s) for s in strings):
                problems.append(f"{_loc(repo, path, call.lineno)}: `{ast.unparse(call)}` pip-installs torch: PyTorch "
                                f"comes from the PyTorch extension (PyTorchUtils), never from pip_install")
    return problems


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
        out.extend(Path(root) / f for f in sorted(files) if not f.startswith(".") and not _ignored(f))
    return out


def check_module_cmake(repo: Path, module: str) -> Problems:
    """Rule 4: the module's CMakeLists.txt lists every script and resource, and everything it lists exists."""
    repo = Path(repo)
    folder = repo / module
    cmake_path = folder / "CMakeLists.txt"
    if not cmake_path.is_file():
        return [f"{_rel(repo, cmake_path)}:1: missing"]
    cm = parse_cmake(cmake_path)
    problems: Problems = []
    loc = lambda line: _loc(repo, cmake_path, line)  # noqa: E731
    listed: Dict[str, Dict[str, int]] = {}
    for var, kind in (("MODULE_PYTHON_SCRIPTS", "script"), ("MODULE_PYTHON_RESOURCES", "resource")):
        items = cm.var(var)
        if items is None:
            problems.append(f"{loc(1)}: no set({var} ...)")
            items = []
        listed[kind] = {}
        for value, line in items:
            value = _cmake_script_path(value) if kind == "script" else value
            rel = _relative_to(folder, value)
            if rel is None:
                problems.append(f"{loc(line)}: {var} entry {value!r} is outside {module}/")
                continue
            listed[kind][rel] = line
            if not (folder / rel).is_file():
                problems.append(f"{loc(line)}: {var} lists {rel!r}, which does not exist in {module}/")
    macros = cm.calls("slicerMacroBuildScriptedModule")
    if not macros:
        problems.append(f"{loc(1)}: no slicerMacroBuildScriptedModule(...)")
    for macro in macros:
        name = macro.keyword("NAME", _MODULE_MACRO_KEYWORDS) or []
        if [v for v, _ in name] != [module]:
            problems.append(f"{loc(macro.line)}: slicerMacroBuildScriptedModule NAME is "
                            f"{' '.join(v for v, _ in name)!r}, expected {module!r}")
        for keyword, var in (("SCRIPTS", "MODULE_PYTHON_SCRIPTS"), ("RESOURCES", "MODULE_PYTHON_RESOURCES")):
            given = [v for v, _ in (macro.keyword(keyword, _MODULE_MACRO_KEYWORDS) or [])]
            expected = [v for v, _ in (cm.var(var) or [])]
            if given != expected:
                problems.append(f"{loc(macro.line)}: slicerMacroBuildScriptedModule {keyword} is not ${{{var}}}")
    scripts_line = cm.set_lines.get("MODULE_PYTHON_SCRIPTS", 1)
    resources_line = cm.set_lines.get("MODULE_PYTHON_RESOURCES", 1)
    for path in _files_needing_listing(folder):
        rel = path.relative_to(folder).as_posix()
        if path.suffix == ".py" and rel not in listed["script"]:
            problems.append(f"{loc(scripts_line)}: {module}/{rel} is not listed in MODULE_PYTHON_SCRIPTS (it would "
                            f"not be installed)")
        elif rel.startswith("Resources/") and rel not in listed["resource"]:
            problems.append(f"{loc(resources_line)}: {module}/{rel} is not listed in MODULE_PYTHON_RESOURCES (it "
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
                    problems.append(f"{_loc(repo, cm.path, line)}: {keyword} entry {value!r} is outside the "
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
        return [f"{_loc(repo, cmake_path, 1)}: no ctkMacroCompilePythonScript(...) shipping {CORE_PACKAGE}/ and "
                f"{COMMON_LIB}/"]
    scripts, resources, problems = _core_listing(repo, cm)
    first = calls[0].line
    for kind, listing in (("SCRIPTS", scripts), ("RESOURCES", resources)):
        for rel, line in sorted(listing.items()):
            if not (repo / rel).is_file():
                problems.append(f"{_loc(repo, cmake_path, line)}: ctkMacroCompilePythonScript {kind} lists {rel!r}, "
                                f"which does not exist")
            elif kind == "SCRIPTS" and not rel.endswith(".py"):
                problems.append(f"{_loc(repo, cmake_path, line)}: {rel!r} is not a Python script: list it in "
                                f"RESOURCES")
    for package in (CORE_PACKAGE, COMMON_LIB):
        folder = repo / package
        if not folder.is_dir():
            problems.append(f"{package}/: missing")
            continue
        for path in _walk_files(folder):
            rel = path.relative_to(repo).as_posix()
            if path.suffix == ".py" and rel not in scripts:
                problems.append(f"{_loc(repo, cmake_path, first)}: {rel} is not in the SCRIPTS of "
                                f"ctkMacroCompilePythonScript (it would not be installed)")
            elif path.suffix != ".py" and rel not in resources:
                problems.append(f"{_loc(repo, cmake_path, first)}: data file {rel} is not in the RESOURCES of "
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
            problems.append(f"{_loc(repo, cmake_path, line)}: add_subdirectory({name}) is not a module folder "
                            f"(modules: {', '.join(sorted(modules)) or 'none'})")
    for name in sorted(modules - set(added)):
        problems.append(f"{_loc(repo, cmake_path, 1)}: module {name}/ is missing add_subdirectory({name})")
    return problems


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
        problems.append(f"{_loc(repo, cmake_path, projects[0].line if projects else 1)}: expected "
                        f"project({EXTENSION_NAME})")
    raw_text = " ".join(t for c in cm.commands for t, _, _ in c.raw)
    for needed in ("${Slicer_USE_FILE}", "${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"):
        if needed not in raw_text:
            problems.append(f"{_loc(repo, cmake_path, 1)}: missing include({needed})")
    if not any(c.values()[:1] == ["Slicer"] for c in cm.calls("find_package")):
        problems.append(f"{_loc(repo, cmake_path, 1)}: missing find_package(Slicer REQUIRED)")
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
            problems.append(f"{_loc(repo, cmake_path, cline)}: {var} is not set")
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
                            f"({_loc(repo, cmake_path, cline)})")
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
# Rule 6: module structure, classes and widget state
# --------------------------------------------------------------------------------------------------------------------
def check_module_layout(repo: Path, module: str) -> Problems:
    """Rule 6 (files): Lib package, UI, icon (a PNG), CMakeLists.txt; resourcePath(...) literals exist."""
    repo = Path(repo)
    folder = repo / module
    problems: Problems = []
    lib = folder / f"{module}Lib"
    if not (lib / "__init__.py").is_file():
        problems.append(f"{_rel(repo, lib)}/__init__.py:1: missing (the module's Lib package)")
    for rel in (f"Resources/UI/{module}.ui", f"Resources/Icons/{module}.png", "CMakeLists.txt"):
        if not (folder / rel).is_file():
            problems.append(f"{module}/{rel}:1: missing")
    icon = folder / "Resources" / "Icons" / f"{module}.png"
    if icon.is_file() and not icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n":
        problems.append(f"{_rel(repo, icon)}:1: not a PNG file")
    module_py = folder / f"{module}.py"
    tree = _parse(module_py)
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node.func) == "resourcePath" and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                if not (folder / "Resources" / node.args[0].value).exists():
                    problems.append(f"{_loc(repo, module_py, node.lineno)}: resourcePath({node.args[0].value!r}) → "
                                    f"{module}/Resources/{node.args[0].value} does not exist")
    return problems


EXPECTED_CLASSES = {"": "ScriptedLoadableModule", "Widget": "ScriptedLoadableModuleWidget",
                    "Logic": "ScriptedLoadableModuleLogic", "Test": "ScriptedLoadableModuleTest"}
MODULE_PARENT_ATTRIBUTES = ("title", "categories", "contributors", "helpText")


def check_module_classes(repo: Path, module: str) -> Problems:
    """Rule 6: the four Scripted* classes, a @parameterNodeWrapper class, a Test class whose runTest runs every
    test_ method, a short module file."""
    repo = Path(repo)
    module_py = repo / module / f"{module}.py"
    if not module_py.is_file():
        return [f"{_rel(repo, module_py)}:1: missing"]
    text = module_py.read_text(encoding="utf-8")
    tree = _parse(module_py)
    if tree is None:
        return [f"{_rel(repo, module_py)}:1: does not parse"]
    problems: Problems = []
    n_lines = len(text.splitlines())
    if n_lines >= MAX_MODULE_LINES:
        problems.append(f"{_loc(repo, module_py, n_lines)}: {n_lines} lines (must stay < {MAX_MODULE_LINES}; move "
                        f"logic to {module}Lib)")
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    for suffix, base in EXPECTED_CLASSES.items():
        name = module + suffix
        cls = classes.get(name)
        if cls is None:
            problems.append(f"{_loc(repo, module_py, 1)}: no class {name}({base})")
        elif base not in _class_bases(cls):
            problems.append(f"{_loc(repo, module_py, cls.lineno)}: class {name} does not derive from {base} "
                            f"(bases: {', '.join(_class_bases(cls)) or 'none'})")
    if not parameter_node_classes(tree):
        problems.append(f"{_loc(repo, module_py, 1)}: no @parameterNodeWrapper class")
    main = classes.get(module)
    if main is not None:
        init = next((f for f in main.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
        assigned = set()
        for node in ast.walk(init) if init else []:
            if isinstance(node, ast.Assign):
                assigned.update(_dotted(t) for t in node.targets)
        for attr in MODULE_PARENT_ATTRIBUTES:
            if f"self.parent.{attr}" not in assigned:
                problems.append(f"{_loc(repo, module_py, (init or main).lineno)}: {module}.__init__ does not set "
                                f"self.parent.{attr}")
    test = classes.get(module + "Test")
    if test is not None:
        methods = {f.name: f for f in test.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
        tests = sorted(m for m in methods if m.startswith("test_"))
        if not tests:
            problems.append(f"{_loc(repo, module_py, test.lineno)}: {test.name} has no test_ method")
        run = methods.get("runTest")
        if run is None:
            problems.append(f"{_loc(repo, module_py, test.lineno)}: {test.name} has no runTest method")
        else:
            called = {_call_name(n.func) for n in ast.walk(run) if isinstance(n, ast.Call)
                      and isinstance(n.func, ast.Attribute) and _dotted(n.func.value) == "self"}
            for t in tests:
                if t not in called:
                    problems.append(f"{_loc(repo, module_py, run.lineno)}: {test.name}.runTest does not call "
                                    f"self.{t}()")
    return problems


def _attribute_targets(node: ast.AST) -> Iterator[ast.AST]:
    if isinstance(node, (ast.Tuple, ast.List)):
        for elt in node.elts:
            yield from _attribute_targets(elt)
    elif isinstance(node, ast.Starred):
        yield from _attribute_targets(node.value)
    else:
        yield node


def check_widget_state(repo: Path, module: str) -> Problems:
    """Rule 6: ``<Module>Widget`` only assigns ``self.<name>`` for names in ALLOWED_WIDGET_ATTRIBUTES."""
    repo = Path(repo)
    module_py = repo / module / f"{module}.py"
    tree = _parse(module_py)
    if tree is None:
        return [f"{_rel(repo, module_py)}:1: missing or does not parse"]
    widget = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == f"{module}Widget"), None)
    if widget is None:
        return [f"{_loc(repo, module_py, 1)}: no class {module}Widget"]
    problems: Problems = []
    for fn in widget.body:
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        args = fn.args.posonlyargs + fn.args.args
        selfname = args[0].arg if args else "self"
        for node in ast.walk(fn):
            targets: List[ast.AST] = []
            if isinstance(node, ast.Assign):
                targets = list(node.targets)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            elif isinstance(node, (ast.For, ast.AsyncFor)):
                targets = [node.target]
            elif isinstance(node, (ast.With, ast.AsyncWith)):
                targets = [i.optional_vars for i in node.items if i.optional_vars is not None]
            elif isinstance(node, ast.Call) and _call_name(node.func) == "setattr" and node.args \
                    and isinstance(node.func, ast.Name) and _dotted(node.args[0]) == selfname:
                problems.append(f"{_loc(repo, module_py, node.lineno)}: {widget.name}.{fn.name} uses setattr(self, "
                                f"...): widget state belongs in the parameter node or the logic")
            for target in (t for top in targets for t in _attribute_targets(top)):
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
                        and target.value.id == selfname \
                        and not any(fnmatch.fnmatchcase(target.attr, p) for p in ALLOWED_WIDGET_ATTRIBUTES):
                    problems.append(f"{_loc(repo, module_py, target.lineno)}: {widget.name}.{fn.name} stores "
                                    f"self.{target.attr}: widget state belongs in the parameter node or the logic "
                                    f"(allowed: {', '.join(ALLOWED_WIDGET_ATTRIBUTES)})")
    return problems


# ====================================================================================================================
# Tests on the real repository
# ====================================================================================================================
MODULES = discover_modules(REPO)
_NO_MODULES = pytest.param(None, id="NO-MODULES-FOUND")
MODULE_PARAMS = MODULES or [_NO_MODULES]
GROUPS_ALL = python_groups(REPO)
GROUPS_SLICER = python_groups(REPO, with_core=False)


def _need(module: Optional[str]) -> str:
    if module is None:
        pytest.fail(f"no Slicer module found: expected top-level folders {MODULE_PREFIX}*/ holding <Folder>.py in "
                    f"{REPO}")
    return module


def _report(problems: Problems, what: str) -> None:
    problems = list(dict.fromkeys(problems))
    assert not problems, f"{what}: {len(problems)} problem(s)\n  " + "\n  ".join(problems)


def test_modules_discovered():
    incomplete = incomplete_module_folders(REPO)
    assert MODULES, f"no Slicer module found in {REPO} (a module is a folder {MODULE_PREFIX}*/ with <Folder>.py)"
    assert not incomplete, ("module folders without their <Folder>.py (Slicer would not load them): "
                            + ", ".join(f"{m}/{m}.py" for m in incomplete))


@pytest.mark.parametrize("module", MODULE_PARAMS)
def test_ui_files_and_widget_usage(module):
    _report(check_ui_files(REPO, _need(module)), f"{module}: .ui files / self.ui usage")


@pytest.mark.parametrize("module", MODULE_PARAMS)
def test_parameter_node_bindings(module):
    _report(check_parameter_bindings(REPO, _need(module)), f"{module}: parameter node ↔ .ui")


@pytest.mark.parametrize("version", [(3, 9), (3, 12)], ids=["py3.9", "py3.12"])
def test_python_files_compile(version):
    files = [f for g in GROUPS_ALL for f in group_py_files(REPO, g)]
    assert files, "no Python files found"
    problems, note = check_compile(REPO, version, files)
    if note:
        warnings.warn(UserWarning(note))
    _report(problems, f"compile for Python {version[0]}.{version[1]}" + (f" [{note}]" if note else ""))


@pytest.mark.parametrize("group", GROUPS_ALL)
def test_runtime_compatibility_39_312(group):
    _report(check_runtime_compat(REPO, group_py_files(REPO, group)), f"{group}: Python 3.9/3.12 runtime")


@pytest.mark.parametrize("group", GROUPS_SLICER)
def test_file_scope_imports(group):
    _report(check_file_scope_imports(REPO, group), f"{group}: file-scope imports")


@pytest.mark.parametrize("group", GROUPS_ALL)
def test_no_package_installation_at_import(group):
    _report(check_no_installs(REPO, group), f"{group}: package installation")


@pytest.mark.parametrize("module", MODULE_PARAMS)
def test_module_cmake_lists(module):
    _report(check_module_cmake(REPO, _need(module)), f"{module}/CMakeLists.txt")


def test_top_cmake_ships_core_packages():
    _report(check_top_cmake(REPO), "CMakeLists.txt: core packages")


def test_top_cmake_subdirectories_are_the_modules():
    _need(MODULES[0] if MODULES else None)
    _report(check_top_subdirectories(REPO), "CMakeLists.txt: add_subdirectory")


def test_s4ext_matches_cmake():
    _report(check_s4ext(REPO), f"{EXTENSION_NAME}.s4ext ↔ CMakeLists.txt")


def test_icon_and_screenshot_urls():
    _report(check_image_urls(REPO), "icon/screenshot URLs")


@pytest.mark.parametrize("module", MODULE_PARAMS)
def test_module_layout(module):
    _report(check_module_layout(REPO, _need(module)), f"{module}: files")


@pytest.mark.parametrize("module", MODULE_PARAMS)
def test_module_classes(module):
    _report(check_module_classes(REPO, _need(module)), f"{module}: classes")


@pytest.mark.parametrize("module", MODULE_PARAMS)
def test_widget_state(module):
    _report(check_widget_state(REPO, _need(module)), f"{module}Widget: state")


# ====================================================================================================================
# Checker tests: a fake extension that passes, then broken once per rule
# ====================================================================================================================
FAKE = "INFANiTEFoo"
_PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
_RAW = "https://raw.githubusercontent.com/example/SlicerINFANiTE/main"

FAKE_MODULE_PY = '''"""Fake module."""
import logging
from typing import Annotated, Optional

import qt
import slicer
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin

from INFANiTECommonLib.widget import ParameterNodeWidgetMixin
from INFANiTEFooLib import helper


class INFANiTEFoo(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Foo"
        self.parent.categories = ["INFANiTE"]
        self.parent.contributors = ["Someone"]
        self.parent.helpText = "Help."


@parameterNodeWrapper
class INFANiTEFooParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    threshold: Annotated[float, WithinRange(0.0, 10.0)] = 5.0
    outputFolder: str = ""
    label: Optional[str] = None


class INFANiTEFooWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = qt.QTimer()

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/INFANiTEFoo.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = INFANiTEFooLogic()
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.inputSelector.currentNodeChanged.connect(self.onApply)
        self.ui.progressBar.setFormat("%p%")
        self.ui.logText.appendPlainText("ready")
        self.ui.thresholdSlider.value = 3.0
        self.ui.verticalLayout.addStretch(1)
        self.initializeParameterNode()

    def onApply(self, *args):
        self.logic.run(self._parameterNode.label, self.ui.outputPath.currentPath)


class INFANiTEFooLogic(ScriptedLoadableModuleLogic):
    def getParameterNode(self):
        return INFANiTEFooParameterNode(super().getParameterNode())

    def run(self, label, folder):
        helper.run(label, folder)


class INFANiTEFooTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_foo()

    def test_foo(self):
        self.assertEqual(1, 1)
'''

FAKE_UI = '''<?xml version="1.0" encoding="UTF-8"?>
<ui version="4.0">
 <class>INFANiTEFoo</class>
 <widget class="qMRMLWidget" name="INFANiTEFoo">
  <layout class="QVBoxLayout" name="verticalLayout">
   <item>
    <widget class="ctkCollapsibleButton" name="inputsCollapsibleButton">
     <layout class="QFormLayout" name="formLayout">
      <item row="0" column="1">
       <widget class="qMRMLNodeComboBox" name="inputSelector">
        <property name="SlicerParameterName" stdset="0">
         <string>inputVolume</string>
        </property>
       </widget>
      </item>
      <item row="1" column="1">
       <widget class="ctkSliderWidget" name="thresholdSlider">
        <property name="SlicerParameterName" stdset="0">
         <string>threshold</string>
        </property>
       </widget>
      </item>
      <item row="2" column="1">
       <widget class="ctkPathLineEdit" name="outputPath">
        <property name="SlicerParameterName" stdset="0">
         <string>outputFolder</string>
        </property>
       </widget>
      </item>
     </layout>
    </widget>
   </item>
   <item>
    <widget class="QPushButton" name="applyButton"/>
   </item>
   <item>
    <widget class="QProgressBar" name="progressBar"/>
   </item>
   <item>
    <widget class="QPlainTextEdit" name="logText"/>
   </item>
   <item>
    <spacer name="verticalSpacer"/>
   </item>
  </layout>
 </widget>
 <customwidgets>
  <customwidget>
   <class>qMRMLNodeComboBox</class>
   <extends>QWidget</extends>
   <header>qMRMLNodeComboBox.h</header>
  </customwidget>
 </customwidgets>
</ui>
'''

FAKE_MODULE_CMAKE = '''#-----------------------------------------------------------------------------
set(MODULE_NAME INFANiTEFoo)  # the module

set(MODULE_PYTHON_SCRIPTS
  ${MODULE_NAME}.py
  ${MODULE_NAME}Lib/__init__.py
  ${MODULE_NAME}Lib/helper   # CTK appends .py
  )

set(MODULE_PYTHON_RESOURCES
  Resources/Icons/${MODULE_NAME}.png
  Resources/UI/${MODULE_NAME}.ui
  )

slicerMacroBuildScriptedModule(
  NAME ${MODULE_NAME}
  SCRIPTS ${MODULE_PYTHON_SCRIPTS}
  RESOURCES ${MODULE_PYTHON_RESOURCES}
  WITH_GENERIC_TESTS
  )

if(BUILD_TESTING)
  slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)
endif()
'''

FAKE_TOP_CMAKE = f'''cmake_minimum_required(VERSION 3.16.3...3.19.7 FATAL_ERROR)

project(INFANiTE)

#-----------------------------------------------------------------------------
# Extension meta-information
set(EXTENSION_HOMEPAGE "https://github.com/example/SlicerINFANiTE")
set(EXTENSION_CATEGORY "Neuroimaging")
set(EXTENSION_CONTRIBUTORS "A. Person (Somewhere), B. Person (Elsewhere)")
set(EXTENSION_DESCRIPTION "Fetal atlases from thick-slice stacks; with a \\"quoted\\" word
  and a line break.")
set(EXTENSION_ICONURL "{_RAW}/Resources/INFANiTE.png")
set(EXTENSION_SCREENSHOTURLS "{_RAW}/Resources/Screenshots/a.png {_RAW}/Resources/Screenshots/b.png")
set(EXTENSION_DEPENDS "NA") # Specified as a list or "NA" if no dependencies

#-----------------------------------------------------------------------------
find_package(Slicer REQUIRED)
include(${{Slicer_USE_FILE}})

#[[ a bracket comment: add_subdirectory(NotAModule) ]]
add_subdirectory(INFANiTEFoo)

file(GLOB _core RELATIVE ${{CMAKE_CURRENT_SOURCE_DIR}} ${{CMAKE_CURRENT_SOURCE_DIR}}/infanite/*.py)
set(INFANITE_PYTHON_SCRIPTS
  ${{_core}}
  INFANiTECommonLib/__init__.py
  INFANiTECommonLib/widget.py
  )
set(INFANITE_PYTHON_RESOURCES INFANiTECommonLib/requirements.txt)

ctkMacroCompilePythonScript(
  TARGET_NAME INFANiTECore
  SCRIPTS "${{INFANITE_PYTHON_SCRIPTS}}"
  RESOURCES "${{INFANITE_PYTHON_RESOURCES}}"
  DESTINATION_DIR ${{Slicer_BINARY_DIR}}/${{Slicer_QTSCRIPTEDMODULES_LIB_DIR}}
  INSTALL_DIR ${{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}}
  NO_INSTALL_SUBDIR
  )

#-----------------------------------------------------------------------------
include(${{Slicer_EXTENSION_GENERATE_CONFIG}})
include(${{Slicer_EXTENSION_CPACK}})
'''

FAKE_S4EXT = f'''# comment
scm git
scmurl https://github.com/example/SlicerINFANiTE.git
scmrevision main
depends NA
build_subdirectory .
homepage https://github.com/example/SlicerINFANiTE
contributors A. Person (Somewhere), B. Person (Elsewhere)
category Neuroimaging
iconurl {_RAW}/Resources/INFANiTE.png
status Beta
description Fetal atlases from thick-slice stacks; with a "quoted" word and a line break.
screenshoturls {_RAW}/Resources/Screenshots/a.png {_RAW}/Resources/Screenshots/b.png
enabled 1
'''


def make_fake_extension(root: Path) -> Path:
    """A minimal extension that passes every checker."""
    files = {
        "CMakeLists.txt": FAKE_TOP_CMAKE,
        f"{EXTENSION_NAME}.s4ext": FAKE_S4EXT,
        "infanite/__init__.py": '"""Core."""\n',
        "infanite/core.py": "import torch\n\n\ndef f(x: 'int | None' = None):\n    return x\n",
        "INFANiTECommonLib/__init__.py": "",
        "INFANiTECommonLib/requirements.txt": "nibabel>=5.0\n",
        "INFANiTECommonLib/widget.py": ("from __future__ import annotations\n\nimport vtk\n\n\n"
                                        "class ParameterNodeWidgetMixin:\n"
                                        "    def f(self, x: int | None) -> dict[str, int] | None:\n"
                                        "        return None\n"),
        f"{FAKE}/{FAKE}.py": FAKE_MODULE_PY,
        f"{FAKE}/CMakeLists.txt": FAKE_MODULE_CMAKE,
        f"{FAKE}/Resources/UI/{FAKE}.ui": FAKE_UI,
        f"{FAKE}/{FAKE}Lib/__init__.py": "",
        f"{FAKE}/{FAKE}Lib/helper.py": ('"""Helper."""\nfrom __future__ import annotations\n\nimport json\n'
                                        'from typing import TYPE_CHECKING\n\nimport numpy as np\n\n'
                                        'from INFANiTECommonLib import widget\n\n'
                                        'if TYPE_CHECKING:\n    from infanite.core import f\n\n\n'
                                        'def run(label: str | None, folder) -> None:\n'
                                        '    import torch\n    from infanite import core\n'
                                        '    slicer.util.pip_install("nibabel")\n'
                                        '    return isinstance(label, (int, float)) and (1 | 2)\n'),
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    for rel in (f"{FAKE}/Resources/Icons/{FAKE}.png", "Resources/INFANiTE.png", "Resources/Screenshots/a.png",
                "Resources/Screenshots/b.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(_PNG)
    return root


def _all_checks(root: Path) -> Problems:
    problems: Problems = []
    for module in discover_modules(root):
        for check in (check_ui_files, check_parameter_bindings, check_module_cmake, check_module_layout,
                      check_module_classes, check_widget_state):
            problems += check(root, module)
    for group in python_groups(root):
        problems += check_runtime_compat(root, group_py_files(root, group))
        problems += check_no_installs(root, group)
    for group in python_groups(root, with_core=False):
        problems += check_file_scope_imports(root, group)
    problems += check_top_cmake(root) + check_top_subdirectories(root) + check_s4ext(root) + check_image_urls(root)
    return problems


def test_checker_fake_extension_passes(tmp_path):
    root = make_fake_extension(tmp_path)
    assert discover_modules(root) == [FAKE]
    _report(_all_checks(root), "fake extension")
    cm = parse_cmake(root / "CMakeLists.txt")
    assert cm.var_string("EXTENSION_DESCRIPTION").startswith('Fetal atlases from thick-slice stacks; with a "quoted"')
    assert [v for v, _ in cm.var("INFANITE_PYTHON_SCRIPTS")] == ["infanite/__init__.py", "infanite/core.py",
                                                                 "INFANiTECommonLib/__init__.py",
                                                                 "INFANiTECommonLib/widget.py"]
    assert [c.values()[0] for c in cm.calls("add_subdirectory")] == [FAKE]   # the bracket comment is skipped
    module_cm = parse_cmake(root / FAKE / "CMakeLists.txt")
    assert [v for v, _ in module_cm.var("MODULE_PYTHON_SCRIPTS")] == [f"{FAKE}.py", f"{FAKE}Lib/__init__.py",
                                                                      f"{FAKE}Lib/helper"]
    assert module_cm.var("MODULE_PYTHON_SCRIPTS")[2][1] == 7          # line numbers survive ${VAR} expansion


def _edit(root: Path, rel: str, old: str, new: str, count: int = 1) -> None:
    path = root / rel
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {rel}"
    path.write_text(text.replace(old, new, count), encoding="utf-8")


def _write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text, encoding="utf-8")


M = f"{FAKE}/{FAKE}.py"
UI = f"{FAKE}/Resources/UI/{FAKE}.ui"
LIB = f"{FAKE}/{FAKE}Lib/helper.py"
S4 = f"{EXTENSION_NAME}.s4ext"

# (id, mutation, checker(root) → problems, substrings that must all appear in one problem)
BREAKAGES: List[Tuple[str, Callable[[Path], None], Callable[[Path], Problems], Sequence[str]]] = [
    # rule 1
    ("ui-not-xml", lambda r: _edit(r, UI, "</ui>", "</uii>"),
     lambda r: check_ui_files(r, FAKE), [f"{FAKE}.ui:", "not well-formed XML"]),
    ("ui-top-widget", lambda r: _edit(r, UI, 'class="qMRMLWidget"', 'class="QDialog"'),
     lambda r: check_ui_files(r, FAKE), [f"{FAKE}.ui:4:", "top widget class is 'QDialog'"]),
    ("ui-unknown-name", lambda r: _edit(r, M, "self.ui.progressBar.setFormat", "self.ui.progresBar.setFormat"),
     lambda r: check_ui_files(r, FAKE), [f"{FAKE}.py:", "self.ui.progresBar", "no widget/layout named"]),
    ("ui-spacer-is-no-object", lambda r: _edit(r, M, "self.ui.verticalLayout.addStretch(1)",
                                               "self.ui.verticalSpacer.changeSize(1, 1)"),
     lambda r: check_ui_files(r, FAKE), ["self.ui.verticalSpacer"]),
    ("ui-connect-string-class", lambda r: _edit(r, UI, 'class="QPushButton" name="applyButton"',
                                                'class="QLabel" name="applyButton"'),
     lambda r: check_ui_files(r, FAKE), ["self.ui.applyButton.clicked", "is a QLabel", "QPushButton"]),
    ("ui-progress-class", lambda r: _edit(r, UI, 'class="QProgressBar"', 'class="QSlider"'),
     lambda r: check_ui_files(r, FAKE), ["self.ui.progressBar.setFormat", "is a QSlider", "QProgressBar"]),
    ("ui-mrml-class", lambda r: _edit(r, UI, 'class="qMRMLNodeComboBox" name', 'class="QComboBox" name'),
     lambda r: check_ui_files(r, FAKE), ["self.ui.inputSelector.currentNodeChanged", "is a QComboBox", "qMRML*"]),
    ("ui-plaintext-class", lambda r: _edit(r, UI, 'class="QPlainTextEdit"', 'class="QTextEdit"'),
     lambda r: check_ui_files(r, FAKE), ["self.ui.logText.appendPlainText", "is a QTextEdit"]),
    ("ui-value-assign-class", lambda r: _edit(r, UI, 'class="ctkSliderWidget"', 'class="QLineEdit"'),
     lambda r: check_ui_files(r, FAKE), ["self.ui.thresholdSlider.value", "is a QLineEdit"]),
    ("ui-path-class", lambda r: _edit(r, UI, 'class="ctkPathLineEdit"', 'class="ctkDirectoryButton"'),
     lambda r: check_ui_files(r, FAKE), ["self.ui.outputPath.currentPath", "is a ctkDirectoryButton"]),
    ("param-unknown-name", lambda r: _edit(r, UI, "<string>outputFolder</string>", "<string>outputDir</string>"),
     lambda r: check_parameter_bindings(r, FAKE), [f"{FAKE}.ui:", "SlicerParameterName 'outputDir'", "outputPath"]),
    ("param-unused-field", lambda r: _edit(r, M, "    label: Optional[str] = None\n",
                                           "    label: Optional[str] = None\n    neverUsed: int = 0\n"),
     lambda r: check_parameter_bindings(r, FAKE), [f"{FAKE}.py:31:", "INFANiTEFooParameterNode.neverUsed"]),
    ("param-no-wrapper", lambda r: _edit(r, M, "@parameterNodeWrapper\n", ""),
     lambda r: check_parameter_bindings(r, FAKE), ["no @parameterNodeWrapper class"]),
    # rule 2
    ("py39-syntax", lambda r: _write(r, f"{FAKE}/{FAKE}Lib/new.py", "def f(x):\n    match x:\n        case 1:\n"
                                                                 "            return 1\n"),
     lambda r: check_compile(r, (3, 9))[0], ["new.py:2:", "Python 3.9"]),
    ("py312-syntax", lambda r: _write(r, "infanite/bad.py", "print 'hello'\n"),
     lambda r: check_compile(r, (3, 12))[0], ["infanite/bad.py:1:", "Python 3.12"]),
    ("py312-syntax-warning", lambda r: _write(r, "infanite/bad.py", "x = 1\ny = x is 1\n"),
     lambda r: check_compile(r, (3, 12))[0], ["infanite/bad.py:2:", "\"is\" with", "SyntaxWarnings count as errors"]),
    ("pep604-annotation", lambda r: _edit(r, "infanite/core.py", "x: 'int | None'", "x: int | None"),
     lambda r: check_runtime_compat(r, [r / "infanite/core.py"]), ["core.py:4:", "PEP 604", "int | None"]),
    ("pep604-isinstance", lambda r: _edit(r, LIB, "(int, float)", "int | float"),
     lambda r: check_runtime_compat(r, [r / LIB]), ["helper.py:", "int | float"]),
    ("pep604-alias", lambda r: _edit(r, "infanite/core.py", "import torch\n", "import torch\nMaybe = str | None\n"),
     lambda r: check_runtime_compat(r, [r / "infanite/core.py"]), ["core.py:2:", "str | None", "union type"]),
    ("pep604-parameter-node", lambda r: _edit(r, M, "label: Optional[str] = None", "label: 'str | None' = None"),
     lambda r: check_runtime_compat(r, [r / M]), [f"{FAKE}.py:", "INFANiTEFooParameterNode.label",
                                                   "get_type_hints"]),
    ("match-statement", lambda r: _edit(r, "infanite/core.py", "    return x\n",
                                        "    match x:\n        case _:\n            return x\n"),
     lambda r: check_runtime_compat(r, [r / "infanite/core.py"]), ["core.py:5:", "match"]),
    ("zip-strict", lambda r: _edit(r, "infanite/core.py", "    return x\n", "    return zip(x, x, strict=True)\n"),
     lambda r: check_runtime_compat(r, [r / "infanite/core.py"]), ["core.py:5:", "zip(..., strict=...)"]),
    ("dataclass-slots", lambda r: _edit(r, "infanite/core.py", "import torch\n",
                                        "import torch\nfrom dataclasses import dataclass\n\n\n"
                                        "@dataclass(slots=True)\nclass A:\n    x: int = 0\n"),
     lambda r: check_runtime_compat(r, [r / "infanite/core.py"]), ["core.py:5:", "dataclass(slots=...)"]),
    ("typing-self", lambda r: _edit(r, "infanite/core.py", "import torch\n", "import torch\nfrom typing import Self\n"),
     lambda r: check_runtime_compat(r, [r / "infanite/core.py"]), ["core.py:2:", "Self", "3.11"]),
    ("unittest-alias-312", lambda r: _edit(r, M, "self.assertEqual(1, 1)", "self.assertEquals(1, 1)"),
     lambda r: check_runtime_compat(r, [r / M]), [f"{FAKE}.py:", "assertEquals", "3.12"]),
    # rule 3
    ("import-torch-file-scope", lambda r: _edit(r, LIB, "import json\n", "import json\nimport torch\n"),
     lambda r: check_file_scope_imports(r, FAKE), ["helper.py:5:", "import torch", "'torch'"]),
    ("import-in-try", lambda r: _edit(r, LIB, "import json\n", "import json\ntry:\n    import nibabel\n"
                                                                "except ImportError:\n    nibabel = None\n"),
     lambda r: check_file_scope_imports(r, FAKE), ["helper.py:6:", "'nibabel'"]),
    ("import-in-class-body", lambda r: _edit(r, M, "class INFANiTEFooLogic(ScriptedLoadableModuleLogic):\n",
                                             "class INFANiTEFooLogic(ScriptedLoadableModuleLogic):\n"
                                             "    import yaml\n"),
     lambda r: check_file_scope_imports(r, FAKE), [f"{FAKE}.py:", "'yaml'"]),
    ("import-infanite-file-scope", lambda r: _edit(r, M, "import logging\n",
                                                   "import logging\nfrom infanite import cli\n"),
     lambda r: check_file_scope_imports(r, FAKE), [f"{FAKE}.py:3:", "from infanite import cli", "torch/nibabel"]),
    ("import-common-lib-third-party", lambda r: _edit(r, "INFANiTECommonLib/widget.py", "import vtk\n",
                                                      "import vtk\nimport skimage.io\n"),
     lambda r: check_file_scope_imports(r, COMMON_LIB), ["INFANiTECommonLib/widget.py:4:", "'skimage'"]),
    ("import-other-module-lib", lambda r: _edit(r, M, "import logging\n", "import logging\nimport INFANiTEBarLib\n"),
     lambda r: check_file_scope_imports(r, FAKE), [f"{FAKE}.py:3:", "'INFANiTEBarLib'"]),
    ("install-file-scope", lambda r: _edit(r, M, "import logging\n",
                                           "import logging\nslicer.util.pip_install('nibabel')\n"),
     lambda r: check_no_installs(r, FAKE), [f"{FAKE}.py:3:", "pip_install", "file scope"]),
    ("install-in-if-file-scope", lambda r: _edit(r, LIB, "import json\n",
                                                 "import json\nif True:\n    x = [pip_ensure(['nibabel'])]\n"),
     lambda r: check_no_installs(r, FAKE), ["helper.py:6:", "pip_ensure", "file scope"]),
    ("install-module-init", lambda r: _edit(r, M, '        self.parent.title = "Foo"\n',
                                            '        self.parent.title = "Foo"\n'
                                            '        slicer.util.pip_install("nibabel")\n'),
     lambda r: check_no_installs(r, FAKE), [f"{FAKE}.py:20:", "INFANiTEFoo.__init__"]),
    ("install-torch-in-function", lambda r: _edit(r, LIB, 'pip_install("nibabel")', 'pip_install("torch>=2.1")'),
     lambda r: check_no_installs(r, FAKE), ["helper.py:", "pip-installs torch"]),
    ("install-torch-subprocess", lambda r: _edit(r, "infanite/core.py", "    return x\n",
                                                 "    subprocess.run([sys.executable, '-m', 'pip', 'install', "
                                                 "'torch==2.1'])\n"),
     lambda r: check_no_installs(r, CORE_PACKAGE), ["infanite/core.py:5:", "pip-installs torch"]),
    # rule 4
    ("cmake-unlisted-script", lambda r: _write(r, f"{FAKE}/{FAKE}Lib/extra.py", ""),
     lambda r: check_module_cmake(r, FAKE), [f"{FAKE}/CMakeLists.txt:4:", f"{FAKE}Lib/extra.py",
                                             "MODULE_PYTHON_SCRIPTS"]),
    ("cmake-listed-missing-script", lambda r: (r / LIB).unlink(),
     lambda r: check_module_cmake(r, FAKE), [f"{FAKE}/CMakeLists.txt:7:", f"{FAKE}Lib/helper.py", "does not exist"]),
    ("cmake-unlisted-resource", lambda r: (r / f"{FAKE}/Resources/Icons/extra.png").write_bytes(_PNG),
     lambda r: check_module_cmake(r, FAKE), [f"{FAKE}/CMakeLists.txt:10:", "Resources/Icons/extra.png",
                                             "MODULE_PYTHON_RESOURCES"]),
    ("cmake-listed-missing-resource", lambda r: _edit(r, f"{FAKE}/CMakeLists.txt", "Resources/UI/${MODULE_NAME}.ui",
                                                      "Resources/UI/${MODULE_NAME}.ui\n  Resources/UI/Other.ui"),
     lambda r: check_module_cmake(r, FAKE), [f"{FAKE}/CMakeLists.txt:13:", "Resources/UI/Other.ui",
                                             "does not exist"]),
    ("cmake-macro-name", lambda r: _edit(r, f"{FAKE}/CMakeLists.txt", "NAME ${MODULE_NAME}", "NAME Foo"),
     lambda r: check_module_cmake(r, FAKE), ["NAME is 'Foo'"]),
    ("cmake-macro-scripts", lambda r: _edit(r, f"{FAKE}/CMakeLists.txt", "SCRIPTS ${MODULE_PYTHON_SCRIPTS}",
                                            "SCRIPTS ${MODULE_NAME}.py"),
     lambda r: check_module_cmake(r, FAKE), ["SCRIPTS is not ${MODULE_PYTHON_SCRIPTS}"]),
    ("cmake-core-unlisted", lambda r: _edit(r, "CMakeLists.txt", "  INFANiTECommonLib/widget.py\n", ""),
     lambda r: check_top_cmake(r), ["CMakeLists.txt:", "INFANiTECommonLib/widget.py is not in the SCRIPTS"]),
    ("cmake-core-data-unlisted", lambda r: _edit(r, "CMakeLists.txt",
                                                 "set(INFANITE_PYTHON_RESOURCES INFANiTECommonLib/requirements.txt)",
                                                 "set(INFANITE_PYTHON_RESOURCES)"),
     lambda r: check_top_cmake(r), ["INFANiTECommonLib/requirements.txt is not in the RESOURCES"]),
    ("cmake-core-listed-missing", lambda r: _edit(r, "CMakeLists.txt", "  INFANiTECommonLib/widget.py\n",
                                                  "  INFANiTECommonLib/widget.py\n  INFANiTECommonLib/gone.py\n"),
     lambda r: check_top_cmake(r), ["CMakeLists.txt:34:", "INFANiTECommonLib/gone.py", "does not exist"]),
    ("cmake-no-compile-macro", lambda r: _edit(r, "CMakeLists.txt", "ctkMacroCompilePythonScript(",
                                               "message(STATUS "),
     lambda r: check_top_cmake(r), ["no ctkMacroCompilePythonScript"]),
    ("cmake-subdirectory-missing", lambda r: _edit(r, "CMakeLists.txt", "add_subdirectory(INFANiTEFoo)", ""),
     lambda r: check_top_subdirectories(r), ["module INFANiTEFoo/ is missing add_subdirectory"]),
    ("cmake-subdirectory-extra", lambda r: _edit(r, "CMakeLists.txt", "add_subdirectory(INFANiTEFoo)",
                                                 "add_subdirectory(INFANiTEFoo)\nadd_subdirectory(INFANiTEGone)"),
     lambda r: check_top_subdirectories(r), ["CMakeLists.txt:22:", "add_subdirectory(INFANiTEGone)"]),
    # rule 5
    ("s4ext-description", lambda r: _edit(r, S4, "a line break.", "a line-break."),
     lambda r: check_s4ext(r), [f"{S4}:12:", "description", "EXTENSION_DESCRIPTION"]),
    ("s4ext-depends", lambda r: _edit(r, S4, "depends NA", "depends PyTorch"),
     lambda r: check_s4ext(r), [f"{S4}:5:", "depends 'PyTorch'", "EXTENSION_DEPENDS"]),
    ("s4ext-screenshots-order", lambda r: _edit(r, S4, "Screenshots/a.png", "Screenshots/c.png"),
     lambda r: check_s4ext(r), ["screenshoturls"]),
    ("s4ext-missing-key", lambda r: _edit(r, S4, "scmrevision main\n", ""),
     lambda r: check_s4ext(r), ["missing key 'scmrevision'"]),
    ("s4ext-category", lambda r: _edit(r, "CMakeLists.txt", '"Neuroimaging"', '"Segmentation"'),
     lambda r: check_s4ext(r), ["category 'Neuroimaging' differs from EXTENSION_CATEGORY 'Segmentation'"]),
    ("s4ext-no-cpack", lambda r: _edit(r, "CMakeLists.txt", "include(${Slicer_EXTENSION_CPACK})", ""),
     lambda r: check_s4ext(r), ["missing include(${Slicer_EXTENSION_CPACK})"]),
    ("url-missing-file", lambda r: (r / "Resources/Screenshots/b.png").unlink(),
     lambda r: check_image_urls(r), ["Resources/Screenshots/b.png does not exist"]),
    ("url-not-raw", lambda r: _edit(r, S4, f"{_RAW}/Resources/INFANiTE.png",
                                    "https://github.com/example/SlicerINFANiTE/blob/main/Resources/INFANiTE.png"),
     lambda r: check_image_urls(r), [f"{S4}:10 iconurl", "not a raw image URL"]),
    ("url-not-image", lambda r: _edit(r, "CMakeLists.txt", "Resources/INFANiTE.png", "Resources/INFANiTE.txt"),
     lambda r: check_image_urls(r), ["EXTENSION_ICONURL", "not an image URL"]),
    ("url-other-repository", lambda r: _edit(r, S4, "raw.githubusercontent.com/example/", "raw.githubusercontent.com/"
                                                                                          "someone/"),
     lambda r: check_image_urls(r), ["someone/slicerinfanite", "example/slicerinfanite"]),
    # rule 6
    ("class-missing-logic", lambda r: _edit(r, M, "class INFANiTEFooLogic(ScriptedLoadableModuleLogic):",
                                            "class FooLogic(ScriptedLoadableModuleLogic):"),
     lambda r: check_module_classes(r, FAKE), ["no class INFANiTEFooLogic(ScriptedLoadableModuleLogic)"]),
    ("class-wrong-base", lambda r: _edit(r, M, "class INFANiTEFooTest(ScriptedLoadableModuleTest):",
                                         "class INFANiTEFooTest(unittest.TestCase):"),
     lambda r: check_module_classes(r, FAKE), ["INFANiTEFooTest does not derive from ScriptedLoadableModuleTest"]),
    ("test-not-run", lambda r: _edit(r, M, "        self.test_foo()\n", "        pass\n"),
     lambda r: check_module_classes(r, FAKE), ["runTest does not call self.test_foo()"]),
    ("test-no-runtest", lambda r: _edit(r, M, "def runTest(self):", "def run_test(self):"),
     lambda r: check_module_classes(r, FAKE), ["INFANiTEFooTest has no runTest"]),
    ("module-too-long", lambda r: _edit(r, M, '"""Fake module."""\n', '"""Fake module."""\n' + "#\n" * 400),
     lambda r: check_module_classes(r, FAKE), [f"must stay < {MAX_MODULE_LINES}"]),
    ("module-no-categories", lambda r: _edit(r, M, '        self.parent.categories = ["INFANiTE"]\n', ""),
     lambda r: check_module_classes(r, FAKE), ["does not set self.parent.categories"]),
    ("widget-state", lambda r: _edit(r, M, "        self.logic = INFANiTEFooLogic()\n",
                                     "        self.logic = INFANiTEFooLogic()\n        self.lastResult = None\n"),
     lambda r: check_widget_state(r, FAKE), [f"{FAKE}.py:49:", "INFANiTEFooWidget.setup stores self.lastResult"]),
    ("widget-state-tuple", lambda r: _edit(r, M, "    def onApply(self, *args):\n",
                                           "    def onApply(self, *args):\n        self._busy, x = True, 1\n"),
     lambda r: check_widget_state(r, FAKE), ["INFANiTEFooWidget.onApply stores self._busy"]),
    ("layout-no-icon", lambda r: (r / f"{FAKE}/Resources/Icons/{FAKE}.png").write_text("not a png"),
     lambda r: check_module_layout(r, FAKE), [f"{FAKE}.png:1: not a PNG"]),
    ("layout-resource-path", lambda r: _edit(r, M, 'resourcePath("UI/INFANiTEFoo.ui")', 'resourcePath("UI/Foo.ui")'),
     lambda r: check_module_layout(r, FAKE), ["resourcePath('UI/Foo.ui')", "does not exist"]),
    ("discovery-incomplete", lambda r: (r / "INFANiTEBar" / "INFANiTEBarLib").mkdir(parents=True),
     lambda r: [f"incomplete: {m}" for m in incomplete_module_folders(r)], ["incomplete: INFANiTEBar"]),
]


@pytest.mark.parametrize("mutate, checker, expected", [pytest.param(m, c, e, id=i) for i, m, c, e in BREAKAGES])
def test_checker_reports_breakage(tmp_path, mutate, checker, expected):
    root = make_fake_extension(tmp_path)
    assert not checker(root), "the unbroken fake extension must pass this checker"
    mutate(root)
    problems = checker(root)
    assert any(all(e in p for e in expected) for p in problems), \
        f"expected a problem containing {list(expected)}, got:\n  " + "\n  ".join(problems or ["(none)"])


def test_checker_fake_extension_compiles(tmp_path):
    root = make_fake_extension(tmp_path)
    for version in ((3, 9), (3, 12)):
        problems, note = check_compile(root, version)
        assert not problems, problems


def test_checker_compile_fallback(tmp_path, monkeypatch):
    """Without interpreters, the in-process fallback still catches 3.10+ syntax (and says so)."""
    root = make_fake_extension(tmp_path)
    _write(root, "infanite/m.py", "def f(x):\n    match x:\n        case 1:\n            return 1\n")
    monkeypatch.setattr(sys.modules[__name__], "find_python", lambda version: None)
    problems, note = check_compile(root, (3, 9))
    assert note and "no working python3.9" in note
    assert any("infanite/m.py:" in p and "3.9" in p for p in problems), problems


def test_checker_no_modules(tmp_path):
    (tmp_path / COMMON_LIB).mkdir()
    (tmp_path / COMMON_LIB / "__init__.py").write_text("")
    assert discover_modules(tmp_path) == []
    with pytest.raises(pytest.fail.Exception, match="no Slicer module found"):
        _need(None)


def test_checker_test_file_itself_runs_on_39():
    """This file must run on the CI's oldest Python too."""
    here = Path(__file__)
    _report(check_runtime_compat(REPO, [here]), "test_slicer_static.py on 3.9")


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


def test_catalog_entry_matches_cmake_and_s4ext():
    _report(check_catalog_entry(REPO), f"{EXTENSION_NAME}.json")


def test_catalog_checker_catches_a_wrong_category(tmp_path):
    for name in ("CMakeLists.txt", f"{EXTENSION_NAME}.s4ext", f"{EXTENSION_NAME}.json"):
        (tmp_path / name).write_text((REPO / name).read_text())
    assert check_catalog_entry(tmp_path) == []
    entry = json.loads((tmp_path / f"{EXTENSION_NAME}.json").read_text())
    entry["category"], entry["build_dependencies"] = "Segmentation", []
    (tmp_path / f"{EXTENSION_NAME}.json").write_text(json.dumps(entry))
    problems = check_catalog_entry(tmp_path)
    assert any("category" in p for p in problems) and any("build_dependencies" in p for p in problems)
