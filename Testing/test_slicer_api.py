"""The extension's Slicer / CTK / Qt / MRML / VTK calls exist in Slicer 5.8.1 and 5.10.0 (``Testing/slicer_api``).

The indexes (``slicer_api/index/slicer-*.json``) are generated from the Slicer, CTK, PythonQt and SlicerPyTorch
sources at fixed revisions (``slicer_api/generate_index.py``, see ``slicer_api/README.md``); these tests only read
them: standard library and pytest, no Qt, no Slicer, no git, no network.

``test_extension_calls_exist_in_slicer_5_8_and_5_10`` checks the real extension and prints what the checker could
not resolve statically (run with ``-s`` or ``-rA`` to see it).  The other tests write a small synthetic extension
under ``tmp_path`` that passes, then break it once per rule and assert that the checker reports that problem at
that file and line.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from slicer_api.checker import check_extension, load_indexes, normalize_signature

REPO = Path(__file__).resolve().parents[1]
INDEX_DIR = Path(__file__).resolve().parent / "slicer_api" / "index"
TAGS = {"5.8.1": "v5.8.1", "5.10.0": "v5.10.0"}


@pytest.fixture(scope="session")
def indexes() -> dict:
    return load_indexes(INDEX_DIR)


# ---------------------------------------------------------------------------------------------------------------
# the real extension
# ---------------------------------------------------------------------------------------------------------------
def test_extension_calls_exist_in_slicer_5_8_and_5_10(indexes):
    report = check_extension(REPO, indexes)
    print(f"\n{len(report.unresolved)} call(s) the checker could not resolve statically (not checked):")
    for line in report.unresolved:
        print("  " + line)
    assert not report.problems, ("calls that Slicer 5.8.1 / 5.10.0 do not expose to Python (or expose as "
                                 "deprecated):\n" + "\n".join(report.problems))


# ---------------------------------------------------------------------------------------------------------------
# the committed indexes
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", sorted(TAGS))
def test_index_files_are_well_formed(version):
    path = INDEX_DIR / f"slicer-{version}.json"
    text = path.read_text()
    index = json.loads(text)
    meta = index["metadata"]
    assert meta["tag"] == TAGS[version]
    for key in ("slicer_sha", "ctk_sha", "pytorchutils_sha", "pythonqt_pinned_by_ctk"):
        assert re.fullmatch(r"[0-9a-f]{40}", meta[key]), (key, meta[key])
    # the CTK commits Slicer pins in SuperBuild/External_CTK.cmake at these tags
    expected_ctk = {"5.8.1": "82cae5781621845486bad2697aed095f04cfbe76",
                    "5.10.0": "dd4caeae7e979cf441e44ee85d3b0780120d113d"}
    assert meta["ctk_sha"] == expected_ctk[version]
    assert meta["qt_version"].startswith("5.15.")
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["vtk_version"])
    assert "fork" in meta["vtk_note"]
    assert meta["generator_version"]
    assert meta["module_logics"]["Plots"] == "vtkSlicerPlotsLogic"
    # one class per line, sorted: diffable
    class_lines = [line for line in text.splitlines() if line.startswith('"') and '{"bases"' in line]
    names = [json.loads("{" + line.rstrip(",") + "}").popitem()[0] for line in class_lines]
    assert names == sorted(names) and len(names) == len(index["classes"])
    kinds = {entry["kind"] for entry in index["classes"].values()}
    assert kinds <= {"vtk", "qt", "qobject", "cpp"}
    for name in ("vtkMRMLTableNode", "vtkMRMLScene", "qMRMLTableView", "qSlicerApplication", "QPushButton",
                 "ctkCollapsibleButton", "vtkObject", "vtkCommand", "QObject"):
        assert name in index["classes"], name
    for entry in index["classes"].values():
        assert isinstance(entry["bases"], list)
    for key in ("slicer.util", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "SampleData",
                "PyTorchUtils", "slicer"):
        assert key in index["python"], key
    assert "packaging" not in index["python"]["slicer"]["submodules"]       # slicer.packaging: main branch only
    assert "packaging" in index["python"]["slicer"]["main_only_submodules"]
    assert path.stat().st_size < 5_000_000


def test_index_encodes_the_pythonqt_rules(indexes):
    """Spot checks of what the generator read from the headers."""
    for version, index in indexes.items():
        classes = index["classes"]
        view = classes["qMRMLTableView"]
        assert view["kind"] == "qobject"
        assert "setMRMLTableNode" in view["slots"] and "mrmlTableNode" in view["invokables"]
        assert "selectedMRMLTableColumnIndices" in view["hidden"]                 # plain public method
        assert "selectionChanged()" in view["signals"]
        assert {"clicked()", "clicked(bool)"} <= set(classes["QAbstractButton"]["signals"])   # default argument
        assert "currentTextChanged(QString)" in classes["QComboBox"]["signals"]               # const QString &
        assert "timeout()" in classes["QTimer"]["signals"]                                    # QPrivateSignal
        table = classes["vtkMRMLTableNode"]
        assert "SetUseColumnNameAsColumnHeader" in table["deprecated"]
        assert "SetUseColumnTitleAsColumnHeader" in table["methods"]               # vtkSetMacro
        assert {"IsA", "SafeDownCast", "NewInstance"} <= set(table["methods"])     # vtkTypeMacro
        assert {"CopyContent", "HasCopyContent"} <= set(table["methods"])          # vtkMRMLCopyContentMacro
        assert "connect" in classes["QObject"]["decorators"]                       # PythonQtStdDecorators
        assert classes["vtkMRMLTableNode"]["methods"]["GetTable"] == "vtkTable"
    assert "RemoveColor" not in indexes["5.8.1"]["classes"]["vtkMRMLColorTableNode"]["methods"]
    assert "RemoveColor" in indexes["5.10.0"]["classes"]["vtkMRMLColorTableNode"]["methods"]


def test_signature_normalization():
    assert normalize_signature("currentTextChanged(const QString &)") == "currentTextChanged(QString)"
    assert normalize_signature(" currentNodeChanged( vtkMRMLNode * node ) ") == "currentNodeChanged(vtkMRMLNode*)"
    assert normalize_signature("clicked()") == "clicked()"


# ---------------------------------------------------------------------------------------------------------------
# a synthetic extension, then broken once per rule
# ---------------------------------------------------------------------------------------------------------------
UI = """<?xml version="1.0" encoding="UTF-8"?>
<ui version="4.0">
 <class>INFANiTEFake</class>
 <widget class="qMRMLWidget" name="INFANiTEFake">
  <layout class="QVBoxLayout" name="verticalLayout">
   <item>
    <widget class="ctkCollapsibleButton" name="inputsCollapsibleButton">
     <layout class="QFormLayout" name="formLayout">
      <item row="0" column="0">
       <widget class="qMRMLTableView" name="tableView"/>
      </item>
      <item row="1" column="0">
       <widget class="QPushButton" name="applyButton"/>
      </item>
      <item row="2" column="0">
       <widget class="QProgressBar" name="progressBar"/>
      </item>
     </layout>
    </widget>
   </item>
  </layout>
 </widget>
 <customwidgets>
  <customwidget><class>qMRMLWidget</class><extends>QWidget</extends><header>qMRMLWidget.h</header></customwidget>
  <customwidget><class>qMRMLTableView</class><extends>QTableView</extends><header>qMRMLTableView.h</header>
  </customwidget>
  <customwidget><class>ctkCollapsibleButton</class><extends>QWidget</extends><header>ctkCollapsibleButton.h</header>
  </customwidget>
 </customwidgets>
