"""Helper."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from INFANiTECommonLib import widget

if TYPE_CHECKING:
    from infanite.core import f


def run(label: str | None, folder) -> None:
    import torch
    from infanite import core
    slicer.util.pip_install("nibabel")
    return isinstance(label, (int, float)) and (1 | 2)
