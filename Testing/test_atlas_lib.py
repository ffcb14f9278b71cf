"""INFANiTEAtlasLib on real MRML (slicer-core): atlas folder → GA sequences in one browser, tissue display,
volume table and chart with normative bands, exact-GA insertion, export, and bad folders.

The atlas folder is written directly with the core writers, in the layout and formats of ``infanite atlas``
(file names from :func:`infanite.atlas.generate.atlas_filenames`, ``volumes.tsv`` from the same volume functions and
writer, the manifest in the same format): 3 GAs on an oblique 24×28×20 grid at 1.6 mm with a non-zero origin,
with tissue shapes that grow with GA.  One test generates a GA with the real command line from an untrained
tiny run (needs torch).
"""
from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from infanite.cli.main import build_parser
from infanite.atlas.labels import label_abbrevs
from infanite.atlas.outputs import write_volumes
from infanite.io.layout import atlas_filenames, ATLAS_MANIFEST, ATLAS_MANIFEST_FORMAT, GROWTH, MONTAGE, VOLUMES
from infanite.geometry import rotation_matrix
from infanite.io.atomic import atomic_write_text
from infanite.io.images import Volume, save_nifti
from infanite.labels import default_label_table
from infanite.reference.volumes import label_volumes_ml, measures_from_tissues
from infanite.reference.normative import MEASURE_LABELS, ren2022

pytestmark = pytest.mark.slicer

SHAPE = (24, 28, 20)
SPACING_MM = 1.6
GAS = (24.0, 26.5, 30.0)
LABELS = list(range(1, 9))
T2_OF_LABEL = np.array([0.0, 0.55, 1.0, 0.45, 0.95, 0.3, 0.4, 0.5, 0.6], dtype=np.float32)


def oblique_affine() -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation_matrix(np.array([12.0, -20.0, 30.0])) @ np.diag([SPACING_MM] * 3)
    m[:3, 3] = (-18.5, 22.0, -9.75)
    return m


AFFINE = oblique_affine()
VOXEL_MM3 = SPACING_MM ** 3


def tissue_labels(ga: float, shape=SHAPE) -> np.ndarray:
    """Nested ellipsoids (eCSF ⊃ cGM ⊃ WM ⊃ ventricles) growing with GA, plus deep GM, CC, cerebellum and
    brainstem: every label present, different voxels at every GA."""
    grow = 0.6 + 0.4 * (ga - 24.0) / 6.0
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    centre = (np.asarray(shape) - 1) / 2.0
    d = np.linalg.norm((ijk - centre) / (np.array([11.0, 13.0, 9.0]) * grow), axis=-1)
    lab = np.zeros(shape, np.int16)
    lab[d < 1.0] = 4
    lab[d < 0.85] = 5
    lab[d < 0.7] = 1
    lab[(d < 0.45) & (ijk[..., 0] > centre[0] + 1)] = 6
    lab[(np.abs(ijk[..., 0] - centre[0]) < 1) & (d > 0.3) & (d < 0.5)] = 8
    lab[d < 0.25] = 2
    lab[np.linalg.norm(ijk - (centre[0], 5.0, 4.0), axis=-1) < 2.5 * grow + 0.5] = 3
    lab[10:13, 8:11, 0:4] = 7
    return lab


def t2_image(labels: np.ndarray, ga: float) -> np.ndarray:
    noise = np.random.default_rng(int(ga * 10)).normal(0.0, 0.02, labels.shape)
    return np.where(labels > 0, T2_OF_LABEL[labels] + 0.01 * ga + noise, 0.0).astype(np.float32)


def write_ga(folder, ga: float, shift: int = 0) -> dict:
    """Write one GA's T2w and dseg as ``infanite atlas`` does; returns its manifest entry."""
    names = atlas_filenames(ga)
    labels = np.roll(tissue_labels(ga), shift, axis=0)
    save_nifti(Volume(t2_image(labels, ga), AFFINE), folder / names["T2w"], dtype=np.float32)
    save_nifti(Volume(labels, AFFINE), folder / names["dseg"], dtype=np.uint8)
    tissue = label_volumes_ml(labels, label_abbrevs(LABELS), VOXEL_MM3)
    return {"ga_weeks": float(f"{ga:.1f}"), "files": {"T2w": names["T2w"], "dseg": names["dseg"]},
            "complete": True, "volumes_ml": {k: round(v, 4) for k, v in {**tissue,
                                                                          **measures_from_tissues(tissue)}.items()},
            "cleaning": {"reassigned_voxels": 0, "removed_voxels": 0, "kept_raw": False}, "ess": 4.0,
            "warnings": [], "weights": {}}


