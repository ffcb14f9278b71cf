"""CRL atlas download helper (``infanite.reference.download``, ``python -m infanite get-templates``).

Everything runs offline against a fake NiftyMIC ``data/templates/`` folder of small phantom images reached
through ``file://`` URLs.
"""
from __future__ import annotations

import filecmp
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from infanite.cli.main import main
from infanite.io.images import save_nifti
from infanite.reference.phantom import make_phantom
from infanite.progress import ProgressReporter
from infanite.reference.download import (LICENCE_RECORD, LICENCE_TEXT, TEMPLATE_FILES, TemplateDownloadWarning,
                                         download_templates, validate_weeks)
from infanite.reference.templates import TemplateLibrary

REPO = Path(__file__).resolve().parents[1]
WEEKS = (27, 31)          # 27: parcellation only as _WMZparc (as in NiftyMIC); 31: as _parc
SPACING_MM = 3.0


@pytest.fixture(scope="session")
def source(tmp_path_factory) -> Path:
    """A fake NiftyMIC data/templates/ folder (phantom images named as NiftyMIC names them)."""
    folder = tmp_path_factory.mktemp("niftymic-templates")
    for week in WEEKS:
        t2, mask, seg = make_phantom(week, SPACING_MM)
        save_nifti(t2, folder / f"STA{week}.nii.gz")
        save_nifti(mask, folder / f"STA{week}_mask.nii.gz")
        save_nifti(seg, folder / (f"STA{week}_WMZparc.nii.gz" if week < 30 else f"STA{week}_parc.nii.gz"))
        save_nifti(mask, folder / f"STA{week}_mask_dil.nii.gz")  # present at the source, not fetched
    (folder / "LICENSE").write_text("CRL licence (test stand-in)\n")
    return folder


def copy_source(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def url_of(folder: Path) -> str:
    return folder.as_uri() + "/"


class CountingOpener:
    """urlopen wrapper remembering the URLs asked for."""

    def __init__(self):
        self.urls = []

    def __call__(self, url):
        self.urls.append(url)
        return urllib.request.urlopen(url)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------------- library

def test_download_all_and_load_as_library(source, tmp_path):
    out = tmp_path / "tpl"
    opener = CountingOpener()
    progress_file = tmp_path / "progress.jsonl"
    with ProgressReporter(str(progress_file), terminal=io.StringIO()) as progress:
        result = download_templates(out, WEEKS, url_of(source), accept_licence=True, progress=progress,
                                    opener=opener)
    assert result == out
    expected = sorted([f"STA{w}{s}.nii.gz" for w in WEEKS for s in ("", "_mask", "_parc")]
                      + [LICENCE_RECORD, "LICENSE-source.txt"])
    assert files_in(out) == expected          # no temporary file left, no _mask_dil, no _WMZparc name
    assert all(url.startswith("file://") for url in opener.urls)

    lib = TemplateLibrary.from_folder(out)
    assert lib.source.startswith("niftymic:")
    assert lib.weeks == [float(w) for w in WEEKS]
    for week in WEEKS:
        t2, mask, seg = make_phantom(week, SPACING_MM)
        template = lib.get(week)
        np.testing.assert_array_equal(template.t2w.array, t2.array)
        np.testing.assert_array_equal(template.t2w.voxel_to_ras, t2.voxel_to_ras)
        np.testing.assert_array_equal(template.mask.array, mask.array)
        assert template.seg is not None
        np.testing.assert_array_equal(template.seg.array, seg.array)
        np.testing.assert_array_equal(template.seg.voxel_to_ras, seg.voxel_to_ras)
        assert filecmp.cmp(out / f"STA{week}.nii.gz", source / f"STA{week}.nii.gz", shallow=False)
    assert filecmp.cmp(out / "STA27_parc.nii.gz", source / "STA27_WMZparc.nii.gz", shallow=False)

    record = (out / LICENCE_RECORD).read_text(encoding="utf-8")
    assert LICENCE_TEXT in record
    assert url_of(source) in record and "UTC" in record
    assert f"STA27_parc.nii.gz <- {url_of(source)}STA27_WMZparc.nii.gz" in record
    assert (out / "LICENSE-source.txt").read_text() == "CRL licence (test stand-in)\n"

    records = [json.loads(line) for line in progress_file.read_text().splitlines()]
    total = 1 + len(WEEKS) * len(TEMPLATE_FILES)
    assert {r["stage"] for r in records} == {"download"} and {r["total"] for r in records} == {total}
    assert [r["step"] for r in records] == list(range(total + 1))


def test_rerun_fetches_only_what_is_missing(source, tmp_path):
    out = tmp_path / "tpl"
    download_templates(out, WEEKS, url_of(source), accept_licence=True)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    opener = CountingOpener()
    download_templates(out, WEEKS, url_of(source), accept_licence=True, opener=opener)
    assert opener.urls == []                                   # nothing downloaded again
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before

    (out / "STA31_mask.nii.gz").unlink()
    (out / "STA27.nii.gz").write_bytes(b"damaged")             # a damaged file is fetched again
    with pytest.warns(TemplateDownloadWarning, match="damaged"):
        download_templates(out, WEEKS, url_of(source), accept_licence=True, opener=opener)
    assert sorted(opener.urls) == [url_of(source) + "STA27.nii.gz", url_of(source) + "STA31_mask.nii.gz"]
    assert filecmp.cmp(out / "STA27.nii.gz", source / "STA27.nii.gz", shallow=False)
    assert "STA31_mask.nii.gz <- " in (out / LICENCE_RECORD).read_text(encoding="utf-8")


def test_refuses_without_licence_acceptance(source, tmp_path):
    out = tmp_path / "tpl"
    opener = CountingOpener()
    with pytest.raises(ValueError, match="licence must be accepted") as info:
        download_templates(out, WEEKS, url_of(source), opener=opener)
    assert "Gholipour" in str(info.value) and "accept_licence=True" in str(info.value)
    assert not out.exists() and opener.urls == []


@pytest.mark.parametrize("weeks", [[27, 20], [39], [27.5], ["27"], [True], [], "27", None])
def test_bad_weeks_rejected_before_anything_is_written(source, tmp_path, weeks):
    out = tmp_path / "tpl"
    opener = CountingOpener()
    with pytest.raises(ValueError, match="weeks"):
        download_templates(out, weeks, url_of(source), accept_licence=True, opener=opener)
    assert not out.exists() and opener.urls == []


def test_validate_weeks():
    assert validate_weeks([30, 21, 30, 38.0, np.int64(25)]) == [21, 25, 30, 38]
    assert validate_weeks(27) == [27]
    with pytest.raises(ValueError, match="20, 39"):
        validate_weeks([20, 39, 22])


def test_bad_base_url_rejected(tmp_path):
    with pytest.raises(ValueError, match="base URL"):
        download_templates(tmp_path / "tpl", [27], "ftp://example.org/templates/", accept_licence=True)
    assert not (tmp_path / "tpl").exists()


def test_corrupt_source_file_names_url_and_leaves_nothing(source, tmp_path):
    src = copy_source(source, tmp_path / "src")
    (src / "STA27.nii.gz").write_text("<!DOCTYPE html><html><body>404: Not Found</body></html>\n")
    out = tmp_path / "tpl"
    with pytest.raises(ValueError) as info:
        download_templates(out, [27], url_of(src), accept_licence=True)
    message = str(info.value)
    assert url_of(src) + "STA27.nii.gz" in message and "not a readable NIfTI" in message
    assert "HTML" in message
    assert not (out / "STA27.nii.gz").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]   # no temporary file left


