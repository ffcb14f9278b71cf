"""Rule 1: the .ui files (read with expat, for line numbers): every ``self.ui.<widget>.<member>`` of a module names
an object of its .ui whose class has that member; parameter-node fields ↔ ``SlicerParameterName`` bindings."""
from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
import xml.parsers.expat
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from .common import group_py_files, loc, parameter_fields, parameter_node_classes, parse, relpath, walk_files
from .config import ALLOWED_TOP_WIDGETS, METHOD_CLASSES, Problems


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
    for ui in sorted(p for p in walk_files(folder) if p.suffix == ".ui"):
        try:
            info = parse_ui(ui)
        except ET.ParseError as e:
            problems.append(f"{loc(repo, ui, e.position[0])}: not well-formed XML: {e}")
            continue
        except xml.parsers.expat.ExpatError as e:
            problems.append(f"{loc(repo, ui, e.lineno)}: not well-formed XML: {e}")
            continue
        parsed[ui] = info
        if info.top_class not in ALLOWED_TOP_WIDGETS:
            problems.append(f"{loc(repo, ui, info.top_line)}: top widget class is {info.top_class!r}, expected one "
                            f"of {sorted(ALLOWED_TOP_WIDGETS)}")
    main_ui = folder / "Resources" / "UI" / f"{module}.ui"
    module_py = folder / f"{module}.py"
    tree = parse(module_py)
    if not main_ui.is_file():
        problems.append(f"{relpath(repo, main_ui)}:1: missing (the module's UI)")
        return problems
    info = parsed.get(main_ui)
    if info is None or tree is None:
        return problems
    reported = set()
    for name, member, line in ui_usages(tree):
        if name not in info.objects:
            if name not in reported:
                reported.add(name)
                problems.append(f"{loc(repo, module_py, line)}: self.ui.{name} — no widget/layout named {name!r} in "
                                f"{relpath(repo, main_ui)}")
            continue
        allowed = METHOD_CLASSES.get(member or "")
        cls, ui_line = info.objects[name]
        if allowed and not _class_matches(cls, allowed, info.extends):
            key = (name, member)
            if key not in reported:
                reported.add(key)
                problems.append(f"{loc(repo, module_py, line)}: self.ui.{name}.{member} — {name!r} is a {cls} "
                                f"({loc(repo, main_ui, ui_line)}), but .{member} needs one of "
                                f"{', '.join(sorted(allowed))}")
    return problems


def check_parameter_bindings(repo: Path, module: str) -> Problems:
    """Rule 1 (parameter node): every ``SlicerParameterName`` in the module's .ui files names a field of its
    ``@parameterNodeWrapper`` class; every field is bound by a widget or used as ``.<field>`` in the module file (or
    its Lib)."""
    repo = Path(repo)
    folder = repo / module
    module_py = folder / f"{module}.py"
    tree = parse(module_py)
    if tree is None:
        return [f"{relpath(repo, module_py)}:1: missing or does not parse"]
    classes = parameter_node_classes(tree)
    if not classes:
        return [f"{relpath(repo, module_py)}:1: no @parameterNodeWrapper class"]
    fields: Dict[str, Tuple[str, int]] = {}
    for cls in classes:
        for name, line in parameter_fields(cls).items():
            fields[name] = (cls.name, line)
    problems: Problems = []
    bound = set()
    for ui in sorted(p for p in walk_files(folder) if p.suffix == ".ui"):
        try:
            info = parse_ui(ui)
        except (ET.ParseError, xml.parsers.expat.ExpatError):
            continue  # reported by check_ui_files
        for value, line, widget, wcls in info.parameters:
            head = value.split(".")[0]
            bound.add(head)
            if head not in fields:
                problems.append(f"{loc(repo, ui, line)}: SlicerParameterName {value!r} (widget {widget!r}, {wcls}) "
                                f"is not a field of {', '.join(c.name for c in classes)} "
                                f"(fields: {', '.join(sorted(fields)) or 'none'})")
    used = set()
    for path in [module_py] + group_py_files(repo, module):
        t = tree if path == module_py else parse(path)
        if t is not None:
            used.update(n.attr for n in ast.walk(t) if isinstance(n, ast.Attribute))
    for name, (cls_name, line) in sorted(fields.items()):
        if name not in bound and name not in used:
            problems.append(f"{loc(repo, module_py, line)}: parameter {cls_name}.{name} is neither bound to a widget "
                            f"(SlicerParameterName) nor used as .{name} in {module}.py or {module}Lib")
    return problems
