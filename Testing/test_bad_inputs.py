"""What INFANiTE refuses, and what it guarantees: a corpus of bad inputs and faults run against the real command
line (``python -m infanite`` in a subprocess), each built from the phantom cohort.

Every case asserts the exit code (2: bad input, refused before any work; 1: the work failed, what was kept said),
that the one-line message names the row/field/file at fault, and that no file appeared outside the output folder
(nor inside it, for a refused command).  The README's "What INFANiTE refuses" table lists these cases.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TINY = ["inr_decoder.hidden_size=32", "inr_decoder.num_hidden_layers=2", "inr_decoder.modulated_layers=[1]",
        "inr_decoder.latent_dim=[8,3,3,3]", "n_samples=1000", "epochs.train=50", "checkpoint_every=5",
        "psf.samples_per_epoch=[2]", "optimizer.lr_inr=1e-3", "optimizer.lr_latent=1e-2"]
TORCH_ADVICE = "weights_only=False"


def sets(overrides) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def cli(*args, cwd=None, timeout=300, prelude: str = "", env=None) -> subprocess.CompletedProcess:
    """``python -m infanite ARGS`` (with ``prelude`` Python run first in the child: a fault the test injects)."""
    run_env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   OMP_NUM_THREADS="1", **(env or {}))
    code = f"{prelude}\nimport sys\nfrom infanite.cli.main import main\nsys.exit(main({[str(a) for a in args]!r}))"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd or REPO, env=run_env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The command's error line; asserts there is no traceback and no torch advice to unpickle."""
    assert "Traceback" not in result.stderr, result.stderr
    assert TORCH_ADVICE not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> dict:
    """The phantom cohort (2 fetuses × 2 stacks, GA 27–29), registered with its true poses, and a finished tiny
    run on it: ``{"root", "manifest", "templates", "truth", "registered", "run"}``."""
    from infanite.inr.config_loading import load_train_config
    from infanite.inr.train import train
    from infanite.simulation.stacks import tiny_phantom_cohort

    root = tmp_path_factory.mktemp("bad-inputs")
    cohort = tiny_phantom_cohort(root, weeks=(27, 28, 29), register=True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cohort["registered"], load_train_config(None, TINY + ["max_steps=10"]), root / "run")
    finally:
        torch.set_num_threads(before)
    return {"root": root, **cohort, "run": root / "run"}


def manifest_with(phantom, tmp_path: Path, edit) -> Path:
    """A copy of the phantom manifest (absolute paths) after ``edit(header, rows)`` on its cells."""
    lines = phantom["manifest"].read_text().splitlines()
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
    base = phantom["manifest"].parent
    for row in rows:
        for i, name in enumerate(header):
            if name in ("T2w", "Seg", "Mask") and row[i]:
                row[i] = str((base / row[i]).resolve())
    edit(header, rows)
    path = tmp_path / "cohort.tsv"
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    return path


def image_copy(phantom, tmp_path: Path, row: int, column: str, change) -> Path:
    """The manifest with row ``row``'s ``column`` image replaced by ``change(path_of_a_copy)``'s result."""
    lines = phantom["manifest"].read_text().splitlines()
    header = lines[0].split("\t")
    source = (phantom["manifest"].parent / lines[row - 1].split("\t")[header.index(column)]).resolve()
    target = tmp_path / f"bad_{column}.nii.gz"
    shutil.copy(source, target)
    change(target)

    def edit(header, rows):
        rows[row - 2][header.index(column)] = str(target)

    return manifest_with(phantom, tmp_path, edit)


# ------------------------------------------------------------------------------------------------ ids → paths

@pytest.mark.parametrize("bad_id", ["../../../escaped", "a/b", "/tmp/infanite-absolute-id", "..", "CON", "x y"])
def test_a_subject_id_that_is_not_a_plain_name_is_refused_and_nothing_is_written(phantom, tmp_path, bad_id):
    manifest = manifest_with(phantom, tmp_path, lambda h, rows: rows[0].__setitem__(h.index("subject_id"), bad_id))
    result = cli("validate", manifest)
    assert result.returncode == 2 and "row 2" in result.stderr and "subject_id" in result.stderr
    out = tmp_path / "deep" / "er" / "reg"
    before = files_under(tmp_path.parent)
    result = cli("register", "--manifest", manifest, "--templates", phantom["templates"], "--out", out,
                 "--fixed-transforms", phantom["truth"])
    assert result.returncode == 2, result.stderr
    assert "row 2" in result.stderr and "subject_id" in result.stderr
    assert not out.exists() and files_under(tmp_path.parent) == before
    assert not Path("/tmp/infanite-absolute-id_T2w.nii.gz").exists()


