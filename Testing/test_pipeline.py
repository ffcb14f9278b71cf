"""``infanite run`` end to end on a tiny phantom cohort: every stage, the report, and resuming."""
from __future__ import annotations

import json

import pytest

from infanite.cli.main import main
from infanite.inr.config import default_overrides
from infanite.pipeline.run import default_atlas_weeks, run_pipeline
from infanite.registration.register import RegisterOptions
from infanite.registration.stack import RegistrationSettings

TINY = ["inr_decoder.hidden_size=64", "inr_decoder.num_hidden_layers=3", "inr_decoder.modulated_layers=[1,3]",
        "inr_decoder.latent_dim=[16,3,3,3]", "n_samples=2000", "max_steps=40", "checkpoint_every=20",
        "inr_decoder.tf_dim=0", "optimizer.lr_inr=1e-3", "optimizer.lr_latent=1e-2"]


def test_default_atlas_weeks_and_device_sizing():
    assert default_atlas_weeks([27.2, None, 31.9]) == [28.0, 29.0, 30.0, 31.0]
    assert default_atlas_weeks([27.2, 27.6]) == [27.0]
    with pytest.raises(ValueError, match="--ga"):
        default_atlas_weeks([None])
    assert default_overrides("cuda") == [] and "inr_decoder.hidden_size=256" in default_overrides("cpu")
    assert "model=template" in default_overrides("cpu", template=True)
    assert "data.slice_motion=true" in default_overrides("cpu", template=True)          # measured best with it
    assert not any("tv_weight" in o for o in default_overrides("cpu", template=True))  # the ceiling does it
    assert "data.slice_motion=true" not in default_overrides("cpu")
    # the user's reference data term on top of the defaults turns the slice motions off, unless asked for
    from infanite.inr.config import defaults_then
    from infanite.inr.config_loading import load_train_config

    template = default_overrides("cpu", template=True)
    assert "data.halo_intensity=measured" in template                                  # measured best with it
    assert not any("halo_intensity" in o for o in default_overrides("cpu"))          # the paper's model: zero
    reference = load_train_config(None, defaults_then(template, ["data.term=reference"])).data
    assert reference.slice_motion is False and reference.halo_intensity == "zero"
    exact = load_train_config(None, defaults_then(template, [])).data
    assert exact.slice_motion is True and exact.halo_intensity == "measured"
    with pytest.raises(ValueError, match="data.slice_motion"):
        load_train_config(None, defaults_then(template, ["data.term=reference", "data.slice_motion=true"]))
    with pytest.raises(ValueError, match="data.halo_intensity"):
        load_train_config(None, defaults_then(template, ["data.term=reference", "data.halo_intensity=measured"]))
    assert exact.stack_motion is True and reference.stack_motion is False               # measured best with it
    # the paper's model on top of the defaults turns the (template-only) stack motions off, unless asked for
    paper = load_train_config(None, defaults_then(template, ["model=infanite"]))
    assert paper.model == "infanite" and paper.data.stack_motion is False and paper.data.slice_motion is True
    with pytest.raises(ValueError, match="data.stack_motion"):
        load_train_config(None, defaults_then(template, ["model=infanite", "data.stack_motion=true"]))
    # the (centred) per-fetus appearance: on in the defaults, off under another model or encoding unless asked for
    assert load_train_config(None, defaults_then(template, [])).template.appearance is True
    assert paper.template.appearance is False
    # the template model's step budget (its steps are cheaper), the paper's model keeps its own unless asked for
    assert load_train_config(None, defaults_then(template, [])).max_steps == 6000
    assert paper.max_steps == 4000 == load_train_config(None, default_overrides("cpu")).max_steps
    assert load_train_config(None, defaults_then(template, ["model=infanite", "max_steps=5000"])).max_steps == 5000
    grid = load_train_config(None, defaults_then(template, ["template.encoding=grid"]))
    assert grid.template.encoding == "grid" and grid.template.appearance is False and grid.data.stack_motion is True
    with pytest.raises(ValueError, match="template.appearance"):
        load_train_config(None, defaults_then(template, ["template.encoding=grid", "template.appearance=true"]))
    # the user's own halo target wins over the default
    assert load_train_config(None, defaults_then(template, ["data.halo_intensity=none"])).data.halo_intensity == "none"
    assert "model=template" not in default_overrides("cpu") and default_overrides("cuda", template=True) == []
    assert default_overrides("cpu", template=True, n_fetuses=40, ga_span_weeks=16.5)[-1] == "template.ga_latents=12"
    assert not any("ga_latents" in o for o in default_overrides("cpu", n_fetuses=40, ga_span_weeks=16.5))