def write_atlas(folder, gas=GAS) -> dict:
    """An atlas folder in the format of ``infanite atlas``: NIfTI per GA, volumes.tsv, atlas_manifest.json."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = {f"{ga:.1f}": write_ga(folder, ga) for ga in gas}
    abbrevs = label_abbrevs(LABELS)
    rows = [{"ga_weeks": e["ga_weeks"], **e["volumes_ml"]} for e in entries.values()]
    columns = list(abbrevs.values()) + [m for m in MEASURE_LABELS if m in rows[0]]
    write_volumes(folder, rows, columns)
    identity = {"checkpoint_sha256": "0" * 64, "spacing_mm": [SPACING_MM] * 3, "sigma_weeks": 0.5, "top_k": None}
    manifest = {"format": ATLAS_MANIFEST_FORMAT, "status": "complete", "identity": identity,
                "run_dir": str(folder.parent / "run"),
                "checkpoint": {"global_step": 10, "total_steps": 10, "sha256": "0" * 64},
                "spacing_mm": identity["spacing_mm"], "sigma_weeks": 0.5, "top_k": None,
                "grid": {"shape": list(SHAPE), "voxel_to_ras": AFFINE.tolist()}, "label_values": LABELS,
                "probseg_labels": LABELS, "stack_ga_range_weeks": [min(gas), max(gas)],
                "normative": ren2022().source, "ga": entries, "volumes": VOLUMES, "growth": GROWTH,
                "montage": MONTAGE}
    atomic_write_text(folder / ATLAS_MANIFEST, json.dumps(manifest, indent=1))
    return manifest


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("atlas-lib") / "atlas"
    write_atlas(folder)
    return folder


def file_array(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def file_affine(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).affine, dtype=np.float64)


def ijk_to_ras(node) -> np.ndarray:
    import vtk

    from INFANiTECommonLib.mrml import numpy_matrix

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return numpy_matrix(m)


def assert_same_affine(actual, expected, atol_mm=1e-9) -> None:
    """Equal affines (RAS mm); VTK re-composes IJKToRAS from spacing, origin and directions, so allow round-off."""
    np.testing.assert_allclose(actual, expected, atol=atol_mm, rtol=0)


def voxels(node) -> np.ndarray:
    """A volume node's voxels in nibabel (i, j, k) order."""
    import slicer.util

    return np.array(slicer.util.arrayFromVolume(node)).transpose(2, 1, 0)


def shown_labels(loaded) -> np.ndarray:
    """The shown segmentation as label values on the T2w grid (via the export's labelmap)."""
    from INFANiTEAtlasLib.export import labels_on_t2_grid
    from INFANiTECommonLib.mrml import remove_nodes

    node = labels_on_t2_grid(loaded)
    try:
        assert_same_affine(ijk_to_ras(node), ijk_to_ras(loaded.t2_proxy))
        return voxels(node)
    finally:
        remove_nodes(loaded.scene, [node])


def count(scene, cls: str) -> int:
    return scene.GetNumberOfNodesByClass(cls)


# ------------------------------------------------------------------------------------------------ loading

def test_sequences_are_synchronised_in_one_browser_with_a_numeric_ga_index(mrml, atlas_dir):
    from INFANiTEAtlasLib import load_atlas

    scene = mrml["scene"]
    progress = []
    loaded = load_atlas(scene, atlas_dir, on_item=lambda done, total: progress.append((done, total)))
    assert progress == [(1, 3), (2, 3), (3, 3)]
    for seq in (loaded.t2_sequence, loaded.seg_sequence):
        assert seq.GetIndexName() == "gestational age" and seq.GetIndexUnit() == "weeks"
        assert seq.GetIndexType() == seq.NumericIndex
        assert [seq.GetNthIndexValue(i) for i in range(seq.GetNumberOfDataNodes())] == ["24", "26.5", "30"]
    assert loaded.browser.GetMasterSequenceNode() is loaded.t2_sequence
    assert loaded.browser.IsSynchronizedSequenceNode(loaded.seg_sequence.GetID())
    assert count(scene, "vtkMRMLSequenceBrowserNode") == 1
    assert loaded.t2_proxy.IsA("vtkMRMLScalarVolumeNode") and loaded.seg_proxy.IsA("vtkMRMLSegmentationNode")
    assert loaded.gas == list(GAS) and loaded.current_ga == 24.0
    # no temporary item node is left in the scene: the only volume and segmentation are the proxies
    assert count(scene, "vtkMRMLScalarVolumeNode") == 1 and count(scene, "vtkMRMLSegmentationNode") == 1
    assert count(scene, "vtkMRMLLabelMapVolumeNode") == 0
    assert sorted(loaded.files) == list(GAS) and loaded.manifest["format"] == ATLAS_MANIFEST_FORMAT


