"""Install the core's Python dependencies into Slicer on first use, with the user's confirmation.

Never called at import time: the modules call :func:`ensure_dependencies` when a button that needs the core is
pressed.  PyTorch comes from the PyTorch extension (``PyTorchUtils``, which picks the wheel matching the GPU
driver); the other packages from ``requirements.txt`` through ``slicer.packaging.pip_ensure`` (Slicer ≥ 5.12) or
a confirmation plus ``slicer.util.pip_install`` (Slicer 5.8 / 5.10).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
#: import name of each requirement (distribution names differ)
IMPORT_NAMES = {"nibabel": "nibabel", "PyYAML": "yaml", "scikit-image": "skimage", "matplotlib": "matplotlib"}
TORCH_REQUIREMENT = ">=2.1"


def requirement_lines(path: Path = REQUIREMENTS) -> list[str]:
    """The requirement specifiers of ``requirements.txt`` (comments and blank lines dropped)."""
    lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line]


def missing_packages(path: Path = REQUIREMENTS) -> list[str]:
    """Requirements whose module cannot be imported (by name only; versions are pip's business)."""
    missing = []
    for requirement in requirement_lines(path):
        name = requirement.split(">")[0].split("=")[0].split("<")[0].strip()
        if importlib.util.find_spec(IMPORT_NAMES.get(name, name)) is None:
            missing.append(requirement)
    return missing


def ensure_torch(ask: bool = True) -> bool:
    """PyTorch through the PyTorch extension; ``RuntimeError`` when the extension is missing or the user declines."""
    if importlib.util.find_spec("torch") is not None:
        return True
    try:
        import PyTorchUtils
    except ImportError:
        raise RuntimeError("INFANiTE needs PyTorch: install the 'PyTorch' extension from the Extensions Manager, "
                           "restart Slicer, and try again") from None
    logic = PyTorchUtils.PyTorchUtilsLogic()
    if not logic.torchInstalled():
        torch = logic.installTorch(askConfirmation=ask, torchVersionRequirement=TORCH_REQUIREMENT)
        if torch is None:
            raise RuntimeError("PyTorch was not installed; INFANiTE cannot run without it")
    return True


def slicer_packaging():
    """Slicer's ``slicer.packaging`` module (Slicer ≥ 5.12), or None.  It is a submodule that ``import slicer`` does
    not import, so ``getattr(slicer, "packaging", None)`` would be None even where it exists."""
    try:
        import slicer.packaging as packaging
    except ImportError:
        return None
    return packaging


def ensure_dependencies(need_torch: bool = True, ask: bool = True) -> None:
    """Make sure the core can be imported; asks before installing anything.  ``RuntimeError`` if declined."""
    import slicer

    missing = missing_packages()
    if missing:
        packaging = slicer_packaging()
        if packaging is not None and hasattr(packaging, "pip_ensure"):         # Slicer ≥ 5.12
            packaging.pip_ensure(missing, requester="INFANiTE")
        else:                                                                   # Slicer 5.8 / 5.10
            if ask and not slicer.util.confirmOkCancelDisplay(
                    "INFANiTE needs these Python packages, which will be downloaded and installed now:\n\n"
                    + "\n".join(missing), "INFANiTE: install Python packages"):
                raise RuntimeError("INFANiTE's Python packages were not installed: " + ", ".join(missing))
            slicer.util.pip_install(missing)
    if need_torch:
        ensure_torch(ask)
