"""Static rules for what only desktop Slicer runs: how the module widgets and logics use dependencies, background
processes, shortcuts, their lifecycle and each other.  Each rule is a class of defect once found by reading the
modules against Slicer's own source; the tests re-introduce each defect into a copy of the REAL extension and show
the rule reports it.  The rules themselves are in ``slicer_static/lifecycle.py``.

Read with ``ast`` only (no Qt, no Slicer): it runs on a clean clone with the standard library and pytest.  What
is behaviour rather than structure (the review table's header, handles of the stack left behind, the loss chart
that other modules must not replace, a second parameter node, the environment of an external Python, Windows
process flags) is tested on real MRML / real processes in ``test_registration_lib.py``, ``test_training_lib.py``
and ``test_slicer_process.py``; calls to APIs Slicer does not expose are ``test_slicer_api.py``'s.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from slicer_static.lifecycle import (COMMON_LIB, CORE, RULES, check_background_processes, check_dependencies_first,
                                     check_module_coupling, check_platform_imports, check_slicer_api,
                                     check_volume_selectors, check_widget_lifecycle, module_names)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name, rule", RULES, ids=[n for n, _ in RULES])
def test_the_extension_follows_the_rule(name, rule):
    problems = rule(REPO)
    assert not problems, f"{name}: {len(problems)} problem(s)\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------------------------------------------------
# Each defect re-introduced into a copy of the real extension is reported
# --------------------------------------------------------------------------------------------------------------------
def copy_extension(dest: Path) -> Path:
    for name in module_names(REPO) + [COMMON_LIB, CORE]:
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.nii.gz"))
    return dest


def _replace(root: Path, rel: str, old: str, new: str) -> None:
    path = root / rel
    text = path.read_text(encoding="utf-8")
    assert old in text, f"the fixed code changed: {old!r} is no longer in {rel}; update this defect's mutation"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


REG = "INFANiTERegistration/INFANiTERegistration.py"
TRAIN = "INFANiTETraining/INFANiTETraining.py"
ATLAS = "INFANiTEAtlas/INFANiTEAtlas.py"
MIXIN = "INFANiTECommonLib/widget.py"
SAMPLES = "INFANiTECommonLib/sampledata.py"
PACKAGING_FIXED = ("    try:\n        import slicer.packaging as packaging\n    except ImportError:\n        return None\n"
                   "    return packaging")

# (issue-12 defect, mutation re-introducing it, rule, text the problem must contain)
DEFECTS = [
    ("1-review-table-selection", lambda r: _replace(r, REG, "view.selectionModel().selectedRows()",
                                                    "self.ui.reviewTableView.selectedMRMLTableRows()"),
     check_slicer_api, [REG, "qMRMLTableView has no Python-visible member 'selectedMRMLTableRows'"]),
    ("1-selection-property-called", lambda r: _replace(r, REG, "view.selectionModel().selectedRows()",
                                                       "view.selectionModel().selectedIndexes()"),
     check_slicer_api, [REG, "'selectedIndexes' is a Q_PROPERTY"]),
    ("2-sample-data-properties-as-a-list", lambda r: _replace(
        r, SAMPLES, '"loadFileProperties": {"labelmap": labelmap}', '"loadFileProperties": [{}, {"labelmap": True}]'),
     check_slicer_api, [SAMPLES, "registerCustomSampleDataSource(loadFileProperties=…): a list literal"]),
    ("11-deprecated-column-header", lambda r: _replace(
        r, "INFANiTETraining/INFANiTETrainingLib/controller.py", "SetUseColumnTitleAsColumnHeader(True)",
        "SetUseColumnNameAsColumnHeader(True)"), check_slicer_api, ["SetUseColumnNameAsColumnHeader is deprecated"]),
    ("11-slicer-packaging-never-imported", lambda r: _replace(
        r, "INFANiTECommonLib/dependencies.py", PACKAGING_FIXED, '    import slicer\n\n    return getattr(slicer, '
                                                                 '"packaging", None)'),
     check_slicer_api, ["dependencies.py:", "slicer.packaging is a submodule that 'import slicer' does not import"]),
    ("3-resource-at-file-scope", lambda r: _replace(r, "infanite/inr/train.py", "import torch\n",
                                                    "import resource\nimport torch\n"),
     check_platform_imports, ["infanite/inr/train.py:", "'resource' exists on POSIX only"]),
    ("3-fcntl-in-a-lib", lambda r: _replace(r, "INFANiTECommonLib/process.py", "import json\n",
                                            "import fcntl\nimport json\n"),
     check_platform_imports, ["INFANiTECommonLib/process.py:", "'fcntl'"]),
    ("4-run-without-dependencies", lambda r: _replace(r, MIXIN, "            self.ensureDependencies()\n", ""),
     check_dependencies_first, ["ParameterNodeWidgetMixin._run does not ensure"]),
    ("4-button-outside-run", lambda r: _replace(
        r, REG, 'button.connect("clicked(bool)", lambda _=False, h=handler: self._run(h))',
        'button.connect("clicked(bool)", handler)'), check_dependencies_first, [REG, "route it through"]),
    ("4-widget-overrides-run", lambda r: _replace(
        r, TRAIN, "    def fillDevices(self, devices, description):",
        "    def _run(self, handler):\n        handler()\n\n    def fillDevices(self, devices, description):"),
     check_dependencies_first, [TRAIN, "overrides _run"]),
    ("4-self-test-without-dependencies", lambda r: _replace(r, ATLAS, "        ensure_dependencies(need_torch=False)\n"
                                                                      "        slicer.mrmlScene.Clear()\n",
                                                            "        slicer.mrmlScene.Clear()\n"),
     check_dependencies_first, ["INFANiTEAtlasTest.setUp does not call ensure_dependencies"]),
    ("6-exit-drops-the-parameter-node", lambda r: _replace(
        r, MIXIN, '        """Stop reacting to the parameter node; keep it (a running process still reports into it)."""\n',
        '        """Stop."""\n        self.setParameterNode(None)\n'),
     check_widget_lifecycle, ["ParameterNodeWidgetMixin.exit drops the parameter node"]),
    ("6-shortcut-on-the-main-window", lambda r: _replace(r, REG, "            shortcut.setEnabled(False)\n", ""),
     check_widget_lifecycle, [REG, "QShortcut that is not scoped"]),
    ("8-cleanup-leaves-the-process", lambda r: _replace(r, MIXIN, "        self.logic.shutdown()\n", ""),
     check_widget_lifecycle, ["cleanup does not stop the background process"]),
    ("8-module-cleanup-skips-the-mixin", lambda r: _replace(
        r, ATLAS, "        ParameterNodeWidgetMixin.cleanup(self)      # stops the generation's process tree\n",
        "        self.removeObservers()\n"), check_widget_lifecycle, [ATLAS, "does not call ParameterNodeWidgetMixin"]),
    ("10-download-without-finish", lambda r: _replace(
        r, REG, "            self.startInBackground(self.logic.downloadTemplates, self.onProgress,\n"
                "                                   self._finish(self.logic.finishDownload))",
        "            self.logic.downloadTemplates(self.logic.getParameterNode(), onProgress=self.onProgress)"),
     check_background_processes, [REG, "calls self.logic.downloadTemplates(…) directly"]),
    ("10-process-without-on-finished", lambda r: _replace(
        r, REG, "        return self.startProcess(command, onProgress, onFinished)\n\n    def finishDownload",
        "        return self.startProcess(command, onProgress)\n\n    def finishDownload"),
     check_background_processes, [REG, "downloadTemplates starts a process without onFinished"]),
    ("11-self-test-wait-blocks-events", lambda r: _replace(
        r, TRAIN, "logic.controller.wait(timeout=900, on_idle=slicer.app.processEvents)",
        "logic.controller.wait(timeout=900)"), check_background_processes, [TRAIN, "without on_idle"]),
    ("11-refine-in-the-gui-process", lambda r: _replace(
        r, "INFANiTERegistration/INFANiTERegistrationLib/review.py", "    def _apply_refined(",
        "    def refine(self, sid):\n        from infanite.registration.stack import register_stack\n\n"
        "        return register_stack\n\n    def _apply_refined("),
     check_background_processes, ["review.py:", "infanite.registration.stack.register_stack", "blocks the GUI"]),
    ("11-cuda-detection-in-the-gui", lambda r: _replace(
        r, "INFANiTETraining/INFANiTETrainingLib/controller.py", "def devices_from_event(",
        "def detect():\n    from infanite.devices import detect_devices\n\n    return detect_devices()\n\n\n"
        "def devices_from_event("), check_background_processes, ["infanite.devices.detect_devices"]),
    ("11-t2-selector-lists-label-maps", lambda r: _replace(
        r, "INFANiTERegistration/Resources/UI/INFANiTERegistration.ui",
        '        <property name="showChildNodeTypes">\n         <bool>false</bool>\n        </property>\n', ""),
     check_volume_selectors, ["t2VolumeSelector", "showChildNodeTypes"]),
    ("12-private-widget-state-of-another-module", lambda r: _replace(
        r, TRAIN, '        slicer.util.getModuleLogic("INFANiTEAtlas").getParameterNode().runPath = pathlib.Path(run)',
        '        slicer.modules.infaniteatlas.widgetRepresentation().self()._parameterNode.runPath = '
        'pathlib.Path(run)'), check_module_coupling, [TRAIN, "_parameterNode", "private state"]),
]


@pytest.mark.parametrize("mutate, rule, expected", [pytest.param(m, r, e, id=i) for i, m, r, e in DEFECTS])
def test_each_defect_reintroduced_is_reported(tmp_path, mutate, rule, expected):
    root = copy_extension(tmp_path)
    assert rule(root) == [], "the copy of the fixed extension must pass this rule"
    mutate(root)
    problems = rule(root)
    assert any(all(e in p for e in expected) for p in problems), \
        f"expected a problem containing {expected}, got:\n  " + "\n  ".join(problems or ["(none)"])