def test_missing_optional_parcellation_warns_and_continues(source, tmp_path):
    src = copy_source(source, tmp_path / "src")
    (src / "STA31_parc.nii.gz").unlink()
    (src / "LICENSE").unlink()
    out = tmp_path / "tpl"
    with pytest.warns(TemplateDownloadWarning) as caught:
        download_templates(out, WEEKS, url_of(src), accept_licence=True)
    messages = [str(w.message) for w in caught]
    assert any("parcellation" in m and "STA31_WMZparc.nii.gz" in m for m in messages)
    assert any("licence file" in m for m in messages)
    assert not (out / "STA31_parc.nii.gz").exists() and (out / "STA27_parc.nii.gz").exists()
    lib = TemplateLibrary.from_folder(out)
    assert lib.weeks == [27.0, 31.0]
    assert lib.get(31).seg is None and lib.get(27).seg is not None


def test_missing_t2_is_an_error(source, tmp_path):
    out = tmp_path / "tpl"
    with pytest.raises(FileNotFoundError, match="STA38.nii.gz"):
        download_templates(out, [27, 38], url_of(source), accept_licence=True)
    assert (out / "STA27.nii.gz").exists()          # what was fetched stays: a re-run resumes
    assert not (out / "STA38.nii.gz").exists()


# -------------------------------------------------------------------------------------------------------- CLI

def test_cli_without_acceptance_on_non_tty_exits_2(source, tmp_path):
    out = tmp_path / "tpl"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "infanite", "get-templates", "--out", str(out),
                             "--weeks", "27", "--base-url", url_of(source)],
                            cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    assert LICENCE_TEXT.strip() in result.stdout
    assert "--accept-licence" in result.stderr and "terms printed" in result.stderr
    assert not out.exists()


def test_cli_with_acceptance_downloads(source, tmp_path, capsys):
    out = tmp_path / "tpl"
    progress = tmp_path / "p.jsonl"
    code = main(["get-templates", "--out", str(out), "--week-range", "27", "27", "--base-url", url_of(source),
                 "--accept-licence", "--progress-json", str(progress)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert str(out) in captured.out
    assert TemplateLibrary.from_folder(out).weeks == [27.0]
    assert json.loads(progress.read_text().splitlines()[-1])["step"] == 1 + len(TEMPLATE_FILES)


class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("answer, code", [("yes", 0), ("no", 2)])
def test_cli_asks_on_a_tty(source, tmp_path, monkeypatch, capsys, answer, code):
    out = tmp_path / "tpl"
    monkeypatch.setattr(sys, "stdin", _Tty())
    monkeypatch.setattr("builtins.input", lambda prompt="": answer)
    assert main(["get-templates", "--out", str(out), "--weeks", "31", "--base-url", url_of(source)]) == code
    captured = capsys.readouterr()
    assert "Gholipour" in captured.out
    assert (out / "STA31.nii.gz").exists() == (code == 0)
    if code:
        assert not out.exists() and "not accepted" in captured.err


@pytest.mark.parametrize("argv", [["--weeks", "20"], ["--week-range", "30", "25"], ["--base-url", "ftp://x/"]])
def test_cli_invalid_input_exits_2(tmp_path, capsys, argv):
    out = tmp_path / "tpl"
    assert main(["get-templates", "--out", str(out), "--accept-licence", *argv]) == 2
    assert "get-templates: error:" in capsys.readouterr().err
    assert not out.exists()


def test_cli_download_failure_exits_1(source, tmp_path, capsys):
    src = copy_source(source, tmp_path / "src")
    (src / "STA27.nii.gz").write_text("not an image")
    code = main(["get-templates", "--out", str(tmp_path / "tpl"), "--weeks", "27", "--base-url", url_of(src),
                 "--accept-licence"])
    assert code == 1
    err = capsys.readouterr().err
    assert url_of(src) + "STA27.nii.gz" in err and "re-run" in err
