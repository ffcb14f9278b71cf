"""Static check of the extension's Slicer / CTK / Qt / MRML / VTK calls against ``index/slicer-*.json``.

``check_extension(repo, indexes)`` walks every ``.py`` of the module folders (``INFANiTE*/`` holding
``<Folder>.py``: that file and ``<Folder>Lib/``) and of ``INFANiTECommonLib/``, infers the types of expressions
where it can (flow-sensitively inside each function, twice over the whole extension so that return values and
``self.`` attributes assigned elsewhere are known) and checks, against *every* index given (5.8.1 and 5.10.0):

- ``self.ui.X``: X is a widget/action of the module's ``Resources/UI/<Module>.ui`` (class from ``class=``);
  ``self.ui.X.m(...)`` / ``self.ui.X.p`` / ``self.ui.X.p = v`` / ``self.ui.X.connect("sig(args)", f)``;
- objects made by ``<scene>.AddNewNodeByClass("vtkMRMLX", …)`` (also ``GetFirstNodeByClass``,
  ``CreateNodeByClass``; a conditional of two literals gives both classes), ``vtk.vtkX()``, ``slicer.vtkX()``,
  ``qt.QX()``, ``slicer.app``, ``slicer.mrmlScene``, ``slicer.modules.<m>.logic()``,
  ``slicer.util.getModuleLogic("M")``, parameter-node-wrapper fields annotated with a class
  (``p.t2Volume`` where ``p`` comes from ``getParameterNode()`` / the ``@parameterNodeWrapper`` class, or — by
  field name — any untyped receiver in the module's own files), and the declared return classes of indexed
  methods (``GetTable()`` → ``vtkTable``; such a type is "at least" that class: a member missing there is listed
  as unresolved, not as a problem, since the object may be of a subclass);
- members: must be visible to Python at both tags (PythonQt rules for Qt/CTK/Slicer QObjects, VTK's wrapper for
  ``vtk*``: see ``generate_index.py``), not deprecated (the message quotes the header's comment, which names the
  replacement when it does); an attribute assignment on a Qt/CTK/Slicer object must hit a writable property
  (``obj.name`` is ``objectName``, as PythonQt maps it); calling a ``Q_PROPERTY`` of a QObject is a problem even
  where a getter of that name exists, because PythonQt looks properties up before methods
  (``PythonQtClassInfo::member``) and returns the property's value (``QTimer.singleShot``, which PythonQt
  ignores as a property, excepted: the index records both facts from PythonQt's sources);
- ``connect("signal(args)", …)``: the normalized signature must be a signal of the class or its bases;
- Python-level APIs: ``slicer.util.f(...)``, ``SampleData.<f>`` / ``SampleData.SampleDataLogic.<m>(...)``,
  ``PyTorchUtils.PyTorchUtilsLogic().<m>(...)``, names imported from ``slicer.util``,
  ``slicer.ScriptedLoadableModule`` and ``slicer.parameterNodeWrapper``: must exist at both tags, and each call
  must bind to the signature (positional count, keyword names, required parameters).  A keyword whose default is
  a literal container (``{}``, ``[]``) or a bool/str literal, given a literal of another container type, is a
  problem (SampleData's ``loadFileProperties``: one dict for all files, not a list).  ``f(**d)`` is expanded when
  ``d`` is a dict literal of the same function or an element of a list of dict literals returned by a function of
  the same file; otherwise the call is listed as unresolved;
- ``slicer.<sub>`` (attribute, ``getattr`` or ``hasattr``) where ``<sub>`` is a submodule of the ``slicer``
  package (at the tag, or only on Slicer's main branch, e.g. ``packaging``) that ``import slicer`` does not
  import, without ``import slicer.<sub>`` / ``from slicer import <sub>`` in the file;
- a member missing at one tag only is a problem naming the tag, unless guarded by ``hasattr(obj, "Name")`` /
  ``getattr(obj, "Name", …)`` in an enclosing ``if`` (or an ``and`` / conditional expression) test.

What it cannot resolve is listed in ``Report.unresolved`` (never silently passed): calls of VTK/MRML-style members
(``x.Upper(...)``, ``x.…MRML…(...)``) on receivers of unknown type, ``connect("sig()")`` on unknown receivers,
``**kwargs`` it cannot expand, members of classes whose base chain leaves the index, names of ``vtk``/``qt``/
``ctk``/``slicer`` that are not indexed.  Not covered: Python classes of the extension itself (no member checks
on them), argument types and counts of C++ methods, keyword arguments to C++ methods, anything reached through
``getattr`` with a computed name, and VTK's snake_case properties.

Standard library only (ast, json, xml): importable without Qt or Slicer.
"""
from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

INDEX_DIR = Path(__file__).resolve().parent / "index"
COMMON_LIB = "INFANiTECommonLib"
MODULE_PREFIX = "INFANiTE"
#: scene methods whose first argument (a literal class name) is the class of the node returned
NODE_FACTORIES = {"AddNewNodeByClass", "AddNewNodeByClassWithID", "GetFirstNodeByClass", "CreateNodeByClass",
                  "GetSingletonNode"}
#: container literal types that must not be mixed up (list and tuple are one kind here)
_CONTAINER = {"dict": "dict", "list": "sequence", "tuple": "sequence", "set": "set"}


