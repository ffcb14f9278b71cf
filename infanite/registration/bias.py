"""N4 bias-field correction of a stack inside its brain mask (SimpleITK)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from infanite.io.images import Volume, sitk_to_volume, volume_to_sitk


def n4_correct(t2: Volume, mask: Volume, shrink: int = 2, iterations=(50, 40, 30)) -> Volume:
    """Divide ``t2`` by the N4 bias field estimated inside ``mask`` on an in-plane-shrunk copy.

    The through-plane axis (largest spacing) is never shrunk.  Returns a float32 :class:`Volume` on the same grid.
    """
    image = volume_to_sitk(t2.with_array(np.maximum(t2.array.astype(np.float32), 0) + 1.0))
    brain = volume_to_sitk(mask.with_array((mask.array > 0).astype(np.uint8)))
    thick = int(np.argmax(t2.spacing_mm))
    factors = [1 if axis == thick else shrink for axis in range(3)]
    small = sitk.Shrink(image, factors)
    small_mask = sitk.Shrink(brain, factors)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.Execute(small, small_mask)
    log_bias = n4.GetLogBiasFieldAsImage(image)
    corrected = sitk_to_volume(image / sitk.Exp(log_bias))
    return t2.with_array((corrected.array - 1.0).astype(np.float32))
