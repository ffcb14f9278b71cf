"""The knobs of the static checks: the extension's names, what the Slicer code may import at file scope and store
on a widget, which widget classes have which members, what is new or gone between Python 3.9 and 3.12, the s4ext
keys.  Extend them when a new Slicer API or widget is used."""
from __future__ import annotations

import re
from typing import Dict, Iterable, List


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
#: the core modules that import the standard library only (checked by test_standard_library_only_core_modules):
#: the Slicer code may import them at file scope
STDLIB_ONLY_CORE_MODULES = {"infanite.io.layout", "infanite.io.atomic", "infanite.io.paths", "infanite.atlas.folder"}

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