def test_a_subject_grouping_that_is_not_a_plain_name_is_refused(phantom, tmp_path):
    def edit(header, rows):
        if "subject" not in header:
            header.append("subject")
            for row in rows:
                row.append("")
        rows[1][header.index("subject")] = "../fetus"

    result = cli("validate", manifest_with(phantom, tmp_path, edit))
    assert result.returncode == 2 and "row 3" in result.stderr and "column subject" in result.stderr


def test_every_path_built_from_data_stays_inside_its_folder(tmp_path):
    from infanite.io.layout import stack_paths
    from infanite.io.paths import inside

    with pytest.raises(ValueError, match="subject_id"):
        stack_paths(tmp_path, "../x")
    with pytest.raises(ValueError, match="outside the output folder"):
        inside(tmp_path, "a", "..", "..", "x.nii.gz")
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(ValueError, match="outside the output folder"):
        inside(tmp_path, "link", "x.nii.gz")
    assert inside(tmp_path, "stacks", "a_T2w.nii.gz") == tmp_path / "stacks" / "a_T2w.nii.gz"


# ------------------------------------------------------------------------------------------------ manifests, images

def _gzip_cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _as_2d(path: Path) -> None:
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, 0], img.affine), str(path))


def _as_4d(path: Path) -> None:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), img.affine), str(path))


def _with_nan(path: Path) -> None:
    img = nib.load(str(path))
    data = img.get_fdata().astype(np.float32)
    data[tuple(s // 2 for s in data.shape)] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), str(path))


def _other_grid(path: Path) -> None:
    img = nib.load(str(path))
    affine = img.affine.copy()
    affine[:3, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), affine), str(path))


def _empty(path: Path) -> None:
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), str(path))


def _labels_99(path: Path) -> None:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).astype(np.int16)
    data[data > 0] = 99
    nib.save(nib.Nifti1Image(data, img.affine), str(path))


def _singular(path: Path) -> None:
    img = nib.load(str(path))
    singular = nib.Nifti1Image(np.asanyarray(img.dataobj), None)
    singular.header.set_qform(None, code=0)
    singular.header.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=1)  # a zero z column: no inverse
    nib.save(singular, str(path))


@pytest.mark.parametrize("column, change, kind", [
    ("T2w", lambda p: p.unlink(), "does not exist"),
    ("T2w", _gzip_cut, "gzip"),
    ("T2w", _as_2d, "3-D"),
    ("T2w", _as_4d, "3-D"),
    ("T2w", _with_nan, "NaN"),
    ("T2w", _singular, "singular"),
    ("Seg", _other_grid, "voxel grid differs"),
    ("Seg", _labels_99, "label values [99]"),
    ("Mask", _empty, "mask is all zero"),
])
def test_a_bad_image_is_reported_with_its_row_column_and_file(phantom, tmp_path, column, change, kind):
    manifest = image_copy(phantom, tmp_path, 3, column, change)
    result = cli("validate", manifest)
    assert result.returncode == 2, result.stderr
    line = next(line for line in result.stderr.splitlines() if kind in line)
    assert "row 3" in line and f"column {column}" in line and f"bad_{column}.nii.gz" in line


