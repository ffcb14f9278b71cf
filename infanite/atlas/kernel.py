"""Gaussian kernel regression (GKR) of per-stack latents over gestational age: the paper's conditional atlas.

For a target GA *t* (weeks) ``z(t) = Σ_s w_s(t) z_s`` with ``w_s(t) ∝ exp(−(GA_s − t)² / 2σ²)`` and ``Σ_s w_s = 1``
(stacks of unknown GA weigh 0; ``top_k`` keeps the k largest weights).  The support of *t* is summarised by the
effective sample size ESS = (Σ W)² / Σ W² over **fetuses**, W_f the summed weight of fetus f's stacks (three stacks
of one fetus are one fetus's anatomy, not three); an atlas is still generated, with a warning, when ESS is low or
*t* lies outside the stacks' GA range.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

#: Below this effective sample size (fetuses) an atlas GA is flagged as weakly supported.
MIN_ESS = 3.0


@dataclass(frozen=True)
class KernelWeights:
    """GKR weights of the stacks for one target GA.

    ``weights`` (S,) sum to 1 (0 for stacks of unknown GA or outside ``top_k``); ``ess`` is the effective sample
    size (ΣW)²/ΣW² in fetuses (W the summed weights of each fetus's stacks; each stack its own fetus when no
    grouping is given), of the weights kept after ``top_k``; ``ess_stacks`` the same over stacks;
    ``support_weeks`` the (min, max) GA of the stacks with a known GA; ``warnings`` the support warnings (empty
    when the GA is well supported).
    """

    target_ga: float
    weights: np.ndarray
    ess: float
    support_weeks: tuple
    warnings: tuple = ()
    ess_stacks: float = math.nan


def check_sigma_top_k(sigma_weeks, top_k) -> None:
    try:
        sigma_ok = math.isfinite(float(sigma_weeks)) and float(sigma_weeks) > 0
    except (TypeError, ValueError):
        sigma_ok = False
    if not sigma_ok:
        raise ValueError(f"kernel width sigma must be > 0 weeks, got {sigma_weeks!r}")
    try:
        k_ok = top_k is None or (int(top_k) == top_k and int(top_k) >= 1)
    except (TypeError, ValueError):
        k_ok = False
    if not k_ok:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")


def gkr_weights(stack_ga_weeks, target_ga: float, sigma_weeks: float = 0.5, top_k: int | None = None,
                stack_fetus=None) -> KernelWeights:
    """Gaussian kernel weights over stacks for ``target_ga`` (weeks), bandwidth ``sigma_weeks`` (weeks).

    ``stack_ga_weeks`` may hold ``None``/NaN for stacks of unknown GA (weight 0).  The kernel is evaluated in log
    space relative to its largest value, so a target far from every stack still gets finite weights (the nearest
    stacks).  ``top_k`` keeps the ``k`` largest weights (ties by stack order).  ``stack_fetus`` (S,) groups the
    stacks into fetuses for the ESS.  Raises ``ValueError`` when no stack has a known GA or an argument is out of
    range.
    """
    ga = np.array([np.nan if g is None else float(g) for g in stack_ga_weeks], dtype=np.float64)
    known = np.isfinite(ga)
    target = float(target_ga)
    if not math.isfinite(target):
        raise ValueError(f"target GA must be a finite number of weeks, got {target_ga!r}")
    check_sigma_top_k(sigma_weeks, top_k)
    if not known.any():
        raise ValueError("no stack of the run has a known gestational age; GA regression is impossible")
    log_w = np.full(ga.shape, -np.inf)
    log_w[known] = -0.5 * ((ga[known] - target) / float(sigma_weeks)) ** 2
    if top_k is not None and int(top_k) < int(known.sum()):
        order = np.argsort(-log_w, kind="stable")
        log_w[order[int(top_k):]] = -np.inf
    raw = np.exp(log_w - log_w.max())                # largest weight 1: no underflow to all-zero
    ess_stacks = float(raw.sum() ** 2 / np.square(raw).sum())
    if stack_fetus is None:
        ess = ess_stacks
    else:
        fetus = np.asarray(stack_fetus)
        if fetus.shape != ga.shape:
            raise ValueError(f"stack_fetus has {fetus.size} entries for {ga.size} stacks")
        _, index = np.unique(fetus, return_inverse=True)
        per_fetus = np.bincount(index.ravel(), weights=raw)
        ess = float(per_fetus.sum() ** 2 / np.square(per_fetus).sum())
    lo, hi = float(ga[known].min()), float(ga[known].max())
    notes = []
    if target < lo or target > hi:
        notes.append(f"GA {target:.1f} weeks: generated, but outside the trained range {lo:.1f}-{hi:.1f} weeks "
                     f"of the stacks (support: ESS {ess:.2f} fetuses at sigma {sigma_weeks} weeks); "
                     f"this is an extrapolation")
    if ess < MIN_ESS:
        notes.append(f"GA {target:.1f} weeks: weak support, effective sample size {ess:.2f} < {MIN_ESS:g} fetuses "
                     f"within sigma {sigma_weeks} weeks (stacks span {lo:.1f}-{hi:.1f} weeks); widen --sigma or "
                     f"add fetuses scanned near this GA")
    return KernelWeights(target, raw / raw.sum(), ess, (lo, hi), tuple(notes), ess_stacks)


def regress_latent(latents: torch.Tensor, weights) -> torch.Tensor:
    """Weighted sum of per-stack latent grids: (S, C, G, G, G) and (S,) weights → (1, C, G, G, G)."""
    import torch

    w = torch.as_tensor(np.asarray(weights, dtype=np.float64), dtype=latents.dtype, device=latents.device)
    if w.ndim != 1 or w.shape[0] != latents.shape[0]:
        raise ValueError(f"need one weight per stack ({latents.shape[0]}), got shape {tuple(w.shape)}")
    return torch.tensordot(w, latents, dims=1)[None]