def test_selecting_a_ga_shows_its_voxels_labels_and_file_geometry(mrml, atlas_dir):
    import slicer

    from INFANiTEAtlasLib import load_atlas, select_ga
    from INFANiTECommonLib.mrml import numpy_matrix

    loaded = load_atlas(mrml["scene"], atlas_dir)
    seen = []
    for ga in (30.0, 24.0, 26.5):
        assert select_ga(loaded.browser, ga) == ga and loaded.current_ga == ga
        names = atlas_filenames(ga)
        t2_file, dseg_file = atlas_dir / names["T2w"], atlas_dir / names["dseg"]
        assert_same_affine(ijk_to_ras(loaded.t2_proxy), file_affine(t2_file))
        assert np.array_equal(voxels(loaded.t2_proxy), file_array(t2_file))
        labels = shown_labels(loaded)
        assert np.array_equal(labels, file_array(dseg_file))
        # the segmentation's own labelmap lies on the dseg grid
        image = slicer.vtkOrientedImageData()
        loaded.seg_proxy.GetBinaryLabelmapRepresentation("label_1", image)
        import vtk

        m = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(m)
        assert_same_affine(numpy_matrix(m), file_affine(dseg_file))
        assert image.GetExtent() == (0, SHAPE[0] - 1, 0, SHAPE[1] - 1, 0, SHAPE[2] - 1)
        seen.append(labels)
    assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[1], seen[2])
    # nearest GA, ties and far values
    assert select_ga(loaded.browser, 27.9) == 26.5 and loaded.current_ga == 26.5
    assert select_ga(loaded.browser, 28.5) == 30.0
    assert select_ga(loaded.browser, 100) == 30.0 and select_ga(loaded.browser, -5) == 24.0
    assert np.array_equal(voxels(loaded.t2_proxy), file_array(atlas_dir / atlas_filenames(24.0)["T2w"]))


def test_segment_names_colours_and_colour_table_follow_the_label_table(mrml, atlas_dir):
    from INFANiTEAtlasLib import load_atlas

    loaded = load_atlas(mrml["scene"], atlas_dir)
    table = default_label_table()
    segmentation = loaded.seg_proxy.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(table.labels)
    for label in table.labels:
        segment = segmentation.GetSegment(f"label_{label.value}")
        assert segment.GetName() == label.name and segment.GetLabelValue() == label.value
        assert np.allclose(segment.GetColor(), np.array(label.color) / 255.0)
        rgba = [0.0] * 4
        loaded.color_table.GetColor(label.value, rgba)
        assert loaded.color_table.GetColorName(label.value) == label.name
        assert np.allclose(rgba[:3], np.array(label.color) / 255.0)
    assert loaded.label_table.values == LABELS


def test_label_table_is_the_one_infanite_atlas_names_its_values_with(tmp_path):
    from INFANiTEAtlasLib import atlas_label_table

    assert atlas_label_table({"label_values": LABELS}).values == LABELS
    extended = atlas_label_table({"label_values": LABELS + [11]})
    assert extended.values == LABELS + [11]
    assert extended.labels[-1].abbrev == label_abbrevs([11])[11] == "label11"   # atlas.py's column name
    custom = tmp_path / "labels.tsv"
    custom.write_text("value\tname\tabbrev\tcolor\n1\tbrain\tB\t#102030\n")
    assert [lab.name for lab in atlas_label_table({"label_values": [1]}, custom).labels] == ["brain"]
    manifest = {"label_values": [1], "label_table": "labels.tsv"}
    assert atlas_label_table(manifest, folder=tmp_path).labels[0].color == (16, 32, 48)


