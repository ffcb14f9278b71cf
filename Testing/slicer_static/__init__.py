"""Static checks of what only desktop 3D Slicer runs: the scripted modules, their .ui files, the CMake build and
the extension description.  Nothing here imports Qt, Slicer or the modules; everything is read with ``ast``,
``xml`` and a small CMake tokenizer, so it runs on a clean clone with the standard library only.

Modules are discovered: every top-level folder ``INFANiTE*/`` holding ``<Folder>.py`` (``INFANiTECommonLib/`` is a
shared package, not a module).  The checkers are plain functions taking the repository root (and a module name or
a group of Python files) and returning a list of problems ``"path:line: message"``.  The tests are in
``Testing/test_slicer_static.py`` (structure, Python versions, CMake, s4ext) and ``Testing/test_slicer_lifecycle.py``
(how the widgets and logics use dependencies, processes, shortcuts and each other).

- ``config``: the knobs (names, allowed imports and widget attributes, widget classes and their members, ...);
  extend them when a new Slicer API or widget is used;
- ``common``: module discovery, the Python files of each group, ``ast`` helpers;
- ``ui``: rule 1, .ui files and parameter-node bindings;
- ``compat``: rule 2, Python 3.9 and 3.12;
- ``rules``: rule 3 (file-scope imports, package installation) and rule 6 (module files, classes, widget state);
- ``cmake``: rule 4, a CMake tokenizer/evaluator and the CMake lists;
- ``extension``: rule 5, s4ext ↔ CMake, image URLs, the Extensions Index catalog entry;
- ``lifecycle``: the widget/logic lifecycle rules of ``test_slicer_lifecycle.py``.
"""
from .cmake import (CMakeCommand, CMakeFile, check_module_cmake, check_top_cmake, check_top_subdirectories,
                    parse_cmake, tokenize_cmake)
from .common import (discover_modules, group_py_files, incomplete_module_folders, parameter_fields,
                     parameter_node_classes, python_groups, stdlib_module_names)
from .compat import check_compile, check_runtime_compat
from .config import Problems
from .extension import check_catalog_entry, check_image_urls, check_s4ext, parse_s4ext
from .lifecycle import (check_background_processes, check_dependencies_first, check_module_coupling,
                        check_platform_imports, check_slicer_api, check_volume_selectors, check_widget_lifecycle)
from .rules import (check_file_scope_imports, check_module_classes, check_module_layout, check_no_installs,
                    check_widget_state)
from .ui import UiInfo, check_parameter_bindings, check_ui_files, parse_ui, ui_usages

__all__ = [
    "CMakeCommand", "CMakeFile", "Problems", "UiInfo",
    # discovery and parsing
    "discover_modules", "group_py_files", "incomplete_module_folders", "parameter_fields", "parameter_node_classes",
    "parse_cmake", "parse_s4ext", "parse_ui", "python_groups", "stdlib_module_names", "tokenize_cmake", "ui_usages",
    # checkers of test_slicer_static.py
    "check_catalog_entry", "check_compile", "check_file_scope_imports", "check_image_urls", "check_module_classes",
    "check_module_cmake", "check_module_layout", "check_no_installs", "check_parameter_bindings",
    "check_runtime_compat", "check_s4ext", "check_top_cmake", "check_top_subdirectories", "check_ui_files",
    "check_widget_state",
    # checkers of test_slicer_lifecycle.py
    "check_background_processes", "check_dependencies_first", "check_module_coupling", "check_platform_imports",
    "check_slicer_api", "check_volume_selectors", "check_widget_lifecycle",
]
