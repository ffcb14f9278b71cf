"""``checkpoint.pt``: written atomically by training, read back (``weights_only=True``) by resume and the atlas.

:func:`read_checkpoint` never lets a damaged or foreign file reach the user as a PyTorch traceback (nor as its
advice to load with ``weights_only=False``, which would run the file's code): it says the file is not a valid
INFANiTE checkpoint and what to do.  :func:`non_finite_parameters` finds NaN/inf in a saved model.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

#: keys every INFANiTE checkpoint has
REQUIRED_KEYS = frozenset({"model", "optimizer", "scheduler", "global_step", "total_steps", "stack_ids"})


def read_checkpoint(path, map_location="cpu", required=REQUIRED_KEYS) -> dict:
    """The checkpoint at ``path`` (tensors and plain values only); ``ValueError`` naming the file when it is
    missing, damaged, holds code or other objects, or lacks the keys of an INFANiTE checkpoint."""
    import torch

    path = Path(path)
    what = "delete it and train again (--overwrite), or use another run folder"
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError:
        raise ValueError(f"{path} is not a valid INFANiTE checkpoint: it holds objects other than tensors and plain "
                         f"values, which are never loaded (they could run code); {what}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, AttributeError, KeyError, TypeError,
            IndexError, UnicodeDecodeError):
        raise ValueError(f"{path} is not a valid INFANiTE checkpoint: damaged or not a PyTorch checkpoint; "
                         f"{what}") from None
    if not isinstance(state, dict) or not set(required) <= set(state):
        missing = sorted(set(required) - set(state)) if isinstance(state, dict) else ["(not a mapping)"]
        raise ValueError(f"{path} is not a valid INFANiTE checkpoint: it lacks {', '.join(missing)}; {what}")
    return state


def non_finite_parameters(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` holding NaN or inf."""
    import torch

    return [name for name, value in state_dict.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]
