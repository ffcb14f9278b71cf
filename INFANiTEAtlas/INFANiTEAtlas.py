"""INFANiTEAtlas: browse a fetal atlas by gestational age (GA, weeks); generate it (``python -m infanite atlas`` in
a background process).  MRML work is in :mod:`INFANiTEAtlasLib` (tested with slicer-core).  The sequence browser is
the single source of truth for the GA shown: the GA slider, play/seek widgets and the chart's GA marker follow it.
"""
import math
import pathlib
from typing import Annotated

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from INFANiTEAtlasLib import (TissueDisplay, TissueVolumePlot, add_generated_ga, atlas_range_command,
                              exact_ga_command, exact_ga_target, export_current, load_atlas, write_sample_atlas)
from INFANiTEAtlasLib.export import export_paths, labels_on_t2_grid
from INFANiTECommonLib.dependencies import ensure_dependencies
from INFANiTECommonLib.logic import BackgroundProcessLogicMixin, given_path
from INFANiTECommonLib.widget import ParameterNodeWidgetMixin


class INFANiTEAtlas(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "INFANiTE Atlas"
        self.parent.categories = ["INFANiTE"]
        self.parent.contributors = ["INFANiTE developers"]
        self.parent.helpText = ("Open (or generate from a training run) a fetal atlas; browse it by gestational age "
                                "with its tissues; chart tissue volumes against norms; add an exact GA; export.")
        self.parent.acknowledgementText = "Method: INFANiTE (implicit neural fetal atlases). Norms: Ren et al. 2022."


@parameterNodeWrapper
class INFANiTEAtlasParameterNode:
    atlasPath: pathlib.Path
    runPath: pathlib.Path
    gaStart: Annotated[float, WithinRange(10.0, 50.0)] = 21.0
    gaStop: Annotated[float, WithinRange(10.0, 50.0)] = 38.0
    gaStep: Annotated[float, WithinRange(0.1, 10.0)] = 1.0
    spacingMm: Annotated[float, WithinRange(0.1, 5.0)] = 0.8
    device: Annotated[str, Choice(["cpu", "cuda"])] = "cpu"
    exactGa: Annotated[float, WithinRange(10.0, 50.0)] = 28.0
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.6
    exportPath: pathlib.Path
    exportName: str = "atlas"
    exportSegNrrd: bool = True
    status: str = ""


class INFANiTEAtlasWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    errorMessage = "INFANiTE atlas failed."

    def setup(self):
        self.setupModuleUi("INFANiTEAtlas", INFANiTEAtlasLogic())
        for button, handler in ((self.ui.openButton, self.onOpen),
                                (self.ui.generateButton, lambda: self._start(self.logic.generate)),
                                (self.ui.exactGaButton, lambda: self._start(self.logic.generateExactGa)),
                                (self.ui.cancelButton, self.logic.cancel),
                                (self.ui.exportButton, self.onExport),
                                (self.ui.showAllButton, lambda: self.logic.setAllTissuesVisible(True)),
                                (self.ui.hideAllButton, lambda: self.logic.setAllTissuesVisible(False))):
            button.connect("clicked(bool)", lambda _=False, h=handler: self._run(h))
        self.ui.gaSlider.connect("valueChanged(int)", lambda value: self._run(lambda: self.onGaSlider(value),
                                                                              waitCursor=False))
        self.ui.gaSlider.connect("sliderReleased()", lambda: self._run(self.onBrowserModified, waitCursor=False))
        self.initializeParameterNode()
        self.showAtlas()

    def cleanup(self):
        ParameterNodeWidgetMixin.cleanup(self)      # stops the generation's process tree
        self.logic.close(removeNodes=False)        # leaves the nodes to the scene

    def onSceneStartClose(self, caller, event):
        self._timer.stop()
        self.logic.cancel()
        self.logic.close(removeNodes=False)
        self.showAtlas()
        ParameterNodeWidgetMixin.onSceneStartClose(self, caller, event)

    def _onParameterNodeModified(self, caller=None, event=None):
        p = self._parameterNode
        running = self.logic.isRunning()
        loaded = self.logic.loaded is not None
        self.ui.openButton.enabled = bool(p and given_path(p.atlasPath) and not running)
        self.ui.generateButton.enabled = bool(p and given_path(p.runPath) and given_path(p.atlasPath) and not running)
        self.ui.cancelButton.enabled = running
        self.ui.exactGaButton.enabled = loaded and not running
        self.ui.exportButton.enabled = bool(p and loaded and given_path(p.exportPath))
        for widget in (self.ui.gaSlider, self.ui.showAllButton, self.ui.hideAllButton):
            widget.enabled = loaded
        if p and loaded:
            self.logic.setOverlayOpacity(p.overlayOpacity)

    def showAtlas(self):
        """Point the GA navigation and the tissue table at the loaded atlas (or at nothing)."""
        loaded = self.logic.loaded
        self.removeObservers(self.onBrowserModified)
        self.ui.playWidget.setMRMLSequenceBrowserNode(loaded.browser if loaded else None)
        self.ui.seekWidget.setMRMLSequenceBrowserNode(loaded.browser if loaded else None)
        self.ui.segmentsTableView.setSegmentationNode(loaded.seg_proxy if loaded else None)
        if loaded is not None:
            wasBlocked = self.ui.gaSlider.blockSignals(True)                    # slider unit: 0.1 week
            self.ui.gaSlider.setRange(int(math.floor(loaded.gas[0])) * 10, int(math.ceil(loaded.gas[-1])) * 10)
            self.ui.gaSlider.blockSignals(wasBlocked)
            self.addObserver(loaded.browser, vtk.vtkCommand.ModifiedEvent, self.onBrowserModified)
        self.onBrowserModified()
        self._onParameterNodeModified()

    def onBrowserModified(self, caller=None, event=None):
        ga = self.logic.loaded.current_ga if self.logic.loaded is not None else None
        if ga is not None and not self.ui.gaSlider.isSliderDown():
            wasBlocked = self.ui.gaSlider.blockSignals(True)
            self.ui.gaSlider.value = int(round(ga * 10))
            self.ui.gaSlider.blockSignals(wasBlocked)

    def onGaSlider(self, value):
        loaded = self.logic.loaded
        if loaded is not None:                          # dragging: the nearest GA; keys, clicks, wheel: the next GA
            shown, ga = loaded.current_ga, value / 10.0
            if not self.ui.gaSlider.isSliderDown():
                ga = min((g for g in loaded.gas if (g - shown) * (ga - shown) > 0), key=lambda g: abs(g - shown),
                         default=shown)
            self.logic.selectGa(ga)
            self.onBrowserModified()

    def onOpen(self):
        self.ui.progressBar.setValue(0)
        self.logic.openAtlas(self.logic.getParameterNode(), onItem=self.onLoadItem)
        self.showAtlas()

    def onLoadItem(self, done, total):
        self.ui.progressBar.setMaximum(max(1, total))
        self.ui.progressBar.setValue(done)
        slicer.app.processEvents(qt.QEventLoop.ExcludeUserInputEvents)

    def _start(self, method):
        self.ui.progressBar.setValue(0)
        self.startInBackground(method, self.onProgress, self.onFinished)

    def onProgress(self, event):
        self.ui.progressBar.setMaximum(max(1, int(event.get("total") or 1)))
        self.ui.progressBar.setValue(int(event.get("step") or 0))
        eta = event.get("eta_s")
        message = event.get("message") or ""
        self.logic.getParameterNode().status = message + (f" (about {eta:.0f} s left)" if eta else "")

    def onFinished(self, returncode, cancelled, lines):
        if self.logic.finish(self.logic.getParameterNode(), returncode, cancelled, lines):
            self.showAtlas()

    def onExport(self):
        paths = self.logic.exportPaths(self.logic.getParameterNode()).values()
        existing = [str(path) for path in paths if path.exists()]
        question = "These files already exist:\n\n" + "\n".join(existing) + "\n\nReplace them?"
        if not existing or slicer.util.confirmYesNoDisplay(question, "INFANiTE atlas: export"):
            self.logic.export(self.logic.getParameterNode(), overwrite=bool(existing))


class INFANiTEAtlasLogic(BackgroundProcessLogicMixin, ScriptedLoadableModuleLogic, VTKObservationMixin):
    """GUI-free logic taking the parameter node and values; MRML work is in the Lib.  The open atlas is ``loaded``
    (LoadedAtlas) and ``plot`` (TissueVolumePlot); ``process`` runs ``infanite atlas``, ``pending`` is its output."""

    def __init__(self, processFactory=None):
        ScriptedLoadableModuleLogic.__init__(self)
        VTKObservationMixin.__init__(self)
        self.processFactory = processFactory
        self.process = None
        self.pending = None          # ("atlas", folder) or ("exact", folder, GA in weeks)
        self.loaded = None
        self.plot = None

    def getParameterNode(self):
        return INFANiTEAtlasParameterNode(super().getParameterNode())

    @staticmethod
    def _folder(path, message):
        if not given_path(path):
            raise ValueError(message)
        return pathlib.Path(path)

    def _atlas(self):
        if self.loaded is None:
            raise ValueError("open an atlas first")
        return self.loaded

    def openAtlas(self, p, onItem=None):
        """Load ``p.atlasPath`` (replacing the atlas open before), chart its volumes and show it."""
        ensure_dependencies(need_torch=False)
        folder = self._folder(p.atlasPath, "choose an atlas folder (the --out folder of 'infanite atlas')")
        self.close()
        self.loaded = load_atlas(slicer.mrmlScene, folder, name=folder.name or "atlas", on_item=onItem)
        try:
            self.plot = TissueVolumePlot(slicer.mrmlScene, self.loaded)
        except Exception:
            self.close()
            raise
        self.addObserver(self.loaded.browser, vtk.vtkCommand.ModifiedEvent, self.onBrowserModified)
        self.showInViews(p)
        gas = self.loaded.gas
        p.status = f"{folder}: {len(gas)} GA(s), {gas[0]:g}-{gas[-1]:g} weeks"
        return self.loaded

    def showInViews(self, p):
        """T2w in the slice views' background, then the tissue overlay, and the volume chart in the layout."""
        loaded = self._atlas()
        slicer.util.setSliceViewerLayers(background=loaded.t2_proxy, foreground=None, label=None, fit=True)
        old = loaded.seg_proxy.GetDisplayNode()      # made at loading, before the T2w was shown: made again now
        if old is not None:                          # so the overlay blends over it (slicer-core-probe §3.3)
            slicer.mrmlScene.RemoveNode(old)
        TissueDisplay(loaded).display_node.SetVisibility(True)
        self.setOverlayOpacity(p.overlayOpacity)
        slicer.modules.plots.logic().ShowChartInLayout(self.plot.chart)

    def close(self, removeNodes=True):
        """Forget the open atlas; remove its nodes unless ``removeNodes`` is False (the scene is closing)."""
        self.removeObservers()
        if removeNodes and self.plot is not None:
            self.plot.remove()
        if removeNodes and self.loaded is not None:
            self.loaded.remove()
        self.loaded = self.plot = None

    def onBrowserModified(self, caller=None, event=None):
        """Move the chart's current-GA marker to the GA the browser shows."""
        ga = self.loaded.current_ga if self.loaded is not None else None
        if self.plot is not None and ga is not None and ga != self.plot.marker_ga:
            self.plot.update_marker(ga)

    def selectGa(self, ga):
        """Show the GA nearest to ``ga`` (weeks); returns it."""
        shown = self._atlas().select(ga)
        self.onBrowserModified()
        return shown

    def setOverlayOpacity(self, opacity):
        if self.loaded is not None:
            TissueDisplay(self.loaded).display_node.SetOpacity(float(opacity))

    def setAllTissuesVisible(self, visible):
        TissueDisplay(self._atlas()).set_all_visible(visible)

    def _start(self, command, pending, onProgress, onFinished):
        self.pending = pending
        return self.startProcess(command, onProgress, onFinished)

    def generate(self, p, onProgress=None, onFinished=None):
        """``infanite atlas`` from ``p.runPath`` at ``p.gaStart``..``p.gaStop`` (weeks); :meth:`finish` opens it."""
        ensure_dependencies(need_torch=True)
        run = self._folder(p.runPath, "choose the run folder of a finished training")
        out = self._folder(p.atlasPath, "choose the atlas folder to write")
        command = atlas_range_command(run, p.gaStart, p.gaStop, p.gaStep, out, p.spacingMm, p.device)
        p.status = f"generating GA {p.gaStart:g}-{p.gaStop:g} weeks…"
        return self._start(command, ("atlas", out), onProgress, onFinished)

    def generateExactGa(self, p, onProgress=None, onFinished=None):
        """``infanite atlas --ga p.exactGa`` on the open atlas's grid; :meth:`finish` adds and shows it."""
        ensure_dependencies(need_torch=True)
        run, spacing, out = exact_ga_target(self._atlas(), p.runPath, p.spacingMm)
        ga = round(p.exactGa, 1)
        command = exact_ga_command(run, ga, out, spacing_mm=spacing, device=p.device)
        p.status = f"generating GA {ga:g} weeks…"
        return self._start(command, ("exact", out, ga), onProgress, onFinished)

    def finish(self, p, returncode, cancelled, lines=()):
        """After the background process: open the generated atlas or add the generated GA.  True when the open
        atlas changed; ``RuntimeError`` with the last output lines when the process failed."""
        pending, self.pending = self.pending, None
        if pending is None:
            return False
        if cancelled:
            p.status = "cancelled"
            return False
        if returncode != 0:
            p.status = "failed"
            raise RuntimeError(f"'infanite atlas' failed (exit status {returncode}):\n" + "\n".join(list(lines)[-10:]))
        if pending[0] == "atlas":
            p.atlasPath = pending[1]
            self.openAtlas(p)
        else:
            self.addExactGa(p, pending[1], pending[2])
        return True

    def addExactGa(self, p, folder, ga):
        """Insert the GA ``infanite atlas`` wrote into ``folder``, show it and update the chart."""
        ga = add_generated_ga(self._atlas(), folder, ga, select=True)
        self.plot.update()
        self.plot.update_marker()
        p.status = f"GA {ga:g} weeks added from {folder}"
        return ga

    def exportPaths(self, p):
        """The files :meth:`export` writes for the GA shown."""
        out = self._folder(p.exportPath, "choose an export folder")
        return export_paths(out, p.exportName or "atlas", self._atlas().current_ga, p.exportSegNrrd)

    def export(self, p, overwrite=False):
        """Write the GA shown (NIfTI T2w and labels, .seg.nrrd); FileExistsError for a file there unless overwrite."""
        out = self.exportPaths(p)["T2w"].parent
        paths = export_current(self.loaded, out, p.exportName or "atlas", p.exportSegNrrd, overwrite=overwrite)
        p.status = f"exported {', '.join(path.name for path in paths.values())} to {p.exportPath}"
        return paths


class INFANiTEAtlasTest(ScriptedLoadableModuleTest):
    """A tiny atlas written with the core writers (no model): open, browse two GAs, add a GA, export."""

    def setUp(self):
        ensure_dependencies(need_torch=False)
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_open_browse_export()

    def test_open_browse_export(self):
        import numpy as np
        from infanite.io.layout import atlas_filenames
        from infanite.io.images import load_labels, load_nifti

        work = pathlib.Path(slicer.util.tempDirectory())
        logic = INFANiTEAtlasLogic()
        p = logic.getParameterNode()
        p.atlasPath = folder = write_sample_atlas(work / "atlas", (24.0, 28.0))
        p.exportPath = work / "export"
        loaded = logic.openAtlas(p)
        self.assertEqual(loaded.gas, [24.0, 28.0])
        self.assertEqual(loaded.seg_proxy.GetSegmentation().GetNumberOfSegments(), len(loaded.label_table.labels))
        counts = []
        for ga in (28.0, 24.0):                              # proxies show each GA's files, marker follows
            self.assertEqual((logic.selectGa(ga), logic.plot.marker_ga), (ga, ga))
            files = {kind: folder / name for kind, name in atlas_filenames(ga).items()}
            np.testing.assert_allclose(slicer.util.arrayFromVolume(loaded.t2_proxy),
                                       load_nifti(files["T2w"]).array.transpose(2, 1, 0), atol=1e-6)
            labelmap = labels_on_t2_grid(loaded)         # the shown segmentation as label values
            counts.append(np.count_nonzero(slicer.util.arrayFromVolume(labelmap)))
            np.testing.assert_array_equal(slicer.util.arrayFromVolume(labelmap),
                                          load_labels(files["dseg"]).array.transpose(2, 1, 0))
            slicer.mrmlScene.RemoveNode(labelmap)
        self.assertGreater(counts[0], counts[1])
        logic.addExactGa(p, write_sample_atlas(work / "exact", (26.0,)), 26.0)   # what 'Generate exact GA' adds
        self.assertEqual((loaded.gas, list(logic.plot.column("GA")), loaded.current_ga, logic.plot.marker_ga),
                         ([24.0, 26.0, 28.0], [24.0, 26.0, 28.0], 26.0, 26.0))
        paths = logic.export(p)
        self.assertTrue(all(path.is_file() for path in paths.values()), paths)
        np.testing.assert_array_equal(load_labels(paths["dseg"]).array,
                                      load_labels(work / "exact" / atlas_filenames(26.0)["dseg"]).array)
        with self.assertRaises(FileExistsError):
            logic.export(p)
        logic.export(p, overwrite=True)
        logic.close()
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode"), 0)
        self.delayDisplay("INFANiTEAtlas test passed")