@pytest.mark.parametrize("edit, expected", [
    (lambda h, rows: rows[0].__setitem__(h.index("scan_age"), "45"), ("row 2", "scan_age", "outside")),
    (lambda h, rows: rows[1].__setitem__(h.index("scan_age"), "nan"), ("row 3", "scan_age", "finite")),
    (lambda h, rows: rows[1].__setitem__(h.index("subject_id"), rows[0][h.index("subject_id")]),
     ("row 3", "subject_id", "rows 2 and 3")),
    (lambda h, rows: rows[2].append("extra"), ("row 4", "cells")),
    (lambda h, rows: h.remove("T2w"), ("T2w", "missing")),
])
def test_a_bad_manifest_row_is_reported_by_row_and_column(phantom, tmp_path, edit, expected):
    result = cli("validate", manifest_with(phantom, tmp_path, edit))
    assert result.returncode == 2
    assert any(all(part in line for part in expected) for line in result.stderr.splitlines()), result.stderr


def test_latin1_and_comma_separated_manifests_are_named_for_what_they_are(phantom, tmp_path):
    text = phantom["manifest"].read_text()
    latin = tmp_path / "latin1.tsv"
    latin.write_bytes(text.replace("\n", "\tcafé\n", 1).encode("latin-1"))
    result = cli("validate", latin)
    assert result.returncode == 2 and "UTF-8" in result.stderr and "latin1.tsv" in result.stderr
    comma = tmp_path / "comma.tsv"
    comma.write_text(text.replace("\t", ","))
    result = cli("validate", comma)
    assert result.returncode == 2 and "comma-separated" in result.stderr


# ------------------------------------------------------------------------------------------------ configs

def test_yaml_tags_never_run_code(phantom, tmp_path):
    marker = tmp_path / "PWNED"
    config = tmp_path / "evil.yaml"
    config.write_text(f"n_samples: !!python/object/apply:os.system ['touch {marker}']\n")
    out = tmp_path / "run"
    result = cli("train", "--manifest", phantom["registered"], "--out", out, "--config", config)
    assert result.returncode == 2 and "evil.yaml" in one_line_error(result)
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("override, key", [
    ("optimizer.lr_latent=.inf", "optimizer.lr_latent"),
    ("optimizer.lr_latent=1e308", "optimizer.lr_latent"),
    ("spatial_weighting.w_obs=.nan", "spatial_weighting.w_obs"),
    ("epochs.train=0", "epochs.train"),
])
def test_a_config_value_that_cannot_train_is_refused_before_any_file(phantom, tmp_path, override, key):
    out = tmp_path / "run"
    result = cli("train", "--manifest", phantom["registered"], "--out", out, *sets(TINY + [override]))
    assert result.returncode == 2 and key in one_line_error(result)
    assert not out.exists()


def test_every_non_finite_value_is_named_at_once(phantom, tmp_path):
    result = cli("train", "--manifest", phantom["registered"], "--out", tmp_path / "run",
                 *sets(TINY + ["optimizer.lr_latent=.inf", "optimizer.lr_inr=-.inf", "data.gain_weight=.nan"]))
    line = one_line_error(result)
    assert result.returncode == 2
    assert all(key in line for key in ("optimizer.lr_latent", "optimizer.lr_inr", "data.gain_weight"))


