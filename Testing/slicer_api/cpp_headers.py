"""A small, lenient C++ header reader: what Python can see of the classes declared in Qt, CTK and Slicer headers.

It is not a C++ parser.  It understands what these three code bases write in their public headers: classes and
their bases, access sections (``public:``, ``public slots:``, ``signals:`` …), ``Q_PROPERTY``, ``Q_INVOKABLE``,
enums, method declarations (name, parameters with defaults, return type), VTK's member macros (``vtkGetMacro`` …,
hand-coded below from VTK's ``vtkSetGet.h``) and function-like macros defined in the headers it was given
(``vtkMRMLCopyContentMacro`` …), expanded in place.  Preprocessor conditions are evaluated only for
``__VTK_WRAP__`` (hidden from the wrapper), ``0``/``1``, ``QT_VERSION`` comparisons and ``QT_DEPRECATED_SINCE``
(kept, marked deprecated); every other branch is kept (lenient: a name too many, never one too few).

Doc comments are kept so that a method documented as deprecated ("Deprecated. Use X instead.") can be marked; a
``///@{`` … ``///@}`` group comment applies to every declaration of the group.

Standard library only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

QT_VERSION = 0x050F08          # the Qt headers read (Debian 12's qtbase5-dev 5.15.8); QT_VERSION #if's use it

# ----------------------------------------------------------------------------------------------------------------
# VTK's member macros (vtkSetGet.h), written as the declarations they expand to.  Only names and return types
# matter here.  ``##`` pastes, ``#x`` stringizes, as in the preprocessor.
# ----------------------------------------------------------------------------------------------------------------
_TYPE_MACRO = ("thisClass,superclass",
               "public: static vtkTypeBool IsTypeOf(const char* type); vtkTypeBool IsA(const char* type);"
               " static thisClass* SafeDownCast(vtkObjectBase* o); thisClass* NewInstance() const;"
               " static vtkIdType GetNumberOfGenerationsFromBaseType(const char* type);"
               " vtkIdType GetNumberOfGenerationsFromBase(const char* type);")
VTK_MACROS: Dict[str, Tuple[str, str]] = {
    "vtkSetMacro": ("name,type", "virtual void Set##name(type _arg);"),
    "vtkGetMacro": ("name,type", "virtual type Get##name();"),
    "vtkSetStringMacro": ("name", "virtual void Set##name(const char* _arg);"),
    "vtkGetStringMacro": ("name", "virtual char* Get##name();"),
    "vtkSetFilePathMacro": ("name", "virtual void Set##name(const char* _arg);"),
    "vtkGetFilePathMacro": ("name", "virtual char* Get##name();"),
    "vtkSetStdStringFromCharMacro": ("name", "virtual void Set##name(const char* _arg);"),
    "vtkGetCharFromStdStringMacro": ("name", "virtual const char* Get##name();"),
    "vtkSetClampMacro": ("name,type,min,max", "virtual void Set##name(type _arg); virtual type Get##name##MinValue();"
                                               " virtual type Get##name##MaxValue();"),
    "vtkSetObjectMacro": ("name,type", "virtual void Set##name(type* _arg);"),
    "vtkGetObjectMacro": ("name,type", "virtual type* Get##name();"),
    "vtkSetSmartPointerMacro": ("name,type", "virtual void Set##name(type* _arg);"),
    "vtkGetSmartPointerMacro": ("name,type", "virtual type* Get##name();"),
    "vtkGetNewMacro": ("name,type", "virtual type* Get##name();"),
    "vtkBooleanMacro": ("name,type", "virtual void name##On(); virtual void name##Off();"),
    "vtkSetEnumMacro": ("name,enumType", "virtual void Set##name(enumType _arg);"),
    "vtkGetEnumMacro": ("name,enumType", "virtual enumType Get##name();"),
    "vtkSetVectorMacro": ("name,type,count", "virtual void Set##name(const type data[]);"),
    "vtkGetVectorMacro": ("name,type,count", "virtual type* Get##name();"),
    "vtkTypeMacro": _TYPE_MACRO,
    "vtkAbstractTypeMacro": _TYPE_MACRO,
    "vtkBaseTypeMacro": _TYPE_MACRO,
    "vtkAbstractTypeMacroWithNewInstanceType": ("thisClass,superclass,instanceType,thisClassName", _TYPE_MACRO[1]),
}
for _n in range(2, 7):
    VTK_MACROS[f"vtkSetVector{_n}Macro"] = ("name,type", "virtual void Set##name(type _arg1);")
    VTK_MACROS[f"vtkGetVector{_n}Macro"] = ("name,type", "virtual type* Get##name();")

#: statement-level macros that declare nothing Python sees (or whose meaning is handled elsewhere)
IGNORED_STATEMENT_MACROS = re.compile(
    r"^(Q_OBJECT|Q_GADGET|QVTK_OBJECT|Q_DECLARE_PRIVATE|Q_DECLARE_PUBLIC|Q_DISABLE_COPY(_MOVE)?|Q_DECLARE_FLAGS|"
    r"Q_INTERFACES|Q_CLASSINFO|Q_PRIVATE_SLOT|Q_PRIVATE_PROPERTY|Q_DECLARE_OPERATORS_FOR_FLAGS|Q_ENUMS|Q_ENUM|"
    r"Q_FLAGS|Q_FLAG|Q_ENUM_NS|Q_FLAG_NS|Q_NAMESPACE|Q_NAMESPACE_EXPORT|Q_DECLARE_SHARED|Q_DECLARE_TYPEINFO|"
    r"Q_DECLARE_METATYPE|QDOC_PROPERTY|Q_OBJECT_FAKE|Q_DECLARE_PRIVATE_D|Q_DECLARE_SHARED_NOT_MOVABLE_UNTIL_QT6|"
    r"QT_[A-Z0-9_]+|Q_[A-Z0-9_]+|itk\w*Macro|vtk\w*(Warning|Error|Debug)\w*Macro|vtkStandardNewMacro|"
    r"vtkObjectFactoryNewMacro|vtkCxx\w*Macro)$")
#: words in a declaration that are attributes / specifiers, not types or names
SPECIFIERS = {"virtual", "static", "inline", "explicit", "constexpr", "friend", "extern", "mutable", "typename",
              "Q_INVOKABLE", "Q_SCRIPTABLE", "Q_SIGNAL", "Q_SLOT", "VTK_NEWINSTANCE", "Q_REQUIRED_RESULT",
              "Q_DECL_CONSTEXPR", "Q_DECL_RELAXED_CONSTEXPR", "Q_ALWAYS_INLINE", "Q_DECL_COLD_FUNCTION",
              "Q_DECL_PURE_FUNCTION", "Q_DECL_CONST_FUNCTION", "QT_ASCII_CAST_WARN", "Q_NORETURN",
              "VTK_FUTURE_CONST", "VTK_WRAPEXCLUDE", "VTK_PROPEXCLUDE", "VTK_MARSHALAUTO", "VTK_MARSHALMANUAL",
              "VTK_MARSHALEXCLUDE", "VTK_FILEPATH", "VTK_UNBLOCKTHREADS", "VTK_ZEROCOPY", "VTK_EXPECTS",
              "VTK_SIZEHINT", "VTK_NODISCARD", "Q_DECL_NOEXCEPT", "Q_DECL_NOTHROW", "Q_DECL_UNUSED"}
CPP_TYPE_WORDS = {"void", "int", "unsigned", "signed", "long", "short", "char", "double", "float", "bool", "auto",
                  "const", "volatile", "size_t", "wchar_t", "struct", "class", "enum", "union"}
DEPRECATION_RE = re.compile(r"\bdeprecated\b", re.I)

_TOKEN_RE = re.compile(r"""
    (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*')
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<number>\d[\w.']*)
  | (?P<punct>::|->|\.\.\.|&&|\|\||<<|==|!=|<=|>=|\#\#|[^\s\w])
  | (?P<ws>\s+)
""", re.S | re.X)


@dataclass
class Tok:
    kind: str        # ident, number, string, punct, comment
    text: str
    line: int
    deprecated_region: bool = False


@dataclass
class Method:
    name: str
    params: List[Tuple[str, bool]]       # (normalized type, has default)
    ret: str                             # return type text
    access: str
    section: str                         # normal, slots, signals
    invokable: bool = False
    static: bool = False
    deprecated: str = ""                 # why it is deprecated ("" if not)


@dataclass
class CppClass:
    name: str
    bases: List[str]
    source: str = ""
    qobject: bool = False                # declares Q_OBJECT
    methods: List[Method] = field(default_factory=list)
    properties: Dict[str, str] = field(default_factory=dict)     # name -> "rw" | "r"
    enums: List[str] = field(default_factory=list)               # enumerator names (public)
    is_namespace: bool = False


# ----------------------------------------------------------------------------------------------------------------
# preprocessor
# ----------------------------------------------------------------------------------------------------------------
def _eval_qt_version(cond: str) -> Optional[bool]:
    m = re.fullmatch(r"\s*\(?\s*QT_VERSION\s*(<=|>=|<|>|==|!=)\s*(QT_VERSION_CHECK\s*\(\s*(\d+)\s*,\s*(\d+)\s*,"
                     r"\s*(\d+)\s*\)|0x[0-9A-Fa-f]+)\s*\)?\s*", cond)
    if not m:
        return None
    if m.group(3) is not None:
        value = (int(m.group(3)) << 16) | (int(m.group(4)) << 8) | int(m.group(5))
    else:
        value = int(m.group(2), 16)
    op = m.group(1)
    return {"<": QT_VERSION < value, "<=": QT_VERSION <= value, ">": QT_VERSION > value,
            ">=": QT_VERSION >= value, "==": QT_VERSION == value, "!=": QT_VERSION != value}[op]


def _classify(directive: str, rest: str) -> str:
    """'hide', 'keep', 'depr' (kept, deprecated) or 'unknown' (kept) for an #if/#ifdef/#ifndef."""
    rest = re.sub(r"/\*.*?\*/|//.*", "", rest).strip()
    if directive == "ifndef":
        if rest in ("__VTK_WRAP__", "__WRAP__"):
            return "hide"
        if rest == "VTK_LEGACY_REMOVE":
            return "depr"
        return "unknown"
    if directive == "ifdef":
        return "unknown"
    # #if
    if re.fullmatch(r"!\s*defined\s*\(?\s*(__VTK_WRAP__|__WRAP__)\s*\)?", rest):
        return "hide"
    if rest == "0":
        return "hide"
    if rest == "1":
        return "keep"
    if re.match(r"QT_DEPRECATED_SINCE\s*\(", rest):
        return "depr"
    value = _eval_qt_version(rest)
    if value is not None:
        return "keep" if value else "hide"
    return "unknown"


def preprocess(text: str) -> Tuple[str, List[bool], Dict[str, Tuple[List[str], str]]]:
    """Drop preprocessor lines and hidden branches (blanked, so line numbers stay).  Returns the text, a per-line
    'in a deprecated region' flag and the function-like/object-like #defines found ({name: (params, body)})."""
    text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    out: List[str] = []
    depr_flags: List[bool] = []
    defines: Dict[str, Tuple[List[str], str]] = {}
    stack: List[List] = []          # [state, definite, taken]
    i = 0
    in_block_comment = False
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        if not in_block_comment and stripped.startswith("#"):
            logical = line
            n = 1
            while logical.endswith("\\") and i + n < len(lines):
                logical = logical[:-1] + "\n" + lines[i + n]
                n += 1
            m = re.match(r"\s*#\s*(\w+)\s*(.*)", logical, re.S)
            directive, rest = (m.group(1), m.group(2)) if m else ("", "")
            if directive in ("if", "ifdef", "ifndef"):
                state = _classify(directive, rest)
                stack.append([state, state in ("hide", "keep"), state in ("keep", "depr", "unknown")])
            elif directive == "elif":
                if stack:
                    frame = stack[-1]
                    if frame[1] and frame[2]:
                        frame[0] = "hide"
                    else:
                        state = _classify("if", rest)
                        frame[0] = state if state != "keep" or not frame[2] else "hide"
                        frame[1] = frame[1] and state in ("hide", "keep")
                        frame[2] = frame[2] or state == "keep"
            elif directive == "else":
                if stack:
                    frame = stack[-1]
                    frame[0] = {"hide": "keep", "keep": "hide", "depr": "unknown"}.get(frame[0], "unknown") \
                        if frame[1] or frame[0] in ("hide", "depr") else "unknown"
            elif directive == "endif":
                if stack:
                    stack.pop()
            elif directive == "define" and not any(f[0] == "hide" for f in stack):
                dm = re.match(r"(\w+)(\(([^)]*)\))?\s*(.*)", rest, re.S)
                if dm:
                    params = [p.strip() for p in dm.group(3).split(",")] if dm.group(2) else []
                    defines[dm.group(1)] = (params if dm.group(2) else None, dm.group(4).replace("\\\n", "\n"))
            for _ in range(n):
                out.append("")
                depr_flags.append(False)
            i += n
            continue
        hidden = any(f[0] == "hide" for f in stack)
        out.append("" if hidden else line)
        depr_flags.append(any(f[0] == "depr" for f in stack))
        # track /* */ so that a '#' inside a block comment is not taken as a directive
        j = 0
        while True:
            if in_block_comment:
                k = line.find("*/", j)
                if k < 0:
                    break
                in_block_comment, j = False, k + 2
            else:
                k1, k2, k3 = line.find("/*", j), line.find("//", j), line.find('"', j)
                if k1 < 0 or (0 <= k2 < k1):
                    break
                if 0 <= k3 < k1:
                    k4 = line.find('"', k3 + 1)
                    if k4 < 0:
                        break
                    j = k4 + 1
                    continue
                in_block_comment, j = True, k1 + 2
        i += 1
    return "\n".join(out), depr_flags, defines


def tokenize(text: str, depr_flags: Optional[List[bool]] = None, first_line: int = 1) -> List[Tok]:
    toks: List[Tok] = []
    line = first_line
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup
        value = m.group()
        if kind != "ws":
            flag = bool(depr_flags and 0 <= line - 1 < len(depr_flags) and depr_flags[line - 1])
            toks.append(Tok(kind, value, line, flag))
        line += value.count("\n")
    return toks


# ----------------------------------------------------------------------------------------------------------------
# helpers on token lists
# ----------------------------------------------------------------------------------------------------------------
def _match(toks: List[Tok], i: int, open_: str = "(", close: str = ")") -> int:
    """Index of the token closing the bracket at ``i``."""
    depth = 0
    for j in range(i, len(toks)):
        t = toks[j].text if toks[j].kind == "punct" else None
        if t == open_:
            depth += 1
        elif t == close:
            depth -= 1
            if depth == 0:
                return j
    return len(toks) - 1


def _split_top(toks: List[Tok], sep: str = ",") -> List[List[Tok]]:
    parts: List[List[Tok]] = [[]]
    depth = 0
    for t in toks:
        if t.kind == "punct" and t.text in "([{<":
            depth += 1
        elif t.kind == "punct" and t.text in ")]}>":
            depth -= 1
        if depth == 0 and t.kind == "punct" and t.text == sep:
            parts.append([])
        else:
            parts[-1].append(t)
    return [p for p in parts if p]


def _comment_text(tok: Tok) -> str:
    text = tok.text
    if text.startswith("//"):
        text = text[2:]
    else:
        text = text[2:-2]
    return re.sub(r"^[/!<*\s]+", "", text, flags=re.M).strip()


def normalize_type(toks: List[Tok]) -> str:
    """Qt-like normalization kept simple: no const, no &, no parameter name or default, no spaces except between
    two words (``unsigned int``)."""
    words: List[str] = []
    for t in toks:
        if t.kind == "comment" or t.text in ("const", "&", "&&", "volatile", "struct", "class", "typename"):
            continue
        words.append(t.text)
    out = ""
    for w in words:
        if out and re.match(r"\w", w) and re.search(r"\w$", out):
            out += " "
        out += w
    return out


def normalize_signature(sig: str) -> str:
    """``"currentNodeChanged(vtkMRMLNode *)"`` → ``"currentNodeChanged(vtkMRMLNode*)"`` (same rules as
    :func:`normalize_type`; used on both the headers and the strings given to ``connect``)."""
    m = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", sig, re.S)
    if not m:
        return re.sub(r"\s+", "", sig)
    params = [p for p in _split_top(tokenize(m.group(2))) if p]
    return f"{m.group(1)}(" + ",".join(normalize_type(p) for p in params) + ")"


_BUILTIN = {"int", "unsigned", "signed", "long", "short", "char", "double", "float", "bool", "void", "size_t",
            "qint64", "quint64", "qreal", "uint", "ulong", "vtkIdType", "vtkTypeBool", "qint32", "quint32"}


def _param(toks: List[Tok]) -> Tuple[str, bool]:
    """(normalized type, has default) of one parameter."""
    toks = [t for t in toks if t.kind != "comment"]
    has_default = False
    depth = 0
    for k, t in enumerate(toks):
        if t.kind == "punct" and t.text in "([{<":
            depth += 1
        elif t.kind == "punct" and t.text in ")]}>":
            depth -= 1
        elif depth == 0 and t.kind == "punct" and t.text == "=":
            toks, has_default = toks[:k], True
            break
    # array suffix: double x[3]
    while toks and toks[-1].text == "]":
        k = max(j for j, t in enumerate(toks) if t.text == "[")
        toks = toks[:k]
    # drop the name: last identifier, when something before it already makes a type
    if len(toks) >= 2 and toks[-1].kind == "ident" and toks[-1].text not in _BUILTIN:
        before = [t for t in toks[:-1] if t.text not in ("const", "volatile")]
        if before and (before[-1].kind == "ident" or before[-1].text in ("*", "&", "&&", ">")):
            if not (before[-1].text in ("unsigned", "signed") and len(before) == 1):
                toks = toks[:-1]
    return normalize_type(toks), has_default


def _return_class(ret: List[Tok]) -> str:
    """``vtkMRMLNode* `` → ``vtkMRMLNode``; ``vtkSmartPointer<vtkX>`` → ``vtkX``; else ''."""
    words = [t for t in ret if t.text not in SPECIFIERS and t.text not in ("const", "virtual", "static", "inline")]
    texts = [t.text for t in words]
    if len(texts) >= 4 and texts[0] in ("vtkSmartPointer", "QPointer") and texts[1] == "<" and texts[3] == ">":
        return texts[2]
    if len(texts) == 2 and words[0].kind == "ident" and texts[1] == "*":
        return texts[0]
    return ""


# ----------------------------------------------------------------------------------------------------------------
# the reader
# ----------------------------------------------------------------------------------------------------------------
class HeaderReader:
    """Reads headers; ``classes`` collects every class found.  ``defines`` (macros of every header read so far) is
    used to expand unknown statement-level macros, so read the headers that define macros first (or twice)."""

    def __init__(self):
        self.classes: Dict[str, CppClass] = {}
        self.defines: Dict[str, Tuple[Optional[List[str]], str]] = {}

    def collect_defines(self, text: str) -> None:
        _, _, defines = preprocess(text)
        self.defines.update(defines)

    def read(self, text: str, source: str = "") -> List[CppClass]:
        clean, depr, defines = preprocess(text)
        self.defines.update(defines)
        toks = tokenize(clean, depr)
        found: List[CppClass] = []
        self._top(toks, source, found)
        for cls in found:
            # a class declared twice (forward-declared templates, #if branches): keep the richer one
            old = self.classes.get(cls.name)
            if old is not None and cls.is_namespace and old.is_namespace:
                old.methods.extend(cls.methods)
                old.enums.extend(cls.enums)
                continue
            if old is None or len(cls.methods) + len(cls.properties) >= len(old.methods) + len(old.properties):
                self.classes[cls.name] = cls
        return found

    # -- top level ------------------------------------------------------------------------------------------
    def _top(self, toks: List[Tok], source: str, found: List[CppClass]) -> None:
        i, n = 0, len(toks)
        while i < n:
            t = toks[i]
            if t.kind == "comment":
                i += 1
                continue
            if t.text == "template" and i + 1 < n and toks[i + 1].text == "<":
                j = _match(toks, i + 1, "<", ">")
                i = self._skip_declaration(toks, j + 1)
                continue
            if t.text == "namespace":
                j = i + 1
                name = ""
                while j < n and toks[j].text not in ("{", ";", "="):
                    if toks[j].kind == "ident":
                        name = toks[j].text
                    j += 1
                if j < n and toks[j].text == "{":
                    if name == "Qt":
                        end = _match(toks, j, "{", "}")
                        ns = CppClass("Qt", [], source, is_namespace=True)
                        self._body(toks[j + 1:end], ns, default_access="public")
                        found.append(ns)
                        i = end + 1
                    else:
                        i = j + 1          # descend: the namespace's closing brace is skipped below
                    continue
                i = j + 1
                continue
            if t.text in ("class", "struct") and not (i > 0 and toks[i - 1].text in ("enum", "friend")):
                # find the opening brace of a definition (bases may contain '<' of templates)
                j = i + 1
                depth = 0
                while j < n:
                    x = toks[j].text
                    if x == "<":
                        depth += 1
                    elif x == ">":
                        depth -= 1
                    elif depth == 0 and x in ("{", ";", "(", "=", ")"):
                        break
                    j += 1
                if j < n and toks[j].text == "{":
                    end = _match(toks, j, "{", "}")
                    cls = self._class_head(toks[i + 1:j], source, t.text == "struct")
                    if cls is not None:
                        self._body(toks[j + 1:end], cls, default_access="public" if t.text == "struct" else "private")
                        found.append(cls)
                    i = self._skip_to_semicolon(toks, end + 1)
                    continue
                i = j + 1
                continue
            if t.text == "{":
                i = _match(toks, i, "{", "}") + 1
                continue
            i += 1

    @staticmethod
    def _skip_to_semicolon(toks: List[Tok], i: int) -> int:
        while i < len(toks) and toks[i].text not in (";", "{", "}"):
            i += 1
        return i + 1 if i < len(toks) and toks[i].text == ";" else i

    @staticmethod
    def _skip_declaration(toks: List[Tok], i: int) -> int:
        """Skip a (template) declaration: to its ';' or past its '{…}' body."""
        depth = 0
        while i < len(toks):
            x = toks[i].text
            if x in ("(", "["):
                depth += 1
            elif x in (")", "]"):
                depth -= 1
            elif depth == 0 and x == ";":
                return i + 1
            elif depth == 0 and x == "{":
                end = _match(toks, i, "{", "}")
                if end + 1 < len(toks) and toks[end + 1].text == ";":
                    return end + 2
                return end + 1
            i += 1
        return i

    def _class_head(self, head: List[Tok], source: str, is_struct: bool) -> Optional[CppClass]:
        head = [t for t in head if t.kind != "comment"]
        colon = next((k for k, t in enumerate(head) if t.text == ":"), len(head))
        names = [t.text for t in head[:colon] if t.kind == "ident" and t.text not in ("final", "alignas")]
        # drop export macros (ALL CAPS) when a real name follows
        if not names:
            return None
        name = names[-1]
        bases = []
        for part in _split_top(head[colon + 1:]):
            words = [t for t in part if t.text not in ("public", "protected", "private", "virtual")]
            if any(t.text in ("protected", "private") for t in part):
                continue
            if not words:
                continue
            # Name, ns::Name or Name<...>
            text = ""
            for t in words:
                if t.text == "<":
                    break
                text += t.text
            bases.append(text.split("::")[-1])
        return CppClass(name, bases, source)

    # -- class body -----------------------------------------------------------------------------------------
    def _body(self, toks: List[Tok], cls: CppClass, default_access: str, depth: int = 0) -> None:
        access, section = default_access, "normal"
        group_comment = ""
        group_fresh = False              # a comment right after "@{" documents the whole group
        pending: List[str] = []
        stmt: List[Tok] = []
        last_method_line = -1
        last_methods: List[Method] = []
        i, n = 0, len(toks)

        def flush(tokens: List[Tok]) -> None:
            nonlocal pending, last_method_line, last_methods, group_fresh
            group_fresh = False
            if tokens:
                comment = " ".join([group_comment] + pending).strip()
                added = self._statement(tokens, cls, access, section, comment)
                last_methods = added
                last_method_line = tokens[-1].line
            pending = []

        while i < n:
            t = toks[i]
            if t.kind == "comment":
                text = _comment_text(t)
                if "@{" in t.text or "\\{" in t.text:
                    group_comment = text.replace("@{", "").strip()
                    group_fresh = True
                elif "@}" in t.text or "\\}" in t.text:
                    group_comment, group_fresh = "", False
                elif group_fresh and not stmt:
                    group_comment = (group_comment + " " + text).strip()
                elif not stmt and last_methods and t.line == last_method_line:
                    # trailing ///< comment documents the declaration before it
                    if DEPRECATION_RE.search(text):
                        for m in last_methods:
                            m.deprecated = m.deprecated or text
                elif not stmt:
                    pending.append(text)
                i += 1
                continue
            group_fresh = False
            if not stmt:
                # access specifiers
                if t.text in ("public", "protected", "private") and i + 1 < n:
                    k = i + 1
                    sec = "normal"
                    if toks[k].text in ("slots", "Q_SLOTS"):
                        sec, k = "slots", k + 1
                    if k < n and toks[k].text == ":":
                        access, section, i = t.text, sec, k + 1
                        pending = []
                        continue
                if t.text in ("signals", "Q_SIGNALS") and i + 1 < n and toks[i + 1].text == ":":
                    access, section, i = "public", "signals", i + 2
                    pending = []
                    continue
                # Q_PROPERTY and other statement macros without ';'
                if t.kind == "ident" and t.text == "Q_PROPERTY" and i + 1 < n and toks[i + 1].text == "(":
                    end = _match(toks, i + 1)
                    self._property(toks[i + 2:end], cls)
                    i = end + 1
                    if i < n and toks[i].text == ";":
                        i += 1
                    pending = []
                    continue
                if t.kind == "ident" and t.text in ("Q_OBJECT",):
                    cls.qobject = True
                if t.kind == "ident" and (t.text in VTK_MACROS or (
                        t.text in self.defines and not IGNORED_STATEMENT_MACROS.match(t.text)
                        and (self.defines[t.text][0] is not None or re.fullmatch(r"[A-Z][A-Z0-9_]+", t.text)))):
                    params, body = VTK_MACROS.get(t.text) or self.defines[t.text]
                    if isinstance(params, str):
                        params = [p.strip() for p in params.split(",")]
                    args: List[str] = []
                    end = i
                    if params is not None and i + 1 < n and toks[i + 1].text == "(":
                        end = _match(toks, i + 1)
                        args = [" ".join(x.text for x in part) for part in _split_top(toks[i + 2:end])]
                    elif params is not None:
                        i += 1              # a function-like macro named without arguments: not an invocation
                        stmt.append(t)
                        continue
                    expansion = _expand(params, body, args)
                    comment = " ".join([group_comment] + pending).strip()
                    if depth < 4:
                        sub = tokenize(expansion, None, t.line)
                        if comment:
                            sub.insert(0, Tok("comment", "/// " + comment, t.line))
                        if group_comment:
                            sub.insert(0, Tok("comment", "///@{ " + group_comment, t.line))
                        saved = cls.qobject
                        before = len(cls.methods)
                        self._body(sub, cls, access, depth + 1)
                        cls.qobject = saved or cls.qobject
                        if any(x.deprecated_region for x in toks[i:end + 1]):
                            for m in cls.methods[before:]:
                                m.deprecated = m.deprecated or "in a deprecated (#if) section"
                        last_methods, last_method_line = cls.methods[before:], toks[end].line
                    i = end + 1
                    if i < n and toks[i].text == ";":
                        i += 1
                    pending = []
                    continue
                if t.kind == "ident" and IGNORED_STATEMENT_MACROS.match(t.text) and t.text not in SPECIFIERS \
                        and not t.text.startswith(("QT_DEPRECATED", "Q_DECL_DEPRECATED")):
                    end = i
                    if i + 1 < n and toks[i + 1].text == "(":
                        end = _match(toks, i + 1)
                    i = end + 1
                    if i < n and toks[i].text == ";":
                        i += 1
                    pending = []
                    continue
            if t.text == ";":
                flush(stmt)
                stmt = []
                i += 1
                continue
            if t.text == "{":
                end = _match(toks, i, "{", "}")
                head = [x.text for x in stmt]
                if head and head[0] in ("enum",) or (len(head) >= 2 and head[0] == "typedef" and head[1] == "enum"):
                    if access == "public":
                        self._enum(toks[i + 1:end], cls)
                        names = [x.text for x in stmt if x.kind == "ident" and x.text not in ("enum", "class",
                                                                                                  "struct", "typedef")]
                        if names and head[0] == "enum":
                            cls.enums.append(names[0])
                        k = end + 1
                        if head[0] == "typedef" and k < n and toks[k].kind == "ident":
                            cls.enums.append(toks[k].text)
                    stmt = []
                    i = self._skip_to_semicolon(toks, end + 1)
                    pending = []
                    continue
                if head and head[0] in ("class", "struct", "union") or ("class" in head and "(" not in head) \
                        or ("struct" in head and "(" not in head):
                    stmt = []
                    i = self._skip_to_semicolon(toks, end + 1)
                    pending = []
                    continue
                # a function body (or an initializer list's brace): the declaration ends here
                if any(x.text == "(" for x in stmt):
                    flush(stmt)
                    stmt = []
                    i = end + 1
                    if i < n and toks[i].text == ";":
                        i += 1
                    continue
                # brace initializer of a data member
                stmt.append(t)
                i = end + 1
                continue
            if t.text == "(":
                end = _match(toks, i)
                stmt.extend(toks[i:end + 1])
                i = end + 1
                continue
            stmt.append(t)
            i += 1
        flush(stmt)

    def _property(self, toks: List[Tok], cls: CppClass) -> None:
        words = [t.text for t in toks if t.kind != "comment"]
        keys = {"READ", "WRITE", "MEMBER", "RESET", "NOTIFY", "DESIGNABLE", "SCRIPTABLE", "STORED", "USER",
                "CONSTANT", "FINAL", "REVISION", "BINDABLE", "REQUIRED"}
        k = next((j for j, w in enumerate(words) if w in keys), len(words))
        if k == 0:
            return
        name = words[k - 1]
        cls.properties[name] = "rw" if ("WRITE" in words or "MEMBER" in words) else "r"

    @staticmethod
    def _enum(toks: List[Tok], cls: CppClass) -> None:
        for part in _split_top([t for t in toks if t.kind != "comment"]):
            if part and part[0].kind == "ident":
                cls.enums.append(part[0].text)

    def _statement(self, toks: List[Tok], cls: CppClass, access: str, section: str, comment: str) -> List[Method]:
        words = [t for t in toks if t.kind != "comment"]
        if not words:
            return []
        deprecated = ""
        if any(t.deprecated_region for t in words):
            deprecated = "in a deprecated (#if) section"
        # strip attributes: [[...]], ALL_CAPS macros with or without (...)
        clean: List[Tok] = []
        invokable = slot = signal = False
        j = 0
        while j < len(words):
            t = words[j]
            if t.text == "[" and j + 1 < len(words) and words[j + 1].text == "[":
                end = _match(words, j, "[", "]")
                inner = " ".join(x.text for x in words[j:end + 1])
                if "deprecated" in inner:
                    deprecated = deprecated or inner
                j = end + 1
                continue
            if t.kind == "ident" and (re.fullmatch(r"[A-Z][A-Z0-9_]*_[A-Z0-9_]*|Q_INVOKABLE|Q_SIGNAL|Q_SLOT", t.text)
                                      or t.text in SPECIFIERS):
                if t.text == "Q_INVOKABLE":
                    invokable = True
                elif t.text == "Q_SIGNAL":
                    signal = True
                elif t.text == "Q_SLOT":
                    slot = True
                is_macro_like = re.fullmatch(r"[A-Z][A-Z0-9_]*", t.text) is not None
                if "DEPRECATED" in t.text:
                    msg = ""
                    if j + 1 < len(words) and words[j + 1].text == "(":
                        end = _match(words, j + 1)
                        msg = " ".join(x.text.strip('"') for x in words[j + 2:end] if x.kind == "string")
                    deprecated = deprecated or (msg or t.text)
                if is_macro_like and j + 1 < len(words) and words[j + 1].text == "(":
                    j = _match(words, j + 1) + 1
                    continue
                if t.text in ("static",):
                    clean.append(t)
                j += 1
                continue
            clean.append(t)
            j += 1
        if not clean:
            return []
        head = clean[0].text
        if head in ("friend", "using", "typedef", "template", "static_assert", "enum", "class", "struct", "union",
                    "namespace"):
            return []
        # first '(' at depth 0 (outside template angle brackets)
        depth = 0
        paren = -1
        for k, t in enumerate(clean):
            if t.text == "<":
                depth += 1
            elif t.text == ">":
                depth = max(0, depth - 1)
            elif t.text == "=" and depth == 0:
                return []                       # data member with an initializer
            elif t.text == "(" and depth == 0:
                paren = k
                break
        if paren <= 0:
            return []
        name_tok = clean[paren - 1]
        if name_tok.kind != "ident" or name_tok.text in CPP_TYPE_WORDS or name_tok.text in _BUILTIN:
            return []
        if any(t.text == "operator" for t in clean[:paren]):
            return []
        name = name_tok.text
        if paren >= 2 and clean[paren - 2].text == "~":
            return []
        if name == cls.name:
            return []                           # constructor
        if paren >= 2 and clean[paren - 2].text == "::":
            return []                           # out-of-class definition
        close = _match(clean, paren)
        tail = [t.text for t in clean[close + 1:]]
        if "=" in tail and "delete" in tail:
            return []
        params = [_param(p) for p in _split_top(clean[paren + 1:close])]
        params = [p for p in params if p[0] not in ("void", "QPrivateSignal")]
        static = any(t.text == "static" for t in clean[:paren])
        ret = [t for t in clean[:paren - 1] if t.text != "static"]
        if comment and DEPRECATION_RE.search(comment) and not re.search(r"\bnot\s+deprecated\b", comment, re.I):
            deprecated = deprecated or comment
        if section == "signals":
            sec = "signals"
        elif signal:
            sec = "signals"
        elif section == "slots" or slot:
            sec = "slots"
        else:
            sec = "normal"
        method = Method(name, params, " ".join(t.text for t in ret), access, sec, invokable, static,
                        _shorten(deprecated))
        method.ret_class = _return_class(ret)          # type: ignore[attr-defined]
        cls.methods.append(method)
        return [method]


def _shorten(text: str, limit: int = 240) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _expand(params: Optional[List[str]], body: str, args: List[str]) -> str:
    """Expand a macro body: parameters replaced, ``#x`` stringized, ``a ## b`` pasted."""
    body = re.sub(r"/\*.*?\*/", " ", body, flags=re.S)
    body = re.sub(r"//[^\n]*", " ", body)
    body = re.sub(r"\s*##\s*", "\x00", body)
    if params:
        values = {p: (args[k] if k < len(args) else "") for k, p in enumerate(params) if p and p != "..."}
        if "..." in params:
            values["__VA_ARGS__"] = ", ".join(args[len(params) - 1:])

        def sub(m: re.Match) -> str:
            word = m.group(2)
            if word in values:
                return ('"' + values[word] + '"') if m.group(1) else values[word]
            return m.group(0)

        body = re.sub(r"(#\s*)?\b(\w+)\b", sub, body)
    return body.replace("\x00", "")