def test_the_template_gets_about_one_ga_node_per_three_fetuses():
    from infanite.inr.config import template_ga_nodes

    # the two measured cohorts (12 and 40 fetuses over GA 21-38), and one between them
    assert (template_ga_nodes(12, 16.5), template_ga_nodes(40, 16.5), template_ga_nodes(24, 16.0)) == (4, 12, 7)
    assert template_ga_nodes(40, 2.0) == 3               # at most one node per week of the span (plus one)
    assert template_ga_nodes(3, 6.0) == template_ga_nodes(0, 0.0) == 2          # never fewer than two


def test_the_cpu_defaults_take_the_template_model_only_where_the_cohort_supports_it(tmp_path, capsys):
    from types import SimpleNamespace as Row

    from infanite.inr.build import template_unsupported
    from infanite.pipeline.run import cpu_template, sized_defaults

    def rows(ages, subjects, ids=None):
        ids = ids or [f"s{i}" for i in range(len(ages))]
        return [Row(scan_age=a, subject=s, subject_id=i) for a, s, i in zip(ages, subjects, ids)]

    assert template_unsupported(rows([27.0, 29.0, 29.0], ["a", "b", "b"])) is None
    assert template_unsupported(rows([27.0, 29.0], ["a", "b"])) is None          # one stack per fetus, named
    assert "span less than half a week" in template_unsupported(rows([28.0, 28.2], ["a", "b"]))
    assert "span less than half a week" in template_unsupported(rows([None, None], ["a", "b"]))
    assert "not grouped into fetuses" in template_unsupported(rows([27.0, 29.0], ["x", "y"], ["x", "y"]))
    # the real phantom cohort (GA 27.4 / 28.8, two fetuses of two stacks) and the six MIAL stacks of one GA
    from infanite.simulation.stacks import tiny_phantom_cohort

    cohort = tiny_phantom_cohort(tmp_path / "ph")
    assert cpu_template(cohort["manifest"], "cpu") is True and not cpu_template(cohort["manifest"], "cuda")
    sized = sized_defaults(cohort["manifest"], "cpu")            # 2 fetuses, GA 27.4 and 28.8: the fewest nodes
    assert "model=template" in sized and sized[-1] == "template.ga_latents=2"
    assert sized_defaults(cohort["manifest"], "cuda") == []
    lines = cohort["manifest"].read_text().splitlines()
    age = lines[0].split("\t").index("scan_age")
    one_ga = cohort["manifest"].parent / "one_ga.tsv"          # beside it: relative paths stay valid
    one_ga.write_text("\n".join([lines[0]] + ["\t".join("28.0" if i == age else v for i, v in
                                                          enumerate(line.split("\t"))) for line in lines[1:]]) + "\n")
    capsys.readouterr()
    assert cpu_template(one_ga, "cpu") is False
    assert not any("template" in o for o in sized_defaults(one_ga, "cpu", say=False))
    assert "the paper's model (model: infanite) is trained: the stacks' known GAs span less than half a week" in \
        capsys.readouterr().err


def test_run_every_stage_then_resume(phantom_registered, tmp_path):
    cohort = phantom_registered["root"] / "sim" / "cohort.tsv"
    templates = phantom_registered["templates"]
    out = tmp_path / "out"
    options = RegisterOptions(settings=RegistrationSettings(finalists=2))
    result = run_pipeline(cohort, templates, out, overrides=TINY, ga_weeks=[28.0], atlas_spacing_mm=3.0,
                          reference=templates, register_options=options)
    assert not result["registration"]["failed"] and result["train"]["steps"] == 40
    check_report_against_the_run(out)
    assert (out / "atlas" / "atlas_ga-28.0_dseg.nii.gz").is_file()
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert metrics                                                     # evaluated against the templates
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {"register", "train", "atlas", "evaluate"}
    # second call: nothing is redone
    before = (out / "checkpoint.pt").stat().st_mtime_ns
    again = run_pipeline(cohort, templates, out, overrides=TINY, ga_weeks=[28.0], atlas_spacing_mm=3.0,
                         register_options=options)
    assert sorted(again["registration"]["skipped"]) == sorted(result["registration"]["done"])
    assert again["train"]["steps"] == 40 and (out / "checkpoint.pt").stat().st_mtime_ns == before
    assert again["atlas"]["generated"] == []
    # OUT is a valid --run for 'infanite atlas'
    assert main(["atlas", "--run", str(out), "--ga", "27.5", "--spacing", "4", "--out", str(tmp_path / "a")]) == 0
    # the report's header names the atlas's GA kernels as its manifest records them
    import html

    from infanite.pipeline.report import write_report

    path = out / "atlas" / "atlas_manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["identity"]["appearance_sigma_weeks"] == 0.5            # the CPU defaults: template, offsets
    assert manifest["identity"]["appearance_adaptive"] is True               # widened where fetuses are sparse
    assert "widened where the fetuses are sparse" in html.unescape(write_report(out).read_text())
    manifest["identity"]["appearance_adaptive"] = False
    for width, words in ((None, "fetuses' appearance offsets over σ 0.5 weeks"),
                         (0.0, "the template alone (no appearance offsets)"), ("drop", "")):
        if width == "drop":                                                  # a run without offsets: no words
            del manifest["identity"]["appearance_sigma_weeks"]
        elif width is not None:
            manifest["identity"]["appearance_sigma_weeks"] = width
        path.write_text(json.dumps(manifest))
        text = html.unescape(write_report(out).read_text())
        assert "fetuses' positions over σ 0.25 weeks" in text and words in text
        assert ("appearance offsets" in text) == bool(words)