def test_tissue_visibility_and_opacity_survive_ga_changes(mrml, atlas_dir):
    from INFANiTEAtlasLib import TissueDisplay, load_atlas

    loaded = load_atlas(mrml["scene"], atlas_dir)
    display = TissueDisplay(loaded)
    display.set_visible("cGM", False)
    display.set_opacity(1, 0.3)
    display.set_opacity("extra-axial CSF", 0.7)
    for ga in (26.5, 30.0):
        loaded.select(ga)
        node = loaded.seg_proxy.GetDisplayNode()
        assert not node.GetSegmentVisibility("label_5")
        assert display.is_visible("WM") and not display.is_visible(5)
        assert display.opacity("WM") == pytest.approx(0.3)
        assert node.GetSegmentOpacity3D("label_1") == pytest.approx(0.3)
        assert display.opacity("eCSF") == pytest.approx(0.7)
    display.show_only(["WM", "vent"])
    assert [display.is_visible(v) for v in LABELS] == [v in (1, 2) for v in LABELS]
    display.set_all_visible(True)
    assert all(display.is_visible(v) for v in LABELS)
    with pytest.raises(ValueError, match="unknown tissue 'skull'"):
        display.set_visible("skull", False)
    with pytest.raises(ValueError, match="opacity"):
        display.set_opacity("WM", 1.5)


# ------------------------------------------------------------------------------------------------ volumes

def tsv_rows(path) -> dict:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return {float(r.split("\t")[0]): dict(zip(header, map(float, r.split("\t")))) for r in lines[1:]}


def test_volume_table_equals_volumes_tsv_and_voxel_counts_with_normative_bands(mrml, atlas_dir):
    from INFANiTEAtlasLib import TissueVolumePlot, load_atlas, normative_column

    scene = mrml["scene"]
    loaded = load_atlas(scene, atlas_dir)
    plot = TissueVolumePlot(scene, loaded)
    assert list(plot.column("GA")) == list(GAS)
    written = tsv_rows(atlas_dir / VOLUMES)
    table = default_label_table()
    for row, ga in enumerate(GAS):
        labels = file_array(atlas_dir / atlas_filenames(ga)["dseg"])
        assert plot.rows[row]["source"] == "volumes.tsv"
        for label in table.labels:
            value = plot.column(label.abbrev)[row]
            assert value == written[ga][label.abbrev]
            assert value == pytest.approx(np.count_nonzero(labels == label.value) * VOXEL_MM3 / 1000.0, abs=6e-4)
    assert plot.measures == list(MEASURE_LABELS)
    norm = ren2022()
    for m in MEASURE_LABELS:
        assert np.array_equal(plot.column(m), [written[ga][m] for ga in GAS])
        mean = np.array([norm.mean(m, ga) for ga in GAS])
        sd = np.array([norm.sd(m, ga) for ga in GAS])
        assert np.allclose(plot.column(normative_column(m, "mean")), mean, rtol=1e-12)
        for band, k in (("-1SD", -1), ("+1SD", 1), ("-2SD", -2), ("+2SD", 2)):
            assert np.allclose(plot.column(normative_column(m, band)), mean + k * sd, rtol=1e-12)
    assert plot.table.GetColumnUnitLabel("WM") == "mL" and plot.table.GetColumnUnitLabel("GA") == "weeks"
    # chart: one series per tissue in its label colour, normative lines dashed
    chart_ids = {plot.chart.GetNthPlotSeriesNodeID(i) for i in range(plot.chart.GetNumberOfPlotSeriesNodes())}
    for label in table.labels:
        series = plot.series[label.abbrev]
        assert series.GetID() in chart_ids and series.GetYColumnName() == label.abbrev
        assert series.GetTableNode() is plot.table and series.GetXColumnName() == "GA"
        assert np.allclose(series.GetColor(), np.array(label.color) / 255.0)
    for m in MEASURE_LABELS:
        for band, _ in (("mean", 0), ("+2SD", 2)):
            series = plot.series[normative_column(m, band)]
            assert series.GetLineStyle() == series.LineStyleDash and series.GetID() in chart_ids
    plot.show(["cGM", "GMV"])
    shown = {scene.GetNodeByID(plot.chart.GetNthPlotSeriesNodeID(i)).GetYColumnName()
             for i in range(plot.chart.GetNumberOfPlotSeriesNodes())}
    assert shown == {"cGM", "GMV", "volume (mL)"} | {normative_column("GMV", b) for b, _ in
                                                       (("mean", 0), ("-1SD", 0), ("+1SD", 0), ("-2SD", 0),
                                                        ("+2SD", 0))}