</ui>
"""

#: every line a test breaks ends with a "# <key>" marker; the line numbers asserted are those of the markers
GOOD = '''\
import qt
import slicer
import vtk
from slicer import vtkMRMLTableNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin


class INFANiTEFake(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        slicer.app.connect("startupCompleted()", registerSampleData)


def sampleSources():
    sources = []
    for name in ("a", "b"):
        sources.append({"category": "Fake", "sampleName": name, "uris": [f"file:///{name}.nii.gz"],
                        "fileNames": [f"{name}.nii.gz"], "nodeNames": [name], "loadFileType": "VolumeFile",
                        "loadFileProperties": {"labelmap": True}})  # sources
    return sources


def registerSampleData():
    import SampleData

    for source in sampleSources():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="Fake", sampleName="c", uris=["file:///c.nii.gz"], fileNames=["c.nii.gz"], nodeNames=["c"],
        loadFileType="VolumeFile", loadFileProperties={"labelmap": True})  # samples


@parameterNodeWrapper
class INFANiTEFakeParameterNode:
    table: vtkMRMLTableNode


class INFANiTEFakeWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/INFANiTEFake.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        self.logic = INFANiTEFakeLogic()
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.tableView.connect("selectionChanged()", self.onSelection)  # signal
        self.ui.applyButton.enabled = True  # property
        self.ui.progressBar.format = "%p%"
        self._timer = qt.QTimer()
        self._timer.connect("timeout()", self.onApply)
        self.addObserver(slicer.mrmlScene, vtk.vtkCommand.ModifiedEvent, self.onApply)

    def onSelection(self):
        rows = self.ui.tableView.selectionModel().selectedRows()  # slot
        return rows

    def onApply(self, caller=None, event=None):
        node = self.logic.makeTable(slicer.mrmlScene)
        self.ui.tableView.setMRMLTableNode(node)
        if slicer.util.confirmOkCancelDisplay("Apply?", windowTitle="Fake"):
            slicer.util.setSliceViewerLayers(background=None, fit=True)  # util
            slicer.util.resetSliceViews()  # utilname


class INFANiTEFakeLogic(ScriptedLoadableModuleLogic):
    def getParameterNode(self):
        return INFANiTEFakeParameterNode(super().getParameterNode())

    def makeTable(self, scene):
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", "fake")
        table.SetUseColumnTitleAsColumnHeader(True)  # deprecated
        table.AddEmptyRow()  # nodemethod
        colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "colors")
        if hasattr(colors, "RemoveColor"):                    # Slicer >= 5.10
            colors.RemoveColor(3)  # newer
        p = self.getParameterNode()
        p.table = table
        return p.table.GetNumberOfRows()

    def packaging(self):
        try:
            import slicer.packaging
        except ImportError:
            return None
        return slicer.packaging  # packaging
'''


def write_extension(root: Path, replace: dict | None = None) -> tuple[Path, dict]:
    """The synthetic extension in ``root`` (lines ending with ``# key`` replaced by ``replace[key]``, keeping
    their indentation); returns the repository and {key: line number}."""
    lines = GOOD.splitlines()
    where = {}
    for k, line in enumerate(lines):
        m = re.search(r"  # (\w+)$", line)
        if m:
            where[m.group(1)] = k + 1
            if replace and m.group(1) in replace:
                indent = line[:len(line) - len(line.lstrip())]
                lines[k] = indent + replace[m.group(1)]
    module = root / "INFANiTEFake"
    (module / "Resources" / "UI").mkdir(parents=True, exist_ok=True)
    (module / "Resources" / "UI" / "INFANiTEFake.ui").write_text(UI)
    (module / "INFANiTEFake.py").write_text("\n".join(lines) + "\n")
    return root, where


def problems_for(indexes, tmp_path, key: str, bad: str) -> tuple[list, str]:
    repo, where = write_extension(tmp_path, {key: bad})
    report = check_extension(repo, indexes)
    return report.problems, f"INFANiTEFake/INFANiTEFake.py:{where[key]}: "


def assert_reported(problems: list, location: str, *fragments: str) -> None:
    hits = [p for p in problems if p.startswith(location) and all(f in p for f in fragments)]
    assert hits, f"expected a problem at {location} mentioning {fragments}; got:\n" + "\n".join(problems)


def test_synthetic_extension_passes(indexes, tmp_path):
    repo, _ = write_extension(tmp_path)
    report = check_extension(repo, indexes)
    assert report.problems == []
    print("\n".join(report.unresolved))


def test_unknown_method_on_qmrml_widget(indexes, tmp_path):
    problems, at = problems_for(indexes, tmp_path, "slot", "rows = self.ui.tableView.selectedMRMLTableRows()")
    assert_reported(problems, at, "qMRMLTableView", "selectedMRMLTableRows", "5.8.1", "5.10.0")


def test_plain_public_method_of_qmrml_class_is_not_exposed(indexes, tmp_path):
    problems, at = problems_for(indexes, tmp_path, "slot", "rows = self.ui.tableView.selectedMRMLTableColumnIndices()")
    assert_reported(problems, at, "selectedMRMLTableColumnIndices", "plain public C++ method of qMRMLTableView",
                    "PythonQt does not expose it")


def test_unknown_signal_in_connect(indexes, tmp_path):
    problems, at = problems_for(indexes, tmp_path, "signal",
                                'self.ui.tableView.connect("selectionChanged(int)", self.onSelection)')
    assert_reported(problems, at, "qMRMLTableView has no signal 'selectionChanged(int)'")


def test_property_that_does_not_exist(indexes, tmp_path):
    problems, at = problems_for(indexes, tmp_path, "property", "self.ui.applyButton.enable = True")
    assert_reported(problems, at, "QPushButton", "'enable'", "only sets a Python attribute")


def test_read_only_property_and_property_called_as_method(indexes, tmp_path):
    problems, at = problems_for(indexes, tmp_path, "property", 'self.ui.progressBar.text = "x"')
    assert_reported(problems, at, "Q_PROPERTY 'text' of QProgressBar is read-only")
    problems, at = problems_for(indexes, tmp_path, "slot", "rows = self.ui.tableView.selectionModel().selectedIndexes()")
    assert_reported(problems, at, "'selectedIndexes' is a Q_PROPERTY of QItemSelectionModel", "calling it fails")


def test_deprecated_mrml_method(indexes, tmp_path):
    problems, at = problems_for(indexes, tmp_path, "deprecated", "table.SetUseColumnNameAsColumnHeader(True)")
    assert_reported(problems, at, "vtkMRMLTableNode.SetUseColumnNameAsColumnHeader is deprecated",
                    "SetUseColumnTitleAsColumnHeader")


def test_method_missing_on_node_created_by_class_name(indexes, tmp_path):
    problems, at = problems_for(indexes, tmp_path, "nodemethod", "table.SetNumberOfColumns(3)")
    assert_reported(problems, at, "vtkMRMLTableNode has no Python-visible member 'SetNumberOfColumns'")


def test_unknown_slicer_util_function(indexes, tmp_path):
    problems, at = problems_for(indexes, tmp_path, "utilname", "slicer.util.resetSliceView()")
    assert_reported(problems, at, "slicer.util.resetSliceView does not exist at Slicer 5.8.1, 5.10.0")


def test_bad_keyword_to_slicer_util_function(indexes, tmp_path):
    problems, at = problems_for(indexes, tmp_path, "util",
                                "slicer.util.setSliceViewerLayers(background=None, fitView=True)")
    assert_reported(problems, at, "slicer.util.setSliceViewerLayers() got an unexpected keyword argument 'fitView'")


def test_list_for_dict_load_file_properties(indexes, tmp_path):
    problems, at = problems_for(
        indexes, tmp_path, "samples",
        'loadFileType="VolumeFile", loadFileProperties=[{}, {"labelmap": True}])')
    call_line = int(at.split(":")[1]) - 2                     # the call starts two lines above its last line
    assert_reported(problems, f"INFANiTEFake/INFANiTEFake.py:{call_line}: ",
                    "registerCustomSampleDataSource(loadFileProperties=…): a list literal", "default is {}")


def test_list_for_dict_load_file_properties_through_kwargs(indexes, tmp_path):
    """The defect as the extension had it: dict literals built in a function, passed with ``**source``."""
    problems, _ = problems_for(indexes, tmp_path, "sources",
                               '"loadFileProperties": [{}, {"labelmap": True}]})')
    _, where = write_extension(tmp_path)
    call_line = next(k + 1 for k, line in enumerate(GOOD.splitlines()) if "(**source)" in line)
    assert_reported(problems, f"INFANiTEFake/INFANiTEFake.py:{call_line}: ",
                    "loadFileProperties=…): a list literal", f"(line {where['sources']})")


def test_slicer_packaging_without_import(indexes, tmp_path):
    problems, at = problems_for(indexes, tmp_path, "packaging", 'return getattr(slicer, "packaging", None)')
    # the try/import above still imports it: drop that import to see the defect
    repo, where = write_extension(tmp_path, {"packaging": 'return getattr(slicer, "packaging", None)'})
    path = repo / "INFANiTEFake" / "INFANiTEFake.py"
    path.write_text(path.read_text().replace("            import slicer.packaging\n", "            pass\n"))
    report = check_extension(repo, indexes)
    assert_reported(report.problems, f"INFANiTEFake/INFANiTEFake.py:{where['packaging']}: ",
                    "slicer.packaging is a submodule that 'import slicer' does not import",
                    "does not exist at 5.8.1, 5.10.0")
    assert problems == []            # with 'import slicer.packaging' in the file, the same line is fine


def test_member_only_in_5_10_unguarded_is_reported_guarded_is_not(indexes, tmp_path):
    repo, where = write_extension(tmp_path)
    path = repo / "INFANiTEFake" / "INFANiTEFake.py"
    text = path.read_text()
    assert check_extension(repo, indexes).problems == []                  # guarded by hasattr: fine
    path.write_text(text.replace('        if hasattr(colors, "RemoveColor"):                    # Slicer >= 5.10\n',
                                 '        if colors:\n'))
    report = check_extension(repo, indexes)
    assert_reported(report.problems, f"INFANiTEFake/INFANiTEFake.py:{where['newer']}: ",
                    "vtkMRMLColorTableNode.RemoveColor exists in Slicer 5.10.0 but not in 5.8.1")
    path.write_text(text.replace('        if hasattr(colors, "RemoveColor"):                    # Slicer >= 5.10\n',
                                 '        if getattr(colors, "RemoveColor", None) is not None:\n'))
    assert check_extension(repo, indexes).problems == []                  # guarded by getattr: fine


def test_unknown_parameter_node_field(indexes, tmp_path):
    problems, at = problems_for(indexes, tmp_path, "nodemethod", "self.getParameterNode().tabel = table")
    assert_reported(problems, at, "'tabel' is neither a field of the parameter node wrapper INFANiTEFakeParameterNode")


def test_unknown_widget_name(indexes, tmp_path):
    problems, at = problems_for(indexes, tmp_path, "property", "self.ui.aplyButton.enabled = True")
    assert_reported(problems, at, "self.ui.aplyButton: no widget, layout or action named 'aplyButton'",
                    "INFANiTEFake/Resources/UI/INFANiTEFake.ui")