@dataclass
class Report:
    problems: List[str] = field(default_factory=list)
    unresolved: List[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------------------
# the indexes
# ------------------------------------------------------------------------------------------------------------------
def load_indexes(folder: Path = INDEX_DIR) -> Dict[str, dict]:
    """``{"5.8.1": index, "5.10.0": index}`` from ``index/slicer-*.json`` (ordered by version)."""
    out = {}
    for path in sorted(Path(folder).glob("slicer-*.json"),
                       key=lambda p: tuple(int(x) for x in re.findall(r"\d+", p.stem))):
        out[path.stem[len("slicer-"):]] = json.loads(path.read_text())
    return out


@dataclass
class Member:
    owner: str
    category: str            # method, slot, invokable, signal, property, enum, decorator, builtin
    ret: str = ""
    deprecated: str = ""
    writable: bool = False


class Api:
    """Lookups in one index."""

    EXPOSED = {"vtk": ("methods", "enums"),
               "qt": ("methods", "slots", "invokables", "properties", "enums", "decorators"),
               "qobject": ("slots", "invokables", "properties", "enums", "decorators"),
               "cpp": ("decorators",)}

    def __init__(self, tag: str, index: dict):
        self.tag = tag
        self.index = index
        self.classes: Dict[str, dict] = index["classes"]
        self.meta = index["metadata"]
        self.python = index["python"]
        self.builtins = set(self.meta.get("pythonqt_instance_methods", []))
        self.name_alias = self.meta.get("pythonqt_name_property_alias", "")
        self.ignored_properties = {c: set(p) for c, p in self.meta.get("pythonqt_ignored_properties", {}).items()}
        self._mro: Dict[str, Tuple[List[str], List[str]]] = {}

    def mro(self, name: str) -> Tuple[List[str], List[str]]:
        """(classes from ``name`` up, depth first; bases that are not indexed)."""
        if name in self._mro:
            return self._mro[name]
        order: List[str] = []
        missing: List[str] = []

        def walk(n: str) -> None:
            if n in order:
                return
            entry = self.classes.get(n)
            if entry is None:
                missing.append(n)
                return
            order.append(n)
            for b in entry.get("bases", []):
                walk(b)
            missing.extend(entry.get("unindexed_bases", []))

        walk(name)
        self._mro[name] = (order, sorted(set(missing)))
        return self._mro[name]

    def is_qt_object(self, name: str) -> bool:
        order, _ = self.mro(name)
        return any(self.classes[c]["kind"] in ("qt", "qobject", "cpp") for c in order)

    def _ignored(self, name: str, attr: str) -> bool:
        order, _ = self.mro(name)
        return any(attr in self.ignored_properties.get(c, ()) for c in order)

    def lookup(self, name: str, attr: str) -> Optional[Member]:
        order, _ = self.mro(name)
        if attr == "name" and self.name_alias and "QObject" in order \
                and not any(attr in self.classes[c].get("properties", {}) for c in order):
            alias = self.property(name, self.name_alias)       # PythonQt maps obj.name to objectName
            if alias is not None:
                return alias
        for cname in order:
            entry = self.classes[cname]
            kind = entry["kind"]
            for section in self.EXPOSED.get(kind, ()):
                values = entry.get(section)
                if section == "properties" and self._ignored(name, attr):
                    continue
                if values and attr in values:
                    ret = values[attr] if isinstance(values, dict) and section != "properties" else ""
                    writable = section == "properties" and values[attr] == "rw"
                    category = {"methods": "method", "slots": "slot", "invokables": "invokable",
                                "properties": "property", "enums": "enum", "decorators": "decorator"}[section]
                    dep = entry.get("deprecated", {}).get(attr, "")
                    return Member(cname, category, ret, dep, writable)
            if kind in ("qt", "qobject") and any(s.split("(")[0] == attr for s in entry.get("signals", [])):
                return Member(cname, "signal")
        if self.is_qt_object(name) and attr in self.builtins:
            return Member(name, "builtin")
        return None

    def property(self, name: str, attr: str) -> Optional[Member]:
        order, _ = self.mro(name)
        if self._ignored(name, attr):
            return None
        if attr == "name" and self.name_alias and "QObject" in order \
                and not any(attr in self.classes[c].get("properties", {}) for c in order):
            attr = self.name_alias
        for cname in order:
            entry = self.classes[cname]
            if entry["kind"] in ("qt", "qobject") and attr in entry.get("properties", {}):
                return Member(cname, "property", writable=entry["properties"][attr] == "rw")
        return None

    def callable_member(self, name: str, attr: str) -> bool:
        order, _ = self.mro(name)
        for cname in order:
            entry = self.classes[cname]
            for section in ("methods", "slots", "invokables", "decorators"):
                if section in self.EXPOSED.get(entry["kind"], ()) and attr in entry.get(section, {}):
                    return True
            if any(s.split("(")[0] == attr for s in entry.get("signals", [])):
                return True
        return self.is_qt_object(name) and attr in self.builtins

    def hidden_owner(self, name: str, attr: str) -> Optional[str]:
        order, _ = self.mro(name)
        for cname in order:
            if attr in self.classes[cname].get("hidden", []):
                return cname
        return None

    def signals(self, name: str) -> Set[str]:
        order, _ = self.mro(name)
        out: Set[str] = set()
        for cname in order:
            out.update(self.classes[cname].get("signals", []))
        return out


def normalize_signature(sig: str) -> str:
    """Same normalization as the generator's (``cpp_headers.normalize_signature``), without its tokenizer."""
    m = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", sig, re.S)
    if not m:
        return re.sub(r"\s+", "", sig)
    params = []
    depth, cur = 0, ""
    for ch in m.group(2):
        if ch in "<([":
            depth += 1
        elif ch in ">)]":
            depth -= 1
        if ch == "," and depth == 0:
            params.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        params.append(cur)
    out = []
    builtin = {"int", "unsigned", "signed", "long", "short", "char", "double", "float", "bool", "void"}
    for p in params:
        p = p.split("=")[0]
        words = re.findall(r"[A-Za-z_]\w*(?:::\w+)*|[*&<>,]|\S", p)
        # a parameter name: a last word after something that already makes a type
        if len(words) >= 2 and re.fullmatch(r"[A-Za-z_]\w*", words[-1]) and words[-1] not in builtin:
            before = [w for w in words[:-1] if w not in ("const", "volatile")]
            if before and (re.fullmatch(r"[A-Za-z_][\w:]*", before[-1]) or before[-1] in ("*", "&", "&&", ">")) \
                    and not (len(before) == 1 and before[0] in ("unsigned", "signed")):
                words = words[:-1]
        words = [w for w in words if w not in ("const", "&", "&&", "volatile")]
        text = ""
        for w in words:
            if text and re.match(r"\w", w) and re.search(r"\w$", text):
                text += " "
            text += w
        out.append(text)
    return f"{m.group(1)}(" + ",".join(out) + ")"


# ------------------------------------------------------------------------------------------------------------------
# types
# ------------------------------------------------------------------------------------------------------------------
UNKNOWN = ("?",)
NONE = ("none",)
Value = FrozenSet[tuple]
UNK: Value = frozenset([UNKNOWN])


def V(*types: tuple) -> Value:
    return frozenset(types) if types else UNK


def known(value: Value) -> List[tuple]:
    return [t for t in value if t not in (UNKNOWN, NONE)]


def describe(t: tuple) -> str:
    if t[0] == "cls":
        return t[1]
    if t[0] == "classref":
        return f"class {t[1]}"
    if t[0] in ("pyclass", "pyinst"):
        return f"{t[1]}.{t[2]}"
    return t[0]


# ------------------------------------------------------------------------------------------------------------------
# extension layout
# ------------------------------------------------------------------------------------------------------------------
@dataclass
class SourceFile:
    path: Path
    rel: str
    dotted: str                  # import name: INFANiTECommonLib.widget, INFANiTETrainingLib.controller …
    group: str                   # module name or COMMON_LIB
    tree: ast.Module
    is_module_main: bool = False
    parents: Dict[int, ast.AST] = field(default_factory=dict)
    slicer_imports: Set[str] = field(default_factory=set)     # slicer submodules imported in this file


@dataclass
class UiInfo:
    rel: str
    top: str
    widgets: Dict[str, str]


def parse_ui(path: Path, rel: str) -> UiInfo:
    root = ET.parse(path).getroot()
    widgets: Dict[str, str] = {}
    top = ""
    top_el = root.find("widget")
    if top_el is not None:
        top = top_el.get("class", "")
    for el in root.iter():
        if el.tag in ("widget", "layout", "action") and el.get("name"):
            widgets[el.get("name")] = el.get("class", "QAction" if el.tag == "action" else "")
    return UiInfo(rel, top, widgets)


def discover(repo: Path) -> Tuple[List[SourceFile], Dict[str, UiInfo]]:
    files: List[SourceFile] = []
    uis: Dict[str, UiInfo] = {}
    for folder in sorted(repo.iterdir()):
        if not folder.is_dir() or not folder.name.startswith(MODULE_PREFIX):
            continue
        name = folder.name
        if name == COMMON_LIB:
            roots = [(folder, COMMON_LIB)]
        elif (folder / f"{name}.py").is_file():
            roots = [(folder / f"{name}.py", name), (folder / f"{name}Lib", f"{name}Lib")]
            ui = folder / "Resources" / "UI" / f"{name}.ui"
            if ui.is_file():
                uis[name] = parse_ui(ui, ui.relative_to(repo).as_posix())
        else:
            continue
        for root, dotted_root in roots:
            paths = [root] if root.is_file() else sorted(root.rglob("*.py")) if root.is_dir() else []
            for path in paths:
                rel = path.relative_to(repo).as_posix()
                if root.is_file():
                    dotted = dotted_root
                else:
                    parts = list(path.relative_to(root).with_suffix("").parts)
                    if parts[-1] == "__init__":
                        parts = parts[:-1]
                    dotted = ".".join([dotted_root] + parts)
                try:
                    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
                except SyntaxError:
                    continue
                sf = SourceFile(path, rel, dotted, name, tree, is_module_main=root.is_file())
                for node in ast.walk(tree):
                    for child in ast.iter_child_nodes(node):
                        sf.parents[id(child)] = node
                    if isinstance(node, ast.Import):
                        for a in node.names:
                            if a.name.startswith("slicer."):
                                sf.slicer_imports.add(a.name.split(".")[1])
                    elif isinstance(node, ast.ImportFrom):
                        if node.module == "slicer":
                            sf.slicer_imports.update(a.name for a in node.names)
                        elif (node.module or "").startswith("slicer."):
                            sf.slicer_imports.add(node.module.split(".")[1])
                files.append(sf)
    return files, uis


# ------------------------------------------------------------------------------------------------------------------
# the checker
# ------------------------------------------------------------------------------------------------------------------
class Checker:
    def __init__(self, repo: Path, indexes: Dict[str, dict]):
        self.repo = Path(repo)
        self.apis = [Api(tag, idx) for tag, idx in indexes.items()]
        self.tags = [a.tag for a in self.apis]
        self.files, self.uis = discover(self.repo)
        self.by_dotted = {f.dotted: f for f in self.files}
        self.problems: Dict[Tuple[str, int, str], None] = {}
        self.unresolved: Dict[Tuple[str, int, str], None] = {}
        self.reporting = False
        # pass-1 facts
        self.returns: Dict[int, Value] = {}                         # id(FunctionDef) -> value
        self.self_attrs: Dict[Tuple[str, str, str], Value] = {}     # (file, class, attr) -> value
        self.local_classes: Dict[Tuple[str, str], ast.ClassDef] = {}
        self.pnw: Dict[str, Dict[str, Dict[str, Value]]] = {}       # group -> wrapper class -> field -> value
        self.pnw_classes: Dict[Tuple[str, str], str] = {}           # (file, class) -> group
        self.dicts: Dict[int, ast.Dict] = {}
        self._env_cache: Dict[str, Dict[str, Value]] = {}
        for f in self.files:
            for node in f.tree.body:
                if isinstance(node, ast.ClassDef):
                    self.local_classes[(f.rel, node.name)] = node

    def silent_env(self, f: SourceFile) -> Dict[str, Value]:
        """The module environment of ``f`` computed without reporting (cached; for lookups from elsewhere)."""
        if f.rel not in self._env_cache:
            saved, self.reporting = self.reporting, False
            self._env_cache[f.rel] = self.module_env(f)
            self.reporting = saved
        return self._env_cache[f.rel]

    # -- reporting ------------------------------------------------------------------------------------------------
    def problem(self, f: SourceFile, node: ast.AST, message: str) -> None:
        if self.reporting:
            self.problems[(f.rel, getattr(node, "lineno", 0), message)] = None

    def unresolved_(self, f: SourceFile, node: ast.AST, message: str) -> None:
        if self.reporting:
            self.unresolved[(f.rel, getattr(node, "lineno", 0), message)] = None

    # -- driver ---------------------------------------------------------------------------------------------------
    def run(self) -> Report:
        for f in self.files:
            self.collect_pnw(f)
        for reporting in (False, True):
            self.reporting = reporting
            for f in self.files:
                self.check_file(f)
        fmt = lambda d: [f"{p}:{line}: {m}" for (p, line, m) in sorted(d)]   # noqa: E731
        return Report(fmt(self.problems), fmt(self.unresolved))

    # -- module-level environment ---------------------------------------------------------------------------------
    def module_env(self, f: SourceFile) -> Dict[str, Value]:
        env: Dict[str, Value] = {}
        for node in f.tree.body:
            self.bind_import(f, node, env) if isinstance(node, (ast.Import, ast.ImportFrom)) else None
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                env[node.name] = V(("localfunc", f.rel, node.name, id(node)))
            elif isinstance(node, ast.ClassDef):
                env[node.name] = V(("localclass", f.rel, node.name))
            elif isinstance(node, ast.Try):
                for sub in node.body:
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        self.bind_import(f, sub, env)
        return env

    def python_api(self, key: str) -> List[Tuple[str, Optional[dict]]]:
        return [(a.tag, a.python.get(key)) for a in self.apis]

    def bind_import(self, f: SourceFile, node: ast.AST, env: Dict[str, Value]) -> None:
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                if a.asname:
                    env[a.asname] = V(("mod", a.name))
                else:
                    env[top] = V(("mod", top))
            return
        assert isinstance(node, ast.ImportFrom)
        mod = node.module or ""
        if node.level:
            base = f.dotted.split(".")
            if not f.path.name == "__init__.py":
                base = base[:-1]
            base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
            mod = ".".join(base + ([mod] if mod else []))
        for a in node.names:
            name = a.asname or a.name
            if a.name == "*":
                continue
            env[name] = self.import_value(f, node, mod, a.name)

    def import_value(self, f: SourceFile, node: ast.AST, mod: str, name: str) -> Value:
        """The value of ``from mod import name`` (checks names imported from Slicer's Python APIs)."""
        if mod in ("slicer.util", "slicer.ScriptedLoadableModule", "SampleData", "PyTorchUtils"):
            kinds = set()
            missing = []
            for tag, api in self.python_api(mod):
                if api is None:
                    continue
                if name in api["functions"]:
                    kinds.add(("pyfunc", mod, name))
                elif name in api["classes"]:
                    kinds.add(("pyclass", mod, name))
                elif name in api["names"]:
                    kinds.add(UNKNOWN)
                else:
                    missing.append(tag)
            if missing:
                self.problem(f, node, f"'{name}' is not defined in {mod} at Slicer {', '.join(missing)}")
            return frozenset(kinds) or UNK
        if mod == "slicer.parameterNodeWrapper":
            missing = [a.tag for a in self.apis if name not in a.python["slicer.parameterNodeWrapper"]["exports"]]
            if missing:
                self.problem(f, node, f"'{name}' is not exported by slicer.parameterNodeWrapper at Slicer "
                                      f"{', '.join(missing)}")
            return V(("pnwexport", name))
        if mod == "slicer":
            return self.slicer_attr(f, node, name)
        if mod in ("vtk", "qt", "ctk"):
            return self.namespace_attr(f, node, mod, name)
        target = self.by_dotted.get(mod)
        if target is not None:
            return self.resolve_local(target, name, 0)
        return UNK

    def resolve_local(self, target: SourceFile, name: str, depth: int) -> Value:
        for node in target.tree.body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return V(("localclass", target.rel, name))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                return V(("localfunc", target.rel, name, id(node)))
        if depth < 4:
            for node in target.tree.body:
                if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
                    real = next(a.name for a in node.names if (a.asname or a.name) == name)
                    mod = node.module or ""
                    if node.level:
                        base = target.dotted.split(".")
                        if target.path.name != "__init__.py":
                            base = base[:-1]
                        mod = ".".join(base + ([mod] if mod else []))
                    sub = self.by_dotted.get(mod)
                    if sub is not None:
                        return self.resolve_local(sub, real, depth + 1)
        return UNK

    # -- parameter node wrappers ----------------------------------------------------------------------------------
    def collect_pnw(self, f: SourceFile) -> None:
        env = self.silent_env(f)
        for node in f.tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            if not any(ast.unparse(d).split("(")[0].split(".")[-1] == "parameterNodeWrapper"
                       for d in node.decorator_list):
                continue
            fields: Dict[str, Value] = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    fields[item.target.id] = self.annotation_value(item.annotation, env)
            self.pnw.setdefault(f.group, {})[node.name] = fields
            self.pnw_classes[(f.rel, node.name)] = f.group

    def annotation_value(self, ann: ast.AST, env: Dict[str, Value]) -> Value:
        if isinstance(ann, ast.Subscript):
            head = ast.unparse(ann.value).split(".")[-1]
            if head in ("Optional", "Union"):
                inner = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
                return frozenset().union(*[self.annotation_value(e, env) for e in inner])
            if head == "Annotated":
                inner = ann.slice.elts[0] if isinstance(ann.slice, ast.Tuple) else ann.slice
                return self.annotation_value(inner, env)
            return UNK
        if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
            return self.annotation_value(ann.left, env) | self.annotation_value(ann.right, env)
        if isinstance(ann, (ast.Name, ast.Attribute)):
            v = self.infer_plain(ann, env)
            classes = [t for t in v if t[0] == "classref"]
            if classes:
                return frozenset(("cls", t[1], False) for t in classes)
        return UNK

    # -- per file -------------------------------------------------------------------------------------------------
    def check_file(self, f: SourceFile) -> None:
        env = self.module_env(f)
        ctx = Ctx(f, None, None)
        self.exec_block(ctx, f.tree.body, env, top=True)

    def check_function(self, f: SourceFile, fn: ast.AST, env: Dict[str, Value], cls: Optional[str]) -> None:
        local = dict(env)
        args = fn.args
        params = list(args.posonlyargs) + list(args.args)
        is_static = any(ast.unparse(d) == "staticmethod" for d in getattr(fn, "decorator_list", []))
        for k, a in enumerate(params + list(args.kwonlyargs) + [x for x in (args.vararg, args.kwarg) if x]):
            local[a.arg] = UNK
        if cls is not None and params and not is_static and isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            local[params[0].arg] = V(("localinst", f.rel, cls))
            local["__self__"] = V(("selfname", params[0].arg))
        ctx = Ctx(f, fn, cls)
        self.exec_block(ctx, fn.body, local)

    # -- statements -----------------------------------------------------------------------------------------------
    def exec_block(self, ctx: "Ctx", body: Iterable[ast.stmt], env: Dict[str, Value], top: bool = False) -> Dict:
        for stmt in body:
            env = self.exec_stmt(ctx, stmt, env, top)
        return env

    def exec_stmt(self, ctx: "Ctx", s: ast.stmt, env: Dict[str, Value], top: bool = False) -> Dict:
        f = ctx.file
        if isinstance(s, (ast.Import, ast.ImportFrom)):
            self.bind_import(f, s, env)
            return env
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for d in s.decorator_list:
                self.visit(ctx, d, env)
            self.check_function(f, s, env, ctx.cls if ctx.fn is None and ctx.cls else None)
            env[s.name] = V(("localfunc", f.rel, s.name, id(s)))
            return env
        if isinstance(s, ast.ClassDef):
            for d in s.decorator_list + s.bases:
                self.visit(ctx, d, env)
            cctx = Ctx(f, None, s.name)
            cenv = dict(env)
            for item in s.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    for d in item.decorator_list:
                        self.visit(cctx, d, cenv)
                    self.check_function(f, item, env, s.name)
                elif isinstance(item, ast.AnnAssign):
                    if item.value is not None:
                        self.visit(cctx, item.value, cenv)
                else:
                    self.exec_stmt(cctx, item, cenv)
            return env
        if isinstance(s, ast.Assign):
            self.visit(ctx, s.value, env)
            value = self.infer(ctx, s.value, env)
            for t in s.targets:
                self.assign(ctx, t, value, env, s.value)
            return env
        if isinstance(s, ast.AnnAssign):
            if s.value is not None:
                self.visit(ctx, s.value, env)
                self.assign(ctx, s.target, self.infer(ctx, s.value, env), env, s.value)
            return env
        if isinstance(s, ast.AugAssign):
            self.visit(ctx, s.value, env)
            self.visit_target(ctx, s.target, env)
            return env
        if isinstance(s, ast.If):
            self.visit(ctx, s.test, env)
            a = self.exec_block(ctx, s.body, dict(env))
            b = self.exec_block(ctx, s.orelse, dict(env))
            return merge(a, b)
        if isinstance(s, (ast.For, ast.AsyncFor)):
            self.visit(ctx, s.iter, env)
            body_env = dict(env)
            self.bind_loop(ctx, s.target, s.iter, body_env)
            body_env = self.exec_block(ctx, s.body, body_env)
            out = merge(env, body_env)
            return self.exec_block(ctx, s.orelse, out)
        if isinstance(s, ast.While):
            self.visit(ctx, s.test, env)
            body_env = self.exec_block(ctx, s.body, dict(env))
            return self.exec_block(ctx, s.orelse, merge(env, body_env))
        if isinstance(s, (ast.With, ast.AsyncWith)):
            for item in s.items:
                self.visit(ctx, item.context_expr, env)
                if item.optional_vars is not None:
                    self.assign(ctx, item.optional_vars, UNK, env, None)
            return self.exec_block(ctx, s.body, env)
        if isinstance(s, ast.Try):
            env = self.exec_block(ctx, s.body, env)
            outs = [env]
            for h in s.handlers:
                henv = dict(env)
                if h.name:
                    henv[h.name] = UNK
                outs.append(self.exec_block(ctx, h.body, henv))
            out = outs[0]
            for o in outs[1:]:
                out = merge(out, o)
            out = self.exec_block(ctx, s.orelse, out)
            return self.exec_block(ctx, s.finalbody, out)
        if isinstance(s, ast.Return):
            if s.value is not None:
                self.visit(ctx, s.value, env)
                if ctx.fn is not None:
                    key = id(ctx.fn)
                    self.returns[key] = self.returns.get(key, frozenset()) | self.infer(ctx, s.value, env)
            return env
        for child in ast.iter_child_nodes(s):
            if isinstance(child, ast.expr):
                self.visit(ctx, child, env)
            elif isinstance(child, ast.stmt):
                env = self.exec_stmt(ctx, child, env)
        return env

    def assign(self, ctx: "Ctx", target: ast.AST, value: Value, env: Dict[str, Value], value_node) -> None:
        if isinstance(target, ast.Name):
            env[target.id] = value
        elif isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value_node, (ast.Tuple, ast.List)) and len(value_node.elts) == len(target.elts):
                for t, v in zip(target.elts, value_node.elts):
                    self.assign(ctx, t, self.infer(ctx, v, env), env, v)
            else:
                for t in target.elts:
                    self.assign(ctx, t if not isinstance(t, ast.Starred) else t.value, UNK, env, None)
        elif isinstance(target, ast.Attribute):
            self.visit_target(ctx, target, env)
            key = self.self_key(ctx, target, env)
            if key is not None:
                env["self." + target.attr] = value
                if not self.reporting:
                    k = (ctx.file.rel, ctx.cls, target.attr)
                    self.self_attrs[k] = self.self_attrs.get(k, frozenset()) | value
        else:
            self.visit_target(ctx, target, env)

    def self_key(self, ctx: "Ctx", node: ast.Attribute, env) -> Optional[str]:
        if ctx.cls is None or not isinstance(node.value, ast.Name):
            return None
        selfname = [t[1] for t in env.get("__self__", frozenset()) if t[0] == "selfname"]
        return node.attr if selfname and node.value.id == selfname[0] else None

    def bind_loop(self, ctx: "Ctx", target: ast.AST, it: ast.AST, env: Dict[str, Value]) -> None:
        elements: List[ast.AST] = []
        if isinstance(it, (ast.Tuple, ast.List)):
            elements = list(it.elts)
        if elements and isinstance(target, ast.Tuple):
            for k, t in enumerate(target.elts):
                parts = [e.elts[k] for e in elements if isinstance(e, (ast.Tuple, ast.List)) and len(e.elts) > k]
                value = frozenset().union(*[self.infer(ctx, p, env) for p in parts]) if parts else UNK
                self.assign(ctx, t, value, env, None)
            return
        if elements and isinstance(target, ast.Name):
            env[target.id] = frozenset().union(*[self.infer(ctx, e, env) for e in elements])
            return
        iv = self.infer(ctx, it, env)
        lists = [t for t in iv if t[0] == "listdicts"]
        if lists and isinstance(target, ast.Name):
            ids = tuple(sorted({i for t in lists for i in t[1]}))
            env[target.id] = V(("dicts", ids)) | (UNK if len(lists) < len(iv) else frozenset())
            return
        self.assign(ctx, target, UNK, env, None)

    # -- expressions: inference (pure) ----------------------------------------------------------------------------
    def infer_plain(self, node: ast.AST, env: Dict[str, Value]) -> Value:
        return self.infer(Ctx(None, None, None), node, env)

    def infer(self, ctx: "Ctx", node: ast.AST, env: Dict[str, Value]) -> Value:
        if isinstance(node, ast.Name):
            return env.get(node.id, UNK)
        if isinstance(node, ast.Constant):
            if node.value is None:
                return V(NONE)
            if isinstance(node.value, str):
                return V(("str", node.value))
            return UNK
        if isinstance(node, ast.Dict):
            self.dicts[id(node)] = node
            return V(("dicts", (id(node),)))
        if isinstance(node, ast.List):
            if node.elts and all(isinstance(e, ast.Dict) for e in node.elts):
                for e in node.elts:
                    self.dicts[id(e)] = e
                return V(("listdicts", tuple(id(e) for e in node.elts)))
            if not node.elts:
                return V(("listdicts", ()))
            return UNK
        if isinstance(node, ast.IfExp):
            return self.infer(ctx, node.body, env) | self.infer(ctx, node.orelse, env)
        if isinstance(node, ast.BoolOp):
            return frozenset().union(*[self.infer(ctx, v, env) for v in node.values])
        if isinstance(node, ast.NamedExpr):
            return self.infer(ctx, node.value, env)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and ctx.cls is not None and self.self_key(ctx, node, env):
                if node.attr == "ui" and ctx.file is not None and ctx.file.group in self.uis:
                    return V(("ui", ctx.file.group))       # whatever childWidgetVariables(...) is assigned
                if "self." + node.attr in env:
                    return env["self." + node.attr]
            base = self.infer(ctx, node.value, env)
            out: Set[tuple] = set()
            for t in base:
                out |= self.attr_value(ctx, node, t, env)
            return frozenset(out) or UNK
        if isinstance(node, ast.Call):
            return self.call_value(ctx, node, env)
        return UNK

    def attr_value(self, ctx: "Ctx", node: ast.Attribute, t: tuple, env) -> Set[tuple]:
        attr = node.attr
        kind = t[0]
        if kind == "mod":
            mod = t[1]
            if mod == "slicer":
                return set(self.slicer_attr(ctx.file, node, attr, check=False))
            if mod in ("vtk", "qt", "ctk"):
                return set(self.namespace_attr(ctx.file, node, mod, attr, check=False))
            if mod == "slicer.modules":
                return {("moduleobj", attr)}
            if mod in ("slicer.util", "SampleData", "PyTorchUtils", "slicer.ScriptedLoadableModule"):
                out = set()
                for _, api in self.python_api(mod):
                    if api is None:
                        continue
                    if attr in api["functions"]:
                        out.add(("pyfunc", mod, attr))
                    elif attr in api["classes"]:
                        out.add(("pyclass", mod, attr))
                return out or {UNKNOWN}
            if mod.startswith("slicer."):
                return {UNKNOWN}
            target = self.by_dotted.get(mod)
            if target is not None:
                return set(self.resolve_local(target, attr, 0))
            return {UNKNOWN}
        if kind == "classref":
            return {("bound", t[1], attr, "class")}
        if kind == "cls":
            vals = set()
            for api in self.apis:
                m = api.lookup(t[1], attr)
                if m is not None and m.category == "property":
                    vals.add(UNKNOWN)
                elif m is not None:
                    vals.add(("bound", t[1], attr, "inst"))
            return vals or {UNKNOWN}
        if kind == "ui":
            info = self.uis.get(t[1])
            if info and attr in info.widgets:
                return {("cls", info.widgets[attr], True)}
            return {UNKNOWN}
        if kind == "pnw":
            fields = self.pnw.get(t[1], {}).get(t[2], {})
            if attr in fields:
                return set(fields[attr]) | {NONE}
            return {UNKNOWN}
        if kind in ("pyclass", "pyinst"):
            return {("pymeth", t[1], t[2], attr, kind == "pyclass")}
        if kind == "localinst":
            return self.local_attr(ctx, t[1], t[2], attr)
        if kind == "moduleobj":
            return {("moduleattr", t[1], attr)}
        if kind == "?" and ctx.file is not None:
            # parameter node field by name, in the module's own files
            hits = [fields[attr] for fields in self.pnw.get(ctx.file.group, {}).values() if attr in fields]
            if hits and isinstance(node.value, (ast.Name, ast.Attribute)):
                return {(x[0], x[1], False) if x[0] == "cls" else x for x in frozenset().union(*hits)} | {NONE}
        return {UNKNOWN}

    def local_attr(self, ctx: "Ctx", rel: str, cls: str, attr: str) -> Set[tuple]:
        group = next((f.group for f in self.files if f.rel == rel), "")
        if attr == "ui" and group in self.uis:
            return {("ui", group)}
        if attr == "_parameterNode" and self.pnw.get(group):
            return {("pnw", group, name) for name in self.pnw[group]} | {NONE}
        out: Set[tuple] = set()
        for (r, c) in self.local_chain(rel, cls):
            if (r, c, attr) in self.self_attrs:
                out |= self.self_attrs[(r, c, attr)]
            node = self.local_classes.get((r, c))
            if node is not None:
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == attr:
                        out.add(("localmeth", r, c, attr, id(item)))
        return out or {UNKNOWN}

    def local_chain(self, rel: str, cls: str, depth: int = 0) -> List[Tuple[str, str]]:
        node = self.local_classes.get((rel, cls))
        if node is None or depth > 6:
            return []
        out = [(rel, cls)]
        f = next(x for x in self.files if x.rel == rel)
        env = self.silent_env(f)
        for b in node.bases:
            for t in self.infer_plain(b, env):
                if t[0] == "localclass":
                    out += [x for x in self.local_chain(t[1], t[2], depth + 1) if x not in out]
        return out

    def factory_value(self, ctx: "Ctx", node: ast.Call, env) -> Optional[Value]:
        """``<scene>.AddNewNodeByClass("vtkMRMLX", …)`` (any receiver): the class(es) named by the literal(s)."""
        if isinstance(node.func, ast.Attribute) and node.func.attr in NODE_FACTORIES and node.args:
            names = self.infer(ctx, node.args[0], env)
            if names and all(t[0] == "str" and t[1].startswith("vtk") for t in names):
                return frozenset(("cls", t[1], True) for t in names)
        return None

    def call_value(self, ctx: "Ctx", node: ast.Call, env) -> Value:
        made = self.factory_value(ctx, node, env)
        if made is not None:
            return made
        func = self.infer(ctx, node.func, env)
        out: Set[tuple] = set()
        for t in func:
            kind = t[0]
            if kind == "classref":
                out.add(("cls", t[1], True))
            elif kind == "pyclass":
                out.add(("pyinst", t[1], t[2]))
            elif kind == "localclass":
                if (t[1], t[2]) in self.pnw_classes:
                    out.add(("pnw", self.pnw_classes[(t[1], t[2])], t[2]))
                else:
                    out.add(("localinst", t[1], t[2]))
            elif kind in ("localfunc", "localmeth"):
                out |= set(self.returns.get(t[-1], UNK))
            elif kind == "bound":
                _, cname, attr, _how = t
                if attr in NODE_FACTORIES and node.args:
                    for v in self.infer(ctx, node.args[0], env):
                        out.add(("cls", v[1], True) if v[0] == "str" and v[1].startswith("vtk") else UNKNOWN)
                    continue
                rets = {m.ret for api in self.apis for m in [api.lookup(cname, attr)] if m is not None}
                rets.discard("")
                out |= {("cls", r, False) for r in rets if self.any_class(r)} or {UNKNOWN}
            elif kind == "pyfunc" and t[1] == "slicer.util" and t[2] == "getModuleLogic":
                out |= self.module_logic_value(ctx, node, env)
            elif kind == "moduleattr" and t[2] == "logic":
                out |= self.logic_of_module(t[1], lower=True)
            else:
                out.add(UNKNOWN)
        return frozenset(out) or UNK

    def any_class(self, name: str) -> bool:
        return any(name in api.classes for api in self.apis)

    def module_logic_value(self, ctx, node: ast.Call, env) -> Set[tuple]:
        if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            return self.logic_of_module(node.args[0].value, lower=False)
        return {UNKNOWN}

    def logic_of_module(self, name: str, lower: bool) -> Set[tuple]:
        out = set()
        for api in self.apis:
            for mod, logic in api.meta.get("module_logics", {}).items():
                if (mod.lower() == name) if lower else (mod == name):
                    out.add(("cls", logic, True))
        return out or {UNKNOWN}

    # -- slicer / vtk / qt / ctk namespaces -------------------------------------------------------------------
    def slicer_attr(self, f: Optional[SourceFile], node: ast.AST, attr: str, check: bool = True) -> Value:
        if attr == "app":
            return V(("cls", "qSlicerApplication", True))
        if attr == "mrmlScene":
            return V(("cls", "vtkMRMLScene", True))
        if attr == "modules":
            return V(("mod", "slicer.modules"))
        if attr in ("util", "ScriptedLoadableModule", "parameterNodeWrapper"):
            if check and f is not None:
                self.check_slicer_submodule(f, node, attr)
            return V(("mod", "slicer." + attr))
        for api in self.apis:
            entry = api.classes.get(attr)
            if entry is not None:
                if not entry.get("src", "").startswith("Slicer/"):
                    if check and f is not None:
                        self.problem(f, node, f"slicer.{attr}: {attr} is not in the slicer namespace (it is a "
                                              f"{'VTK' if attr.startswith('vtk') else 'Qt/CTK'} class: use "
                                              f"{'vtk' if attr.startswith('vtk') else 'qt' if attr.startswith('Q') else 'ctk'}"
                                              f".{attr})")
                    return UNK
                return V(("classref", attr))
        if check and f is not None:
            if self.check_slicer_submodule(f, node, attr):
                return V(("mod", "slicer." + attr))
            self.unresolved_(f, node, f"slicer.{attr}: not an indexed class, submodule or start-up attribute")
        return UNK

    def check_slicer_submodule(self, f: SourceFile, node: ast.AST, attr: str) -> bool:
        """True when ``attr`` is a submodule of the slicer package (at a tag or on main); reports a missing import."""
        at_tags = [a.tag for a in self.apis if attr in a.python["slicer"]["submodules"]]
        main_only = any(attr in a.python["slicer"].get("main_only_submodules", []) for a in self.apis)
        if not at_tags and not main_only:
            return False
        startup = all(attr in a.python["slicer"]["startup_imported"] for a in self.apis if a.tag in at_tags)
        if at_tags and startup and len(at_tags) == len(self.apis):
            return True
        if attr in f.slicer_imports:
            return True
        if at_tags:
            where = f"exists at {', '.join(at_tags)}" + (
                "" if len(at_tags) == len(self.apis) else
                f", not at {', '.join(a.tag for a in self.apis if a.tag not in at_tags)}")
        else:
            sha = next((a.meta.get("slicer_main_sha", "") for a in self.apis), "")[:10]
            where = f"it does not exist at {', '.join(self.tags)}, only on Slicer's main branch at {sha}"
        self.problem(f, node, f"slicer.{attr} is a submodule that 'import slicer' does not import ({where}); "
                              f"without 'import slicer.{attr}' in this file the attribute is missing even where the "
                              f"module exists")
        return True

    def namespace_attr(self, f: Optional[SourceFile], node: ast.AST, mod: str, attr: str, check: bool = True) -> Value:
        ok = {"vtk": ("vtk",), "qt": ("qt",), "ctk": ("qobject", "cpp")}[mod]
        for api in self.apis:
            entry = api.classes.get(attr)
            if entry is not None and entry["kind"] in ok:
                if mod == "vtk" and entry.get("src", "").startswith("Slicer/"):
                    break
                return V(("classref", attr))
        if mod == "vtk" and any(attr in api.python.get("vtk", {}).get("names", []) for api in self.apis):
            return UNK
        if check and f is not None and not attr.startswith("_"):
            self.unresolved_(f, node, f"{mod}.{attr}: not an indexed {mod} class")
        return UNK

    # -- expressions: checks --------------------------------------------------------------------------------------
    def visit_target(self, ctx: "Ctx", target: ast.AST, env) -> None:
        if isinstance(target, ast.Attribute):
            self.visit(ctx, target.value, env)
            self.check_attribute(ctx, target, env, "write")
        elif isinstance(target, ast.Subscript):
            self.visit(ctx, target.value, env)
            self.visit(ctx, target.slice, env)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for e in target.elts:
                self.visit_target(ctx, e, env)

    def visit(self, ctx: "Ctx", node: ast.AST, env) -> None:
        if node is None:
            return
        if isinstance(node, ast.Call):
            self.visit_call(ctx, node, env)
            return
        if isinstance(node, ast.Attribute):
            self.visit(ctx, node.value, env)
            self.check_attribute(ctx, node, env, "read")
            return
        if isinstance(node, ast.Lambda):
            local = dict(env)
            for a in node.args.args + node.args.kwonlyargs:
                local[a.arg] = UNK
            self.visit(ctx, node.body, local)
            for d in node.args.defaults:
                self.visit(ctx, d, env)
            return
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            local = dict(env)
            for gen in node.generators:
                self.visit(ctx, gen.iter, local)
                self.bind_loop(ctx, gen.target, gen.iter, local)
                for cond in gen.ifs:
                    self.visit(ctx, cond, local)
            for part in ([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]):
                self.visit(ctx, part, local)
            return
        if isinstance(node, ast.NamedExpr):
            self.visit(ctx, node.value, env)
            env[node.target.id] = self.infer(ctx, node.value, env)
            return
        for child in ast.iter_child_nodes(node):
            self.visit(ctx, child, env)

    def visit_call(self, ctx: "Ctx", node: ast.Call, env) -> None:
        f = ctx.file
        func = node.func
        # getattr / hasattr with a literal name
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr") and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            self.visit(ctx, node.args[0], env)
            for a in node.args[2:]:
                self.visit(ctx, a, env)
            name = node.args[1].value
            base = self.infer(ctx, node.args[0], env)
            if ("mod", "slicer") in base:
                self.check_slicer_submodule(f, node, name)
            elif func.id == "getattr" and len(node.args) == 2:
                fake = ast.Attribute(value=node.args[0], attr=name, ctx=ast.Load())
                ast.copy_location(fake, node)
                f.parents[id(fake)] = f.parents.get(id(node))
                self.check_attribute(ctx, fake, env, "read")
            return
        if isinstance(func, ast.Attribute):
            self.visit(ctx, func.value, env)
            self.check_attribute(ctx, func, env, "call", node)
        else:
            self.visit(ctx, func, env)
        for a in node.args:
            self.visit(ctx, a.value if isinstance(a, ast.Starred) else a, env)
        for k in node.keywords:
            self.visit(ctx, k.value, env)
        # list.append(dict literal): keep the list's dict literals (SampleData sources built in a loop)
        if isinstance(func, ast.Attribute) and func.attr == "append" and isinstance(func.value, ast.Name) \
                and node.args and isinstance(node.args[0], ast.Dict):
            cur = env.get(func.value.id, UNK)
            lists = [t for t in cur if t[0] == "listdicts"]
            if lists:
                self.dicts[id(node.args[0])] = node.args[0]
                ids = tuple(sorted({i for t in lists for i in t[1]} | {id(node.args[0])}))
                env[func.value.id] = V(("listdicts", ids))
        # connect("signal(args)", …)
        if isinstance(func, ast.Attribute) and func.attr == "connect" and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str) \
                and "(" in node.args[0].value:
            self.check_connect(ctx, node, func, env)
        # Python-level API calls: bind to the signature
        for t in self.infer(ctx, func, env):
            if t[0] == "pyfunc":
                self.check_binding(ctx, node, env, t[1], None, t[2], via_class=False)
            elif t[0] == "pymeth":
                self.check_binding(ctx, node, env, t[1], t[2], t[3], via_class=t[4])
            elif t[0] == "pyclass":
                self.check_binding(ctx, node, env, t[1], t[2], "__init__", via_class=False, constructor=True)

    # -- member checks --------------------------------------------------------------------------------------------
    def guarded(self, ctx: "Ctx", node: ast.AST, receiver: ast.AST, name: str) -> bool:
        """True when ``node`` is inside the body of an ``if``/``and``/conditional whose test calls
        ``hasattr(receiver, name)`` or ``getattr(receiver, name, …)``."""
        text = ast.unparse(receiver)

        def has_guard(test: ast.AST) -> bool:
            for sub in ast.walk(test):
                if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) \
                        and sub.func.id in ("hasattr", "getattr") and len(sub.args) >= 2 \
                        and isinstance(sub.args[1], ast.Constant) and sub.args[1].value == name \
                        and ast.unparse(sub.args[0]) == text:
                    return True
            return False

        parents = ctx.file.parents
        child, cur = node, parents.get(id(node))
        while cur is not None:
            if isinstance(cur, (ast.If, ast.While, ast.IfExp)):
                body = cur.body if isinstance(cur.body, list) else [cur.body]
                if any(child is b for b in body) and has_guard(cur.test):
                    return True
            if isinstance(cur, ast.BoolOp) and isinstance(cur.op, ast.And):
                for v in cur.values:
                    if v is child:
                        break
                    if has_guard(v):
                        return True
            child, cur = cur, parents.get(id(cur))
        return False

    def check_attribute(self, ctx: "Ctx", node: ast.Attribute, env, mode: str, call: Optional[ast.Call] = None) -> None:
        f = ctx.file
        attr = node.attr
        if attr.startswith("__"):
            return
        base = self.infer(ctx, node.value, env)
        types = known(base)
        if not types:
            if UNKNOWN in base and mode == "call" and (attr[:1].isupper() or "MRML" in attr or "mrml" in attr) \
                    and not isinstance(node.value, ast.Constant) \
                    and not (call is not None and self.factory_value(ctx, call, env) is not None):
                self.unresolved_(f, node, f"{ast.unparse(node.value)}.{attr}(): receiver of unknown type")
            return
        classes = [t for t in types if t[0] in ("cls", "classref")]
        having = [t for t in classes if any(api.lookup(t[1], attr) is not None for api in self.apis)]
        if having and len(having) < len(classes):
            types = [t for t in types if t not in classes or t in having]     # a union: the types that have it
        for t in types:
            kind = t[0]
            if kind == "mod":
                self.check_module_attr(ctx, node, t[1], attr)
            elif kind == "ui":
                info = self.uis.get(t[1])
                if info is not None and attr not in info.widgets:
                    self.problem(f, node, f"self.ui.{attr}: no widget, layout or action named '{attr}' in "
                                          f"{info.rel}")
            elif kind in ("cls", "classref"):
                self.check_member(ctx, node, t[1], attr, mode, exact=(kind == "classref" or t[2]),
                                  partial=len(types) > 1 or UNKNOWN in base, class_access=(kind == "classref"))
            elif kind == "pnw":
                self.check_pnw_attr(ctx, node, t[1], t[2], attr)
            elif kind in ("pyclass", "pyinst"):
                self.check_py_attr(ctx, node, t[1], t[2], attr, mode, via_class=(kind == "pyclass"))

    def check_module_attr(self, ctx: "Ctx", node: ast.Attribute, mod: str, attr: str) -> None:
        f = ctx.file
        if mod == "slicer":
            self.slicer_attr(f, node, attr, check=True)
        elif mod in ("vtk", "qt", "ctk"):
            self.namespace_attr(f, node, mod, attr, check=True)
        elif mod in ("slicer.util", "SampleData", "PyTorchUtils", "slicer.ScriptedLoadableModule"):
            missing = [tag for tag, api in self.python_api(mod) if api is not None and attr not in api["functions"]
                       and attr not in api["classes"] and attr not in api["names"]]
            if missing and not self.guarded(ctx, node, node.value, attr):
                self.problem(f, node, f"{mod}.{attr} does not exist at Slicer {', '.join(missing)}")

    def check_member(self, ctx: "Ctx", node: ast.Attribute, cname: str, attr: str, mode: str, exact: bool,
                     partial: bool, class_access: bool = False) -> None:
        f = ctx.file
        found: Dict[str, Optional[Member]] = {}
        incomplete: Dict[str, List[str]] = {}
        for api in self.apis:
            if cname not in api.classes:
                found[api.tag] = None
                incomplete[api.tag] = [cname]
                continue
            found[api.tag] = api.lookup(cname, attr)
            _, missing = api.mro(cname)
            if missing:
                incomplete[api.tag] = missing
        where = f"{ast.unparse(node.value)}.{attr}"
        missing_tags = [tag for tag, m in found.items() if m is None]
        if missing_tags:
            if all(tag in incomplete for tag in missing_tags):
                self.unresolved_(f, node, f"{where}: not found on {cname}, whose bases leave the index "
                                          f"({', '.join(sorted({b for t in missing_tags for b in incomplete[t]}))})")
                return
            if len(missing_tags) < len(found):
                if self.guarded(ctx, node, node.value, attr):
                    return
                present = [t for t in found if t not in missing_tags]
                self.problem(f, node, f"{where}: {cname}.{attr} exists in Slicer {', '.join(present)} but not in "
                                      f"{', '.join(missing_tags)} (guard it with hasattr/getattr)")
                return
            if partial or not exact:
                what = "declared type" if not exact else "one of its possible types"
                self.unresolved_(f, node, f"{where}: '{attr}' is not a Python-visible member of {cname} ({what}; "
                                          f"the object may be of another class)")
                return
            hint = ""
            for api in self.apis:
                owner = api.hidden_owner(cname, attr)
                if owner:
                    hint = (f": '{attr}' is a plain public C++ method of {owner}, not a slot, Q_INVOKABLE or "
                            f"Q_PROPERTY, so PythonQt does not expose it")
                    break
            if not hint and api.classes.get(cname, {}).get("kind") in ("qt", "qobject", "cpp"):
                hint = " (no such property, slot, signal, Q_INVOKABLE method or decorator in it or its bases)"
                if mode == "write":
                    hint += ("; assigning it only sets a Python attribute on the wrapper, nothing changes on the "
                             "Qt side")
            self.problem(f, node, f"{where}: {cname} has no Python-visible member '{attr}' in Slicer "
                                  f"{', '.join(self.tags)}{hint}")
            return
        deprecated = [(tag, m) for tag, m in found.items() if m is not None and m.deprecated]
        if deprecated:
            tags = ", ".join(t for t, _ in deprecated)
            self.problem(f, node, f"{where}: {deprecated[0][1].owner}.{attr} is deprecated (Slicer {tags}): "
                                  f"\"{deprecated[0][1].deprecated}\"")
        # reads, writes and calls on Qt-side objects
        for api in self.apis:
            if cname not in api.classes or not api.is_qt_object(cname):
                continue
            if mode == "write":
                prop = api.property(cname, attr)
                if prop is None:
                    self.problem(f, node, f"{where} = …: '{attr}' is not a Q_PROPERTY of {cname} (Slicer {api.tag}); "
                                          f"assigning it only sets a Python attribute on the wrapper")
                elif not prop.writable:
                    self.problem(f, node, f"{where} = …: the Q_PROPERTY '{attr}' of {prop.owner} is read-only "
                                          f"(Slicer {api.tag})")
                break
            if mode == "call":
                prop = api.property(cname, attr)
                if prop is not None and exact is not None and not class_access and "QObject" in api.mro(cname)[0]:
                    # PythonQt looks properties up before methods (PythonQtClassInfo::member): the attribute is
                    # the property's value, and calling it fails even where a getter of that name exists
                    self.problem(f, node, f"{where}(): '{attr}' is a Q_PROPERTY of {prop.owner}: PythonQt returns "
                                          f"its value for '{where}', so calling it fails (read '{where}' instead)")
                    break
                if not api.callable_member(cname, attr):
                    m = api.lookup(cname, attr)
                    self.problem(f, node, f"{where}(): '{attr}' is a {m.category if m else 'member'} of {cname}, "
                                          f"not a method (Slicer {api.tag}): read it without calling")
                    break

    def check_connect(self, ctx: "Ctx", node: ast.Call, func: ast.Attribute, env) -> None:
        f = ctx.file
        signature = node.args[0].value
        wanted = normalize_signature(signature)
        base = self.infer(ctx, func.value, env)
        types = [t for t in known(base) if t[0] == "cls"]
        if not types:
            self.unresolved_(f, node, f"{ast.unparse(func.value)}.connect({signature!r}): receiver of unknown type")
            return
        for t in types:
            cname = t[1]
            for api in self.apis:
                if cname not in api.classes:
                    continue
                sigs = api.signals(cname)
                if wanted not in sigs:
                    _, missing = api.mro(cname)
                    if missing:
                        self.unresolved_(f, node, f"connect({signature!r}) on {cname}: not found, and its bases leave "
                                                  f"the index ({', '.join(missing)})")
                        continue
                    same = sorted(s for s in sigs if s.split("(")[0] == wanted.split("(")[0])
                    hint = f"; its signals named so: {', '.join(same)}" if same else ""
                    self.problem(f, node, f"{ast.unparse(func.value)}.connect({signature!r}): {cname} has no signal "
                                          f"'{wanted}' in Slicer {api.tag}{hint}")

    def check_pnw_attr(self, ctx: "Ctx", node: ast.Attribute, group: str, cls: str, attr: str) -> None:
        fields = self.pnw.get(group, {}).get(cls, {})
        if attr in fields:
            return
        node_cls = self.local_classes.get((next((f.rel for f in self.files if f.group == group and f.is_module_main),
                                                 ""), cls))
        own = set()
        if node_cls is not None:
            own = {i.name for i in node_cls.body if isinstance(i, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for api in self.apis:
            if attr not in api.python["slicer.parameterNodeWrapper"]["wrapper_members"] and attr not in own:
                self.problem(ctx.file, node, f"{ast.unparse(node)}: '{attr}' is neither a field of the parameter "
                                             f"node wrapper {cls} nor a member @parameterNodeWrapper adds (Slicer "
                                             f"{api.tag})")
                return

    # -- Python-level APIs ----------------------------------------------------------------------------------------
    def py_class_chain(self, api_python: dict, mod: str, cls: str, depth: int = 0) -> List[Tuple[str, dict]]:
        module = api_python.get(mod) or {}
        entry = module.get("classes", {}).get(cls)
        if entry is None or depth > 5:
            return []
        out = [(f"{mod}.{cls}", entry)]
        for base in entry["bases"]:
            name = base.split(".")[-1]
            for m in (mod, "slicer.ScriptedLoadableModule", "slicer.util"):
                if name in (api_python.get(m) or {}).get("classes", {}):
                    out += self.py_class_chain(api_python, m, name, depth + 1)
                    break
        return out

    def check_py_attr(self, ctx: "Ctx", node: ast.Attribute, mod: str, cls: str, attr: str, mode: str,
                      via_class: bool) -> None:
        missing_at: List[str] = []
        for api in self.apis:
            chain = self.py_class_chain(api.python, mod, cls)
            if not chain:
                continue
            known_bases = all(b.split(".")[-1] in ("object",) or any(
                b.split(".")[-1] == c.split(".")[-1] for c, _ in chain) for _, e in chain for b in e["bases"])
            names: Set[str] = set()
            for _, e in chain:
                names |= set(e["methods"]) | set(e["properties"]) | set(e["attributes"])
            if attr in names:
                for _, e in chain:
                    if attr in e["properties"] and mode == "call":
                        self.problem(ctx.file, node, f"{ast.unparse(node)}(): {cls}.{attr} is a property, not a "
                                                     f"method")
                        break
                    if attr in e["methods"]:
                        break
                continue
            if not known_bases:
                self.unresolved_(ctx.file, node, f"{ast.unparse(node)}: not found on {cls}, whose bases are not all "
                                                 f"indexed")
                return
            if self.guarded(ctx, node, node.value, attr):
                continue
            missing_at.append(api.tag)
        if missing_at:
            self.problem(ctx.file, node, f"{ast.unparse(node)}: {mod}.{cls} has no member '{attr}' at Slicer "
                                         f"{', '.join(missing_at)}")

    def py_signature(self, api_python: dict, mod: str, cls: Optional[str], name: str) -> Optional[dict]:
        module = api_python.get(mod)
        if module is None:
            return None
        if cls is None:
            params = module["functions"].get(name)
            return None if params is None else {"params": params}
        for _, entry in self.py_class_chain(api_python, mod, cls):
            if name in entry["methods"]:
                return entry["methods"][name]
        return None

    def check_binding(self, ctx: "Ctx", call: ast.Call, env, mod: str, cls: Optional[str], name: str,
                      via_class: bool, constructor: bool = False) -> None:
        f = ctx.file
        label = f"{mod}.{cls + '.' if cls else ''}{name}" if not constructor else f"{mod}.{cls}()"
        per_tag: Dict[str, List[str]] = {}
        for api in self.apis:
            sig = self.py_signature(api.python, mod, cls, name)
            if sig is None:
                if not constructor and cls is None and api.python.get(mod) is not None:
                    if name not in api.python[mod]["names"]:
                        per_tag.setdefault(f"{label} does not exist", []).append(api.tag)
                continue
            params = sig["params"]
            if cls is not None and via_class and not (sig.get("static") or sig.get("classmethod")) and not constructor:
                params = [{"name": "self", "kind": "positional_or_keyword"}] + params   # Class.method(obj, …)
            for message in self.bind(ctx, call, env, params, label):
                per_tag.setdefault(message, []).append(api.tag)
        for message, tags in per_tag.items():
            self.problem(f, call, message + f" (Slicer {', '.join(tags)})")

    def bind(self, ctx: "Ctx", call: ast.Call, env, params: List[dict], label: str) -> List[str]:
        """Problems binding ``call`` to ``params`` (the generator's signature records)."""
        f = ctx.file
        out: List[str] = []
        positional = [p for p in params if p["kind"] in ("positional_only", "positional_or_keyword")]
        varpos = any(p["kind"] == "var_positional" for p in params)
        varkw = any(p["kind"] == "var_keyword" for p in params)
        by_name = {p["name"]: p for p in params if p["kind"] in ("positional_or_keyword", "keyword_only")}
        starred = any(isinstance(a, ast.Starred) for a in call.args)
        n_pos = len([a for a in call.args if not isinstance(a, ast.Starred)])
        bound: Set[str] = set()
        if not starred:
            if n_pos > len(positional) and not varpos:
                out.append(f"{label}() takes at most {len(positional)} positional argument(s), {n_pos} given")
            bound |= {p["name"] for p in positional[:n_pos]}
        keywords: List[Tuple[str, ast.AST]] = []
        unresolved_kw = False
        for k in call.keywords:
            if k.arg is not None:
                keywords.append((k.arg, k.value))
                continue
            shapes = [t for t in self.infer(ctx, k.value, env) if t[0] == "dicts"]
            others = [t for t in self.infer(ctx, k.value, env) if t[0] != "dicts"]
            if not shapes or others:
                self.unresolved_(f, call, f"{label}(**{ast.unparse(k.value)}): cannot expand the keyword arguments "
                                          f"statically")
                unresolved_kw = True
                continue
            for dict_id in sorted({i for t in shapes for i in t[1]}):
                d = self.dicts.get(dict_id)
                if d is None:
                    unresolved_kw = True
                    continue
                for key, value in zip(d.keys, d.values):
                    if key is None or not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                        self.unresolved_(f, call, f"{label}(**{ast.unparse(k.value)}): a key of the dict at line "
                                                  f"{d.lineno} is not a literal string")
                        unresolved_kw = True
                        continue
                    keywords.append((key.value, value))
        seen: Set[str] = set()
        for kname, value in keywords:
            p = by_name.get(kname)
            if p is None:
                if not varkw:
                    out.append(f"{label}() got an unexpected keyword argument '{kname}'")
                continue
            if kname in bound and kname not in seen:
                out.append(f"{label}() got multiple values for argument '{kname}'")
            seen.add(kname)
            expected = p.get("default_type")
            given = _literal_kind(value)
            if expected and given:
                e_kind, g_kind = _CONTAINER.get(expected), _CONTAINER.get(given)
                mismatch = (e_kind is not None and g_kind is not None and e_kind != g_kind) or \
                    (expected in ("bool", "str") and g_kind is not None)
                if mismatch:
                    out.append(f"{label}({kname}=…): a {given} literal (line {value.lineno}) where the default is "
                               f"{p['default']} (a {expected})")
        if not starred and not unresolved_kw and not varkw:
            for p in positional + [p for p in params if p["kind"] == "keyword_only"]:
                if "default" not in p and p["name"] not in bound and p["name"] not in seen:
                    out.append(f"{label}() missing required argument '{p['name']}'")
        return out


def _literal_kind(node: ast.AST) -> Optional[str]:
    if isinstance(node, ast.Dict):
        return "dict"
    if isinstance(node, ast.List):
        return "list"
    if isinstance(node, ast.Tuple):
        return "tuple"
    if isinstance(node, ast.Set):
        return "set"
    if isinstance(node, ast.Constant):
        return "None" if node.value is None else type(node.value).__name__
    return None


@dataclass
class Ctx:
    file: Optional[SourceFile]
    fn: Optional[ast.AST]
    cls: Optional[str]


def merge(a: Dict[str, Value], b: Dict[str, Value]) -> Dict[str, Value]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out[k] | v if k in out else v
    return out


def check_extension(repo: Path, index: dict) -> Report:
    """Check the extension in ``repo`` against ``index``: the mapping ``{version: index}`` of
    :func:`load_indexes`, or one index (a dict with ``metadata``)."""
    indexes = {index["metadata"]["tag"].lstrip("v"): index} if "metadata" in index else index
    return Checker(Path(repo), indexes).run()


__all__ = ["Report", "check_extension", "load_indexes", "normalize_signature"]