def test_volumes_are_counted_from_the_dseg_without_volumes_tsv(mrml, atlas_dir, tmp_path):
    from INFANiTEAtlasLib import TissueVolumePlot, load_atlas

    folder = tmp_path / "no-tsv"
    shutil.copytree(atlas_dir, folder)
    (folder / VOLUMES).unlink()
    loaded = load_atlas(mrml["scene"], folder)
    plot = TissueVolumePlot(mrml["scene"], loaded)
    for row, ga in enumerate(GAS):
        dseg = folder / atlas_filenames(ga)["dseg"]
        labels = file_array(dseg)
        voxel_ml = abs(np.linalg.det(file_affine(dseg)[:3, :3])) / 1000.0     # of the stored (float32) affine
        assert plot.rows[row]["source"] == "dseg"
        for value in LABELS:
            abbrev = default_label_table().labels[value - 1].abbrev
            assert plot.column(abbrev)[row] == pytest.approx(np.count_nonzero(labels == value) * voxel_ml,
                                                             rel=1e-12)
        assert plot.column("VV")[row] == pytest.approx(plot.column("vent")[row], rel=1e-12)


def test_current_ga_marker_follows_the_browser(mrml, atlas_dir):
    from INFANiTEAtlasLib import TissueVolumePlot, load_atlas

    loaded = load_atlas(mrml["scene"], atlas_dir)
    plot = TissueVolumePlot(mrml["scene"], loaded)
    assert plot.marker_ga == 24.0
    loaded.select(30.0)
    assert plot.update_marker() == 30.0 and plot.marker_ga == 30.0
    assert plot.update_marker(26.5) == 26.5
    x = plot._column(plot.marker_table, "GA")
    y = plot._column(plot.marker_table, "volume (mL)")
    assert list(x) == [26.5, 26.5] and y[0] == 0.0
    assert y[1] > max(plot.column("ICV").max(), plot.column("ICV normative +2SD").max())
    assert plot.marker.GetTableNode() is plot.marker_table


# ------------------------------------------------------------------------------------------------ exact GA

def parse_atlas_args(argv):
    return build_parser().parse_args(["atlas", *argv])


def _refused(command, capsys) -> str:
    """Run an ``infanite atlas`` command line in this process; it must exit 2; returns what it printed on stderr."""
    from infanite.cli.main import main

    assert command[1:3] == ["-m", "infanite"]
    assert main(command[3:]) == 2
    return capsys.readouterr().err


def test_exact_ga_command_is_a_valid_infanite_atlas_command_line(tmp_path, capsys):
    from INFANiTEAtlasLib import exact_ga_command

    args = exact_ga_command(tmp_path / "run", 27.25, tmp_path / "out", spacing_mm=1.6, device="cuda:0",
                            python="/opt/python")
    assert args[:4] == ["/opt/python", "-m", "infanite", "atlas"]
    parsed = parse_atlas_args(args[4:])
    assert parsed.run == str(tmp_path / "run") and parsed.out == str(tmp_path / "out")
    assert parsed.ga == [27.2] or parsed.ga == [27.3]      # rounded to the 0.1 week of atlas file names
    assert parsed.spacing == 1.6 and parsed.device == "cuda:0" and parsed.progress_json == "-"
    # bad values are refused by 'infanite atlas' itself, before any work (the module shows its one-line reason)
    assert "outside" in _refused(exact_ga_command(tmp_path / "run", 70, tmp_path / "out"), capsys)
    assert "spacing" in _refused(exact_ga_command(tmp_path / "run", 28, tmp_path / "out", spacing_mm=0), capsys)
    assert not (tmp_path / "out").exists()