def test_an_empty_config_file_is_sized_for_the_device_with_a_warning(phantom, tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n")
    out = tmp_path / "run"
    result = cli("train", "--manifest", phantom["registered"], "--out", out, "--config", empty,
                 *sets(["max_steps=2", "n_samples=500"]), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "empty.yaml is empty" in result.stderr
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["inr_decoder"]["hidden_size"] == 256   # CPU defaults


def test_a_device_this_machine_lacks_is_refused(phantom, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    result = cli("train", "--manifest", phantom["registered"], "--out", out, *sets(TINY), "--device", "cuda")
    assert result.returncode == 2 and "cuda" in one_line_error(result) and "--device cpu" in result.stderr
    assert not out.exists()


def test_a_model_too_large_for_the_memory_is_refused_before_allocating(phantom, tmp_path):
    out = tmp_path / "run"
    result = cli("train", "--manifest", phantom["registered"], "--out", out,
                 *sets(TINY + ["inr_decoder.hidden_size=400000"]))
    line = one_line_error(result)
    assert result.returncode == 2 and "GiB" in line and "inr_decoder.hidden_size" in line
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ run folders

def test_train_never_discards_a_model_silently(phantom, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(phantom["run"], run)
    before = {name: sha256(run / name) for name in ("checkpoint.pt", "train_log.jsonl")}
    result = cli("train", "--manifest", phantom["registered"], "--out", run, *sets(TINY + ["max_steps=10"]))
    line = one_line_error(result)
    assert result.returncode == 2 and "--resume" in line and "--overwrite" in line
    assert {name: sha256(run / name) for name in before} == before
    result = cli("train", "--manifest", phantom["registered"], "--out", run, "--overwrite",
                 *sets(TINY + ["max_steps=4"]))
    assert result.returncode == 0, result.stderr
    assert len((run / "train_log.jsonl").read_text().splitlines()) == 4


def test_resume_with_another_model_size_names_the_keys(phantom, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(phantom["run"], run)
    result = cli("train", "--manifest", phantom["registered"], "--out", run, "--resume",
                 *sets(TINY + ["inr_decoder.hidden_size=48", "max_steps=20"]))
    line = one_line_error(result)
    assert result.returncode == 2 and "inr_decoder.hidden_size" in line and "32" in line and "48" in line


class _RunsCode:
    """Unpickling this runs ``touch MARKER`` (what a malicious checkpoint does with ``weights_only=False``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("damage", ["pickle", "truncated", "foreign"])
def test_a_damaged_or_malicious_checkpoint_is_named_never_unpickled(phantom, tmp_path, damage):
    run = tmp_path / "run"
    shutil.copytree(phantom["run"], run)
    marker = tmp_path / "PWNED"
    checkpoint = run / "checkpoint.pt"
    if damage == "pickle":
        torch.save({"model": _RunsCode(marker)}, checkpoint, pickle_module=pickle)
    elif damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    else:
        torch.save({"weights": torch.zeros(3)}, checkpoint)
    for args in (["train", "--manifest", phantom["registered"], "--out", run, "--resume"],
                 ["atlas", "--run", run, "--ga", "28", "--out", tmp_path / "atlas"]):
        result = cli(*args)
        line = one_line_error(result)
        assert result.returncode == 2 and "checkpoint.pt is not a valid INFANiTE checkpoint" in line
    assert not marker.exists() and not (tmp_path / "atlas").exists()


def test_training_that_diverges_stops_with_exit_1_and_keeps_the_last_finite_checkpoint(phantom, tmp_path):
    """A non-finite loss at step 8 (injected into the child: the loss of a real divergence)."""
    out = tmp_path / "run"
    prelude = ("import torch, infanite.inr.train as t\n"
               "real = t._step_loss\n"
               "def step_loss(*a, **k):\n"
               "    total, *rest = real(*a, **k)\n"
               "    step_loss.n = getattr(step_loss, 'n', 0) + 1\n"
               "    return (total * float('nan') if step_loss.n == 8 else total, *rest)\n"
               "t._step_loss = step_loss\n")
    result = cli("train", "--manifest", phantom["registered"], "--out", out, *sets(TINY + ["max_steps=20"]),
                 prelude=prelude)
    line = one_line_error(result)
    assert result.returncode == 1 and "diverged at step 8" in line and "step 5" in line and "lr" in line
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["global_step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 7


def test_atlas_refuses_a_model_with_non_finite_parameters(phantom, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(phantom["run"], run)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, run / "checkpoint.pt")
    result = cli("atlas", "--run", run, "--ga", "28", "--out", tmp_path / "atlas")
    line = one_line_error(result)
    assert result.returncode == 2 and "not finite" in line and name in line
    assert not (tmp_path / "atlas").exists()


def test_atlas_warns_when_a_volume_is_empty(phantom, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(phantom["run"], run)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    head = [k for k in state["model"] if state["model"][k].dim() == 1][-1]      # the last bias: the head's
    bias = torch.zeros_like(state["model"][head])
    bias[1] = 1e4                                                                 # background everywhere
    state["model"][head] = bias
    torch.save(state, run / "checkpoint.pt")
    result = cli("atlas", "--run", run, "--ga", "28", "--spacing", "2", "--out", tmp_path / "atlas")
    assert result.returncode == 0, result.stderr
    assert "segmentation is empty" in result.stderr


def test_an_atlas_grid_too_fine_to_hold_is_refused(phantom, tmp_path):
    result = cli("atlas", "--run", phantom["run"], "--ga", "28", "--spacing", "0.01", "--out", tmp_path / "atlas")
    line = one_line_error(result)
    assert result.returncode == 2 and "--spacing 0.01" in line and "finest spacing" in line
    assert not (tmp_path / "atlas").exists()


# ------------------------------------------------------------------------------------------------ locks

def _holder(folder: Path, timeout=120):
    from infanite.io.lock import read_holder

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = read_holder(folder)
        if holder:
            return holder
        time.sleep(0.2)
    raise AssertionError(f"no holder appeared in {folder}")


@pytest.mark.parametrize("command", ["train", "atlas", "register"])
def test_a_second_writer_into_a_locked_folder_is_refused_naming_the_holder(phantom, tmp_path, command):
    from infanite.io.lock import folder_lock

    out = tmp_path / "out"
    args = {"train": ["train", "--manifest", phantom["registered"], "--out", out, *sets(TINY)],
            "atlas": ["atlas", "--run", phantom["run"], "--ga", "28", "--out", out],
            "register": ["register", "--manifest", phantom["manifest"], "--templates", phantom["templates"], "--out",
                         out, "--fixed-transforms", phantom["truth"]]}[command]
    with folder_lock(out, "run"):          # this test process holds it, as a running command would
        result = cli(*args)
        line = one_line_error(result)
        assert result.returncode == 2 and f"process {os.getpid()}" in line and "'infanite run'" in line
        assert files_under(out) == {".infanite.lock", ".infanite.lock.json"}
    assert not out.exists()


def test_two_trainings_into_one_folder_the_second_is_refused(phantom, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--manifest", phantom["registered"], "--out", out, *sets(TINY + ["max_steps=100000"])]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "infanite", *map(str, args)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        holder = _holder(out)
        assert holder["pid"] == first.pid and holder["command"] == "train"
        second = cli(*args)
        assert second.returncode == 2 and f"process {first.pid}" in one_line_error(second)
    finally:
        first.send_signal(signal.SIGTERM)                  # a graceful stop: checkpoint, exit 0
        first.wait(timeout=120)
    assert first.returncode == 0, first.stderr.read()
    assert not (out / ".infanite.lock.json").exists()


def test_a_stale_lock_of_a_killed_process_is_reported_and_taken_over(phantom, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--manifest", phantom["registered"], "--out", out, *sets(TINY + ["max_steps=100000"])]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "infanite", *map(str, args)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    first.kill()                                            # kill -9: no release, no cleanup
    first.wait()
    assert json.loads((out / ".infanite.lock.json").read_text())["pid"] == first.pid
    (out / ".checkpoint.infanite-tmp-killed.pt").write_bytes(b"half a file")   # as a kill inside a write leaves
    reached = torch.load(out / "checkpoint.pt", weights_only=True)["global_step"]
    result = cli("train", "--manifest", phantom["registered"], "--out", out, "--resume",
                 "--set", f"max_steps={reached + 4}")
    assert result.returncode == 0, result.stderr
    assert "stale lock" in result.stderr and f"process {first.pid}" in result.stderr
    assert not list(out.glob(".*infanite-tmp*"))
    assert torch.load(out / "checkpoint.pt", weights_only=True)["global_step"] == reached + 4


# ------------------------------------------------------------------------------------------------ disks, files

def _small_tmpfs(path: Path) -> bool:
    path.mkdir()
    if sys.platform != "linux" or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], capture_output=True,
                          check=False)
    return done.returncode == 0


@pytest.mark.parametrize("limit", ["tmpfs", "file-size-limit"])
def test_a_full_disk_is_one_clear_line_and_nothing_half_written(phantom, tmp_path, limit):
    target = tmp_path / "small"
    prelude = ""
    if limit == "tmpfs":
        if not _small_tmpfs(target):
            pytest.skip("cannot mount a small tmpfs here (needs root on Linux)")
    else:
        if sys.platform == "win32":
            pytest.skip("RLIMIT_FSIZE is POSIX")
        target.mkdir()
        prelude = ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
                   "resource.setrlimit(resource.RLIMIT_FSIZE, (40000, 40000))\n")
    try:
        out = target / "reg"
        result = cli("register", "--manifest", phantom["manifest"], "--templates", phantom["templates"], "--out",
                     out, "--fixed-transforms", phantom["truth"], prelude=prelude)
        line = one_line_error(result)
        assert result.returncode == 1 and "disk is full" in line and str(out) in line
        assert not [p for p in out.rglob("*") if p.is_file() and "infanite-tmp" in p.name]
        for path in out.rglob("*.nii.gz"):                    # every file there is whole
            nib.load(str(path)).get_fdata()
    finally:
        if limit == "tmpfs":
            subprocess.run(["umount", str(target)], check=False)


def test_every_run_file_has_one_permission_policy(phantom):
    if sys.platform == "win32":
        pytest.skip("POSIX modes")
    modes = {p.name: p.stat().st_mode & 0o777 for p in phantom["run"].iterdir() if p.is_file()}
    assert "checkpoint.pt" in modes and len(set(modes.values())) == 1, modes


def test_subject_ids_yaml_with_numbers_or_tags_is_reported(phantom, tmp_path):
    ids = tmp_path / "subject_ids.yaml"
    ids.write_text("fetal_atlas:\n  subject_ids:\n    train: [!!python/object/apply:os.getcwd []]\n")
    result = cli("validate", phantom["manifest"], "--subject-ids", ids)
    assert result.returncode == 2 and "subject_ids.yaml" in result.stderr


def test_gzip_bomb_free_corrupt_manifest_images_never_crash_training(phantom, tmp_path):
    """``train`` on a registered manifest whose stack file was damaged after registration: one line, exit 2."""
    reg = tmp_path / "reg"
    shutil.copytree(phantom["registered"].parent, reg)
    victim = next((reg / "stacks").glob("*_T2w.nii.gz"))
    with gzip.open(victim, "rb") as fh:
        data = fh.read()
    victim.write_bytes(gzip.compress(data)[:200])
    result = cli("train", "--manifest", reg / "registered.tsv", "--out", tmp_path / "run", *sets(TINY),
                 *sets(["data.term=reference"]))
    assert result.returncode == 2 and victim.name in one_line_error(result)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------ kill -9, resume

def _killed_then_resumed(args, out: Path, first_output: str) -> subprocess.CompletedProcess:
    """Start ``infanite ARGS``, kill -9 it as soon as ``out`` holds a file matching ``first_output``, rerun it."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, "-m", "infanite", *map(str, args)], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while child.poll() is None and not list(out.glob(first_output)) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = child.poll() is None
    child.kill()
    child.wait()
    if not killed:
        pytest.skip("the command finished before it could be killed on this machine")
    return cli(*args)


def _images(root: Path) -> dict[str, str]:
    """Hashes of the voxel data and affine of every NIfTI under ``root`` and of every ITK transform."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.name.endswith(".nii.gz"):
            img = nib.load(str(path))
            found[str(path.relative_to(root))] = hashlib.sha256(
                np.asarray(img.dataobj).tobytes() + np.asarray(img.affine).tobytes()).hexdigest()
        elif path.suffix == ".tfm":
            found[str(path.relative_to(root))] = sha256(path)
    return found


@pytest.mark.parametrize("command", ["register", "atlas"])
def test_kill_9_then_rerun_gives_what_an_uninterrupted_run_gives(phantom, tmp_path, command):
    def args(out):
        if command == "register":
            return ["register", "--manifest", phantom["manifest"], "--templates", phantom["templates"], "--out", out,
                    "--fixed-transforms", phantom["truth"]]
        return ["atlas", "--run", phantom["run"], "--ga", "27", "28", "29", "--spacing", "1.5", "--out", out]

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert cli(*args(whole)).returncode == 0
    first = "*.nii.gz" if command == "atlas" else "**/*.tfm"
    result = _killed_then_resumed(args(resumed), resumed, first)
    assert result.returncode == 0, result.stderr
    assert _images(resumed) == _images(whole) and _images(whole)
    assert not [p for p in resumed.rglob("*") if "infanite-tmp" in p.name or p.name.startswith(".infanite.lock")]
