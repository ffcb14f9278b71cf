"""Shared fixtures. Tests needing ../shared/data skip with a clear reason where it is absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("INFANITE_SHARED_DATA", REPO.parent / "shared" / "data"))
CRL_ATLAS = SHARED_DATA / "crl2017-fetal-atlas"
NORMATIVE_CSV = SHARED_DATA / "normative-volumes" / "ren2022_weekly_mean_sd.csv"
MIAL_STACKS = SHARED_DATA / "mialsrtk-sample-stacks"


def require(path: Path, what: str) -> Path:
    """Skip the calling test unless ``path`` exists."""
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (the licensed/shared data lives in ../shared/data; "
                    f"set INFANITE_SHARED_DATA to point elsewhere)")
    return path


@pytest.fixture(scope="session")
def crl_atlas_dir() -> Path:
    return require(CRL_ATLAS / "HarvardSTA30_Study1" / "srr.nii.gz", "CRL 2017 fetal atlas").parents[1]


@pytest.fixture(scope="session")
def normative_csv() -> Path:
    return require(NORMATIVE_CSV, "normative volume table (Ren 2022)")


@pytest.fixture(scope="session")
def mial_dir() -> Path:
    return require(MIAL_STACKS / "sub-01_run-1_T2w.nii.gz", "MIAL CC0 sample stacks").parent


@pytest.fixture(scope="session")
def phantom_registered(tmp_path_factory) -> dict:
    """A 2-fetus × 2-stack phantom cohort (GA 27–29, 2 mm in-plane) registered with its true transforms onto
    1.6 mm phantom templates of weeks 27–29: ``{"root", "registered" (registered.tsv), "templates"}``."""
    from infanite.simulation.stacks import tiny_phantom_cohort

    root = tmp_path_factory.mktemp("phantom-registered")
    cohort = tiny_phantom_cohort(root, weeks=(27, 28, 29), register=True)
    folder = cohort["templates"]
    return {"root": root, "registered": root / "reg" / "registered.tsv", "templates": folder}


@pytest.fixture
def mrml():
    """A real headless Slicer scene (slicer-core) with module logics and Red/Yellow/Green slice views:
    ``{"scene", "logics"}``.  Skips with a reason when slicer-core is not installed."""
    from slicer_harness import headless_scene, slicer_available

    if not slicer_available():
        pytest.skip("slicer-core is not installed (pip install -e '.[test]' installs it)")
    scene, logics = headless_scene()
    yield {"scene": scene, "logics": logics}
    scene.Clear(0)   # Clear(1) (also singletons) crashes slicer-core with slice logics attached


@pytest.fixture
def one_torch_thread():
    """Torch on one thread for the test, restored after (training tests: one thread is deterministic and quick)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def registered(phantom_registered):
    """The phantom cohort's ``registered.tsv`` (:func:`phantom_registered`)."""
    return phantom_registered["registered"]