def check_report_against_the_run(out):
    """report.html says what the run's files say: GAs, support, warnings, volumes, metrics, QC, header."""
    import html as html_lib
    import re

    report = (out / "report.html").read_text()
    text = " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", report)).split())
    manifest = json.loads((out / "atlas" / "atlas_manifest.json").read_text())
    assert f"Atlas: {len(manifest['ga'])} gestational ages" in text
    for key, entry in manifest["ga"].items():
        assert f"{float(key):.1f}" in text and f"{entry['ess']:.2f}" in text
        for warning in entry["warnings"]:
            assert warning in text
    assert "weak support" in text                     # the phantom's 2 fetuses: marked in the GA table too
    # self-contained: every image is embedded, none is a file link
    sources = re.findall(r'<img src="([^"]*)"', report)
    qc = sorted((out / "registration" / "qc").glob("*.png"))
    # montage, growth chart, atlas beside the reference (the run was evaluated against one), loss, QC thumbnails
    assert len(sources) == 4 + len(qc) and all(src.startswith("data:image/png;base64,") for src in sources)
    assert (out / "evaluation" / "atlas_vs_reference.png").is_file() and "The atlas (odd rows)" in text
    transforms = json.loads((out / "registration" / "transforms.json").read_text())
    for path in qc:
        assert f"{path.stem}: NMI {transforms['qc'][path.stem]['nmi']:.2f}" in text
    lines = (out / "atlas" / "volumes.tsv").read_text().splitlines()
    header, first = lines[0].split("\t"), lines[1].split("\t")
    assert f"{header[1]} (mL)" in text and f"{float(first[1]):.2f}" in text
    assert "TBV: total brain volume" in text
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert f"{metrics['per_ga'][0]['dice']['mean']:.2f}" in text
    info = json.loads((out / "run_info.json").read_text())
    assert f"{info['model']['parameters']:,} parameters" in text and info["version"] in text
    assert "Stacks 4 (4 with a tissue segmentation" in text and "Fetuses 2" in text
    assert "Run times" in text and "radiological" in text


def test_run_refuses_a_bad_config_before_any_work(phantom_registered, tmp_path, capsys):
    cohort = phantom_registered["root"] / "sim" / "cohort.tsv"
    code = main(["run", "--manifest", str(cohort), "--templates", str(phantom_registered["templates"]),
                 "--out", str(tmp_path / "out"), "--set", "inr_decoder.hidden_sise=64"])
    assert code == 2 and "hidden_sise" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    code = main(["run", "--manifest", str(cohort), "--templates", str(phantom_registered["templates"]),
                 "--out", str(tmp_path / "out"), "--position-sigma", "-1"])
    assert code == 2 and "--position-sigma must be a number of weeks >= 0" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    code = main(["run", "--manifest", str(cohort), "--templates", str(phantom_registered["templates"]),
                 "--out", str(tmp_path / "out"), "--appearance-sigma", "-1"])
    assert code == 2 and "--appearance-sigma must be a number of weeks >= 0" in capsys.readouterr().err
    code = main(["run", "--manifest", str(cohort), "--templates", str(phantom_registered["templates"]),
                 "--out", str(tmp_path / "out"), "--set", "model=infanite", "--appearance-sigma", "0.5"])
    assert code == 2 and "--appearance-sigma sets the GA kernel" in capsys.readouterr().err
    code = main(["run", "--manifest", str(cohort), "--templates", str(phantom_registered["templates"]),
                 "--out", str(tmp_path / "out"), "--set", "model=infanite", "--appearance-fixed"])
    assert code == 2 and "--appearance-fixed keeps the GA kernel" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