def test_generated_ga_is_inserted_in_numeric_order_and_replaces_an_existing_one(mrml, atlas_dir, tmp_path):
    from INFANiTEAtlasLib import TissueVolumePlot, add_generated_ga, load_atlas

    loaded = load_atlas(mrml["scene"], atlas_dir)
    plot = TissueVolumePlot(mrml["scene"], loaded)
    loaded.select(26.5)
    generated = tmp_path / "generated"
    generated.mkdir()
    write_ga(generated, 28.0)
    write_ga(generated, 24.0, shift=3)                       # a regenerated 24 weeks, other voxels
    assert add_generated_ga(loaded, generated, 28.0) == 28.0
    assert loaded.gas == [24.0, 26.5, 28.0, 30.0] and loaded.current_ga == 26.5
    assert [loaded.seg_sequence.GetNthIndexValue(i) for i in range(4)] == ["24", "26.5", "28", "30"]
    assert np.array_equal(voxels(loaded.t2_proxy), file_array(atlas_dir / atlas_filenames(26.5)["T2w"]))
    assert loaded.select(28.0) == 28.0
    assert np.array_equal(voxels(loaded.t2_proxy), file_array(generated / atlas_filenames(28.0)["T2w"]))
    assert np.array_equal(shown_labels(loaded), file_array(generated / atlas_filenames(28.0)["dseg"]))
    assert add_generated_ga(loaded, generated, 24, select=True) == 24.0
    assert loaded.gas == [24.0, 26.5, 28.0, 30.0] and loaded.current_ga == 24.0
    assert np.array_equal(shown_labels(loaded), file_array(generated / atlas_filenames(24.0)["dseg"]))
    assert count(mrml["scene"], "vtkMRMLScalarVolumeNode") == 1
    plot.update()
    assert list(plot.column("GA")) == [24.0, 26.5, 28.0, 30.0]
    labels28 = file_array(generated / atlas_filenames(28.0)["dseg"])
    assert plot.rows[2]["source"] == "dseg"                  # no volumes.tsv in that folder: counted
    assert plot.column("WM")[2] == pytest.approx(np.count_nonzero(labels28 == 1) * VOXEL_MM3 / 1000.0)
    with pytest.raises(ValueError, match="atlas_ga-31.0_T2w.nii.gz"):
        add_generated_ga(loaded, generated, 31.0)


def test_exact_ga_generated_by_infanite_atlas_is_added(mrml, atlas_dir, tmp_path, capsys):
    """The real command line (in-process) on an untrained tiny run with the atlas's training grid."""
    torch = pytest.importorskip("torch")
    from infanite.cli.main import main
    from infanite.inr.train import build_model
    from infanite.inr.config_loading import load_train_config
    from INFANiTEAtlasLib import add_generated_ga, exact_ga_command, load_atlas

    tiny = ["inr_decoder.hidden_size=32", "inr_decoder.num_hidden_layers=2", "inr_decoder.modulated_layers=[1]",
            "inr_decoder.latent_dim=[8,3,3,3]", "inr_decoder.tf_dim=0"]
    run = tmp_path / "run"
    run.mkdir()
    config = load_train_config(None, tiny)
    corners = np.array([[i, j, k, 1.0] for i in (0, SHAPE[0] - 1) for j in (0, SHAPE[1] - 1)
                        for k in (0, SHAPE[2] - 1)]) @ AFFINE.T
    centre, half = (corners[:, :3].min(0) + corners[:, :3].max(0)) / 2, (corners[:, :3].max(0)
                                                                          - corners[:, :3].min(0)) / 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model(config, 2, 9, centre, half)
        torch.save({"model": model.state_dict(), "global_step": 1, "total_steps": 1, "stack_ids": ["a", "b"]},
                   run / "checkpoint.pt")
        config.save_yaml(run / "config.yaml")
        (run / "stacks.json").write_text(json.dumps({
            "stack_ids": ["a", "b"], "ga_weeks": [26.0, 30.0], "halo_label": 9, "label_values": LABELS,
            "grid_shape": list(SHAPE), "grid_voxel_to_ras": AFFINE.tolist(), "centre_mm": centre.tolist(),
            "half_extent_mm": half.tolist()}))
        out = tmp_path / "exact"
        args = exact_ga_command(run, 27.3, out, spacing_mm=SPACING_MM, device="cpu")
        assert main(args[3:]) == 0
    finally:
        torch.set_num_threads(threads)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert events and events[-1]["step"] == events[-1]["total"]
    loaded = load_atlas(mrml["scene"], atlas_dir)
    assert add_generated_ga(loaded, out, 27.3, select=True) == 27.3
    assert loaded.gas == [24.0, 26.5, 27.3, 30.0] and loaded.current_ga == 27.3
    t2_file = out / atlas_filenames(27.3)["T2w"]
    assert_same_affine(ijk_to_ras(loaded.t2_proxy), file_affine(t2_file))
    assert np.allclose(file_affine(t2_file), AFFINE, atol=1e-4)           # the atlas's training grid
    assert np.array_equal(voxels(loaded.t2_proxy), file_array(t2_file))
    assert np.array_equal(shown_labels(loaded), file_array(out / atlas_filenames(27.3)["dseg"]))


# ------------------------------------------------------------------------------------------------ export

def test_export_round_trips_geometry_and_labels_and_refuses_to_overwrite(mrml, atlas_dir, tmp_path):
    from INFANiTEAtlasLib import export_current, load_atlas

    loaded = load_atlas(mrml["scene"], atlas_dir)
    loaded.select(26.5)
    out = tmp_path / "export"
    paths = export_current(loaded, out, name="fetal", seg_nrrd=True)
    assert paths["T2w"] == out / "fetal_ga-26.5_T2w.nii.gz" and paths["dseg"] == out / "fetal_ga-26.5_dseg.nii.gz"
    assert paths["seg"] == out / "fetal_ga-26.5.seg.nrrd"
    source = {k: atlas_dir / v for k, v in atlas_filenames(26.5).items()}
    for kind in ("T2w", "dseg"):
        img = nib.load(str(paths[kind]))
        assert_same_affine(np.asarray(img.affine, dtype=np.float64), ijk_to_ras(loaded.t2_proxy))
        assert_same_affine(np.asarray(img.affine, dtype=np.float64), file_affine(source[kind]))
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        assert np.array_equal(np.asarray(img.dataobj), file_array(source[kind]))
    assert nib.load(str(paths["dseg"])).get_data_dtype() == np.uint8
    # .seg.nrrd: read back with Slicer's storage node
    seg = mrml["scene"].AddNewNodeByClass("vtkMRMLSegmentationNode", "reread")
    storage = mrml["scene"].AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(paths["seg"]))
    assert storage.ReadData(seg)
    names = [seg.GetSegmentation().GetNthSegment(i).GetName() for i in range(seg.GetSegmentation()
                                                                              .GetNumberOfSegments())]
    assert names == [lab.name for lab in default_label_table().labels]
    # refusal, then overwrite on request
    stamps = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    loaded.select(30.0)
    export_current(loaded, out, name="fetal")                   # another GA: other names, allowed
    loaded.select(26.5)
    with pytest.raises(FileExistsError, match="fetal_ga-26.5_T2w.nii.gz"):
        export_current(loaded, out, name="fetal")
    assert {k: p.stat().st_mtime_ns for k, p in paths.items()} == stamps
    edited = export_current(loaded, out, name="fetal", overwrite=True)
    assert np.array_equal(file_array(edited["dseg"]), file_array(source["dseg"]))


# ------------------------------------------------------------------------------------------------ bad folders

def test_bad_atlas_folders_are_refused_naming_the_file(mrml, atlas_dir, tmp_path):
    from INFANiTEAtlasLib import load_atlas

    scene = mrml["scene"]
    with pytest.raises(ValueError, match="does not exist"):
        load_atlas(scene, tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=f"{empty}: no atlas files"):
        load_atlas(scene, empty)

    def variant(name):
        folder = tmp_path / name
        shutil.copytree(atlas_dir, folder)
        return folder

    lonely = variant("lonely")                                  # no manifest, a T2w without its dseg
    (lonely / ATLAS_MANIFEST).unlink()
    (lonely / atlas_filenames(26.5)["dseg"]).unlink()
    with pytest.raises(ValueError, match="atlas_ga-26.5_T2w.nii.gz: no matching dseg"):
        load_atlas(scene, lonely)
    listed = variant("listed")                                  # the manifest names a file that is gone
    (listed / atlas_filenames(30.0)["T2w"]).unlink()
    with pytest.raises(ValueError, match="atlas_ga-30.0_T2w.nii.gz: missing"):
        load_atlas(scene, listed)
    corrupt = variant("corrupt")                                # an unreadable dseg
    (corrupt / atlas_filenames(26.5)["dseg"]).write_bytes(b"\x1f\x8b not a nifti")
    with pytest.raises(ValueError, match="atlas_ga-26.5_dseg.nii.gz"):
        load_atlas(scene, corrupt)
    moved = variant("moved")                                    # a dseg on another grid
    shifted = AFFINE.copy()
    shifted[:3, 3] += 2.0
    save_nifti(Volume(tissue_labels(24.0), shifted), moved / atlas_filenames(24.0)["dseg"], dtype=np.uint8)
    with pytest.raises(ValueError, match="atlas_ga-24.0_dseg.nii.gz: grid"):
        load_atlas(scene, moved)
    foreign = variant("foreign")                                # a label value outside the table
    labels = tissue_labels(30.0)
    labels[0, 0, 0] = 12
    save_nifti(Volume(labels, AFFINE), foreign / atlas_filenames(30.0)["dseg"], dtype=np.uint8)
    with pytest.raises(ValueError, match=r"atlas_ga-30.0_dseg.nii.gz: label values \[12\]"):
        load_atlas(scene, foreign)
    broken = variant("broken")                                  # an unreadable manifest
    (broken / ATLAS_MANIFEST).write_text("{ not json")
    with pytest.raises(ValueError, match="atlas_manifest.json: unreadable"):
        load_atlas(scene, broken)
    # nothing of the failed loads is left in the scene
    assert count(scene, "vtkMRMLSequenceNode") == 0 and count(scene, "vtkMRMLSequenceBrowserNode") == 0


# ------------------------------------------------------------------------------------------------ module helpers

def test_atlas_range_command_is_a_valid_infanite_atlas_command_line(tmp_path, capsys):
    from infanite.atlas.generate import ga_list
    from INFANiTEAtlasLib import atlas_range_command

    args = atlas_range_command(tmp_path / "run", 21, 24.5, 0.5, tmp_path / "out", spacing_mm=1.2, device="cuda",
                               python="/opt/python")
    assert args[:4] == ["/opt/python", "-m", "infanite", "atlas"]
    parsed = parse_atlas_args(args[4:])
    assert parsed.run == str(tmp_path / "run") and parsed.out == str(tmp_path / "out") and parsed.ga is None
    assert parsed.ga_range == [21.0, 24.5] and parsed.ga_step == 0.5 and parsed.spacing == 1.2
    assert parsed.device == "cuda" and parsed.progress_json == "-"
    assert ga_list(ga_range=parsed.ga_range, ga_step=parsed.ga_step) == [21.0, 21.5, 22.0, 22.5, 23.0, 23.5, 24.0,
                                                                        24.5]
    out = tmp_path / "atlas"
    assert "after STOP" in _refused(atlas_range_command(tmp_path, 30, 25, 1, out), capsys)
    assert "ga-step" in _refused(atlas_range_command(tmp_path, 25, 30, 0, out), capsys)
    assert "outside" in _refused(atlas_range_command(tmp_path, 5, 30, 1, out), capsys)
    assert "spacing" in _refused(atlas_range_command(tmp_path, 25, 30, 1, out, spacing_mm=-1), capsys)
    assert not out.exists()


def test_exact_ga_target_keeps_the_atlas_grid_and_adds_to_its_own_run_only(mrml, atlas_dir, tmp_path):
    from INFANiTEAtlasLib import exact_ga_target, load_atlas
    from INFANiTEAtlasLib.generate import EXACT_SUBFOLDER

    loaded = load_atlas(mrml["scene"], atlas_dir)
    own_run = atlas_dir.parent / "run"                          # the manifest's run_dir
    assert exact_ga_target(loaded, None, 0.8) == (own_run, SPACING_MM, atlas_dir)
    assert exact_ga_target(loaded, own_run, 0.8) == (own_run, SPACING_MM, atlas_dir)
    other = tmp_path / "other-run"
    assert exact_ga_target(loaded, other, 0.8) == (other, SPACING_MM, atlas_dir / EXACT_SUBFOLDER)
    loaded.manifest = None                                      # a folder without manifest: the given run, spacing
    assert exact_ga_target(loaded, other, 0.8) == (other, 0.8, atlas_dir / EXACT_SUBFOLDER)
    with pytest.raises(ValueError, match="run folder"):
        exact_ga_target(loaded, ".", 0.8)


def test_sample_atlas_for_the_module_self_test_loads_with_every_label(mrml, tmp_path):
    from INFANiTEAtlasLib import TissueVolumePlot, load_atlas, write_sample_atlas
    from INFANiTEAtlasLib.sample import sample_affine

    folder = write_sample_atlas(tmp_path / "sample", (24.0, 28.0))
    loaded = load_atlas(mrml["scene"], folder)
    assert loaded.gas == [24.0, 28.0] and loaded.manifest is None
    counts = []
    for ga in (24.0, 28.0):
        names = atlas_filenames(ga)
        labels = file_array(folder / names["dseg"])
        assert sorted(np.unique(labels)) == [0] + default_label_table().values
        assert_same_affine(file_affine(folder / names["T2w"]), sample_affine())
        loaded.select(ga)
        assert np.array_equal(shown_labels(loaded), labels)
        counts.append(np.count_nonzero(labels))
    assert counts[1] > counts[0]
    plot = TissueVolumePlot(mrml["scene"], loaded)
    assert plot.rows[0]["source"] == "dseg" and plot.column("WM")[1] > plot.column("WM")[0]
