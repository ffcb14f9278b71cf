"""The deformation-aware template INR (``model: template``): one template shared by the cohort, a smooth
displacement field per fetus.

Fetus ``f``, scanned at ``GA_f`` weeks, is the template seen through its own shape:
``I_f(x) = T(x + u_f(x), GA_f)`` (x template RAS mm, u in mm).  The atlas is ``T(x, GA)`` with ``u = 0``: individual
shapes are registered out before anything is averaged, where averaging latents (the paper's model) averages
anatomy and blurs it.  ``T`` outputs the intensity and the label logits; labels are warped the same way.

Template encodings (``template.encoding``):

- ``grid``: multi-resolution dense feature grids over the template box, one per level (``grid_resolutions``
  voxels per axis), each with ``ga_nodes`` nodes over the cohort's GA range (features linear in GA between nodes,
  so every fetus informs the GAs around its own); the features of all levels and the normalised GA go through a
  small ReLU MLP.  Plain PyTorch (``grid_sample``), fast to fit on a CPU.
- ``siren``: a SIREN of (x, y, z, GA), all normalised to [−1, 1].
- ``modulated``: the paper's modulated SIREN (``inr_decoder`` sizes) with one latent grid per GA node
  (``ga_latents`` nodes over the cohort's GA range, linear in GA between them) shared by the cohort.

Displacements: ``deformation_grid``³ control points × 3 (mm) per fetus over the template box, trilinear between
them.  :meth:`TemplateINR.penalties` gives their smoothness (squared differences of neighbouring control points),
magnitude, and the GA-kernel-weighted mean displacement around each fetus's GA (pushed to zero: the template is
the cohort's average shape at each GA, not one fetus's; Gaussian kernel of σ ``mean_kernel_weeks``), plus the
smoothness of the grids across GA nodes.  The fetuses' positions (each one's mean displacement over the observed
brain) can be averaged over a narrower kernel (``position_kernel_weeks``): the template then sits where the
fetuses closest to each GA sit, while its shape stays the mean of a wider group.

Appearance (``template.appearance``, modulated encoding): per fetus an offset ``a_f`` of the template's latent
grid, ``I_f(x) = D(x + u_f(x), z(GA_f) + a_f)``, held at zero for the deformation's warm-up and penalised by its
mean square (``appearance_weight``): what neither the template's GA nodes nor a smooth displacement explain, e.g.
anatomy that changes faster in GA than the nodes' spacing.  With ``appearance_centred`` (the default) ``a_f`` is
the fetus's parameter less the Gaussian-kernel mean (σ ``mean_kernel_weeks``) of the parameters around its GA:
what the fetuses of a GA share stays in the template.  The atlas at a GA decodes ``z(GA) + Σ_f w_f a_f``, ``w`` a
Gaussian of σ ``appearance_kernel_weeks`` over the fetuses' GAs, summing to 1 (0: the template alone); with
``appearance_adaptive`` (the default) the kernel is widened where the fetuses are sparse (the cohort's ends and
beyond) until its effective number of fetuses, ``1 / Σ w_f²``, reaches the median of what it has at the fetuses'
own GAs: at 38 weeks, past a cohort's oldest fetus, a fixed σ of 0.5 weeks averages about two fetuses' offsets
(their own features, not the GA's) where it averages about four inside the cohort.

The atlas may also be moved after training (:meth:`TemplateINR.cohort_position`, ``infanite atlas
--position-sigma``): ``T(x + p(GA), GA)``, ``p`` the fetuses' positions averaged over a narrow GA kernel.  The
template's shape changes smoothly with GA and cannot follow positions that jump from one week to the next (stacks
registered to templates of different weeks inherit those templates' positions); a translation per GA can.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from infanite.inr.model import interpolate_latents

#: default Gaussian width (weeks) of the kernel over fetus GAs whose weighted mean displacement is pushed to zero
#: (``template.mean_kernel_weeks``)
MEAN_KERNEL_WEEKS = 1.0

#: default Gaussian width (weeks) of the kernel over fetus GAs with which the atlas averages the fetuses'
#: appearance offsets (``template.appearance_kernel_weeks``)
APPEARANCE_KERNEL_WEEKS = 0.5

#: smallest brain size (against the cohort's oldest) that ``template.ga_scaling`` scales by (on the CRL atlas a
#: 21-week brain is 0.59 of a 38-week one in linear size: cube root of the masks' volume ratio)
MIN_BRAIN_SCALE = 0.3


def effective_fetuses(weights: torch.Tensor) -> float:
    """Kish's effective sample size ``(Σ w)² / Σ w²`` of non-negative weights (F,): how many equally weighted
    fetuses they average as many of."""
    weights = weights.double()
    return float(weights.sum() ** 2 / (weights ** 2).sum())


class FeatureGrids(nn.Module):
    """Dense feature grids, level ``l``: ``(ga_nodes[l], channels, R, R, R)`` with ``R = resolutions[l]``."""

    def __init__(self, resolutions, ga_nodes, channels: int, init_std: float = 1e-2, generator=None):
        super().__init__()
        self.grids = nn.ParameterList([
            nn.Parameter(torch.randn(int(n), channels, int(r), int(r), int(r), generator=generator) * init_std)
            for r, n in zip(resolutions, ga_nodes)])
        self.channels = int(channels)

    @property
    def out_features(self) -> int:
        return self.channels * len(self.grids)

    def forward(self, xn: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Features (N, levels × channels) at normalised coordinates ``xn`` (N, 3) in [−1, 1] (x → the last grid
        axis) and normalised GA ``t`` (N,) in [0, 1]."""
        n_points = xn.shape[0]
        where = xn.reshape(1, n_points, 1, 1, 3)
        rows = torch.arange(n_points, device=xn.device)
        out = []
        for grid in self.grids:
            nodes, channels = grid.shape[:2]
            values = F.grid_sample(grid.reshape(1, nodes * channels, *grid.shape[2:]), where, mode="bilinear",
                                   padding_mode="border", align_corners=True)
            values = values.reshape(nodes, channels, n_points).permute(2, 0, 1)        # (N, nodes, C)
            if nodes == 1:
                out.append(values[:, 0])
                continue
            pos = t.clamp(0, 1) * (nodes - 1)
            i0 = pos.floor().clamp(max=nodes - 2).long()
            w = (pos - i0)[:, None]
            out.append(values[rows, i0] * (1 - w) + values[rows, i0 + 1] * w)
        return torch.cat(out, dim=1)

    def ga_smoothness(self) -> torch.Tensor:
        """Mean squared difference of consecutive GA nodes, over the levels that have several."""
        terms = [((g[1:] - g[:-1]) ** 2).mean() for g in self.grids if g.shape[0] > 1]
        return torch.stack(terms).mean() if terms else self.grids[0].new_zeros(())


class GridTemplate(nn.Module):
    """``T(x, GA)`` from :class:`FeatureGrids` and a ReLU MLP (``hidden_layers`` × ``hidden_size``)."""

    def __init__(self, n_out: int, resolutions, ga_nodes, channels: int, hidden_size: int, hidden_layers: int,
                 generator=None):
        super().__init__()
        self.features = FeatureGrids(resolutions, ga_nodes, channels, generator=generator)
        layers, width = [], self.features.out_features + 1
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_size), nn.ReLU()]
            width = hidden_size
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[0] = 0.3                       # the mean normalised brain intensity, roughly

    def forward(self, xn: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.features(xn, t), (2 * t - 1)[:, None]], dim=1)
        return self.head(self.mlp(h))

    def smoothness(self) -> torch.Tensor:
        return self.features.ga_smoothness()


class SirenTemplate(nn.Module):
    """``T(x, GA)`` as a SIREN of the four normalised inputs (Sitzmann et al. initialisation)."""

    def __init__(self, n_out: int, hidden_size: int, hidden_layers: int, omega, generator=None):
        super().__init__()
        self.omega0, self.omega = float(omega[0]), float(omega[1])
        self.first = nn.Linear(4, hidden_size)
        self.hidden = nn.ModuleList([nn.Linear(hidden_size, hidden_size) for _ in range(hidden_layers)])
        self.head = nn.Linear(hidden_size, n_out)
        with torch.no_grad():
            self.first.weight.uniform_(-1 / 4, 1 / 4, generator=generator)
            bound = math.sqrt(6 / hidden_size) / self.omega
            for layer in list(self.hidden) + [self.head]:
                layer.weight.uniform_(-bound, bound, generator=generator)
            self.head.bias.zero_()
            self.head.bias[0] = 0.3

    def forward(self, xn: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.sin(self.omega0 * self.first(torch.cat([xn, (2 * t - 1)[:, None]], dim=1)))
        for layer in self.hidden:
            h = torch.sin(self.omega * layer(h))
        return self.head(h)

    def smoothness(self) -> torch.Tensor:
        return self.head.weight.new_zeros(())


class ModulatedTemplate(nn.Module):
    """``T(x, GA)`` as the paper's modulated SIREN whose latent grid is shared by the cohort and varies with GA:
    ``ga_latents`` latent grids at GA nodes over the cohort's range, linear in GA between them (the template's
    anatomy at each GA; no per-stack latent that could absorb a fetus's own shape)."""

    def __init__(self, n_out: int, decoder_config, ga_latents: int, generator=None):
        super().__init__()
        from infanite.inr.model import ModulatedSiren

        d = decoder_config
        self.decoder = ModulatedSiren(int(ga_latents), n_out, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], d.hidden_size,
                                      d.num_hidden_layers, d.modulated_layers, d.latent_dim, d.omega)

    def ga_grids(self, t: torch.Tensor) -> torch.Tensor:
        """The template's latent grids (K, C, G, G, G) at normalised GAs ``t`` (K,): the GA nodes' grids, linear in
        GA between them."""
        latents = self.decoder.latents
        nodes = latents.shape[0]
        if nodes == 1:
            return latents.expand(t.shape[0], *latents.shape[1:])
        pos = t.clamp(0, 1) * (nodes - 1)
        i0 = pos.floor().clamp(max=nodes - 2).long()
        w = (pos - i0).to(latents.dtype).reshape(-1, 1, 1, 1, 1)
        return latents[i0] * (1 - w) + latents[i0 + 1] * w

    def decode_grids(self, xn: torch.Tensor, grids: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Outputs (N, n_out) at ``xn`` (N, 3), sample ``n`` decoded with the latent interpolated from
        ``grids[index[n]]`` (``grids`` (K, C, G, G, G), e.g. :meth:`ga_grids` plus appearance offsets): blending
        the GA nodes and adding offsets on the grids, then interpolating once, is the same trilinear field as
        interpolating each and blending after, at a third of the cost."""
        return self.decoder.decode(xn, interpolate_latents(grids, index, xn))

    def forward(self, xn: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Outputs (N, n_out) at ``xn`` (N, 3) and normalised GA ``t`` (N,): the template alone (offsets added on
        the grids go through :meth:`decode_grids`)."""
        values, which = torch.unique(t, return_inverse=True)
        return self.decode_grids(xn, self.ga_grids(values), which)

    def smoothness(self) -> torch.Tensor:
        latents = self.decoder.latents
        return ((latents[1:] - latents[:-1]) ** 2).mean() if latents.shape[0] > 1 else latents.new_zeros(())


class TemplateINR(nn.Module):
    """The template and the fetuses' displacement fields (see the module docstring).

    ``stack_fetus`` (S,) and ``stack_ga_weeks`` (S,) tie each stack to its fetus and GA; ``ga_range_weeks`` is the
    span over which GA is normalised (the cohort's); ``centre_mm``/``half_extent_mm`` the template box (RAS mm).
    ``n_out`` = 1 intensity + the label classes.  ``config`` is the ``template`` section of the training config.
    """

    def __init__(self, n_out: int, stack_fetus, stack_ga_weeks, ga_range_weeks, centre_mm, half_extent_mm, config,
                 omega=(30.0, 30.0), seed: int = 0, decoder_config=None):
        super().__init__()
        generator = torch.Generator().manual_seed(int(seed))
        if config.encoding == "modulated":
            self.template = ModulatedTemplate(n_out, decoder_config, config.ga_latents, generator)
        elif config.encoding == "siren":
            self.template = SirenTemplate(n_out, config.hidden_size, config.hidden_layers, omega, generator)
        else:
            self.template = GridTemplate(n_out, config.grid_resolutions, config.ga_nodes, config.grid_channels,
                                         config.hidden_size, config.hidden_layers, generator)
        n_fetuses = int(max(stack_fetus)) + 1 if len(stack_fetus) else 0
        g = int(config.deformation_grid)
        self.deformation = nn.Parameter(torch.zeros(n_fetuses, 3, g, g, g)) if g >= 2 else None
        # ``template.appearance``: per fetus, an offset of the template's latent grid (modulated encoding), zero at
        # the start; the atlas adds their Gaussian-kernel mean over the fetuses' GAs (``appearance_kernel_weeks``)
        self.appearance = None
        if bool(getattr(config, "appearance", False)):
            if config.encoding != "modulated":
                raise ValueError(f"template.appearance needs template.encoding 'modulated', got {config.encoding!r}")
            latent_shape = self.template.decoder.latents.shape[1:]
            self.appearance = nn.Parameter(torch.zeros(n_fetuses, *latent_shape))
        self.use_appearance = True
        self.appearance_kernel_weeks = float(getattr(config, "appearance_kernel_weeks", APPEARANCE_KERNEL_WEEKS))
        self.appearance_centred = bool(getattr(config, "appearance_centred", True))
        self.appearance_adaptive = bool(getattr(config, "appearance_adaptive", True))
        self._appearance_widths: dict = {}               # appearance_width's cache
        self.register_buffer("stack_fetus", torch.as_tensor(stack_fetus, dtype=torch.long))
        ga = np.array([np.nan if v is None else float(v) for v in stack_ga_weeks], dtype=np.float64)
        ga = np.where(np.isfinite(ga), ga, np.nanmean(ga) if np.isfinite(ga).any() else 0.0)
        self.register_buffer("stack_ga", torch.as_tensor(ga, dtype=torch.float32))
        fetus_ga = np.zeros(n_fetuses)
        for f in range(n_fetuses):
            fetus_ga[f] = ga[np.asarray(stack_fetus) == f].mean()
        self.register_buffer("fetus_ga", torch.as_tensor(fetus_ga, dtype=torch.float32))
        self.register_buffer("ga_range", torch.as_tensor([float(ga_range_weeks[0]), float(ga_range_weeks[1])]))
        self.register_buffer("centre", torch.as_tensor(centre_mm, dtype=torch.float32).reshape(3))
        self.register_buffer("half_extent", torch.as_tensor(half_extent_mm, dtype=torch.float32).reshape(3))
        self.use_deformation = True
        self.mean_kernel_weeks = float(getattr(config, "mean_kernel_weeks", MEAN_KERNEL_WEEKS))
        self.position_kernel_weeks = float(getattr(config, "position_kernel_weeks", self.mean_kernel_weeks))
        # weights (G³, sum 1) of the control points in a fetus's position (its mean displacement over the
        # observed brain); uniform until :meth:`set_position_region`; not saved (rebuilt from the data)
        self.register_buffer("position_weights", torch.full((g, g, g), 1.0 / g ** 3) if g >= 2 else
                             torch.zeros(0), persistent=False)
        # ``template.ga_scaling``: the brain's growth, log(size) = a + b·GA, fitted to the cohort before training
        # (:meth:`set_ga_scaling`) and saved with the model; (0, 0) is no scaling
        if bool(getattr(config, "ga_scaling", False)):
            self.register_buffer("ga_growth", torch.zeros(2))
        else:
            self.ga_growth = None

    # -- coordinates ---------------------------------------------------------------------------------------
    def normalise(self, coords_mm: torch.Tensor) -> torch.Tensor:
        return (coords_mm - self.centre) / self.half_extent

    def brain_scale(self, ga_weeks: torch.Tensor) -> torch.Tensor:
        """The brain's linear size at ``ga_weeks`` (N,) against its size at the cohort's oldest GA (N,): 1 without
        ``template.ga_scaling``; else ``exp(b·(GA − GA_max))`` from the fitted growth, within [``MIN_BRAIN_SCALE``,
        1] (a GA beyond the cohort's range takes its end's size)."""
        if self.ga_growth is None:
            return torch.ones_like(ga_weeks)
        ga = ga_weeks.clamp(self.ga_range[0], self.ga_range[1])
        return torch.exp(self.ga_growth[1] * (ga - self.ga_range[1])).clamp(MIN_BRAIN_SCALE, 1.0)

    def template_coordinates(self, coords_mm: torch.Tensor, ga_weeks: torch.Tensor) -> torch.Tensor:
        """The template network's input (N, 3) for template RAS points ``coords_mm`` (N, 3) at ``ga_weeks`` (N,):
        the box-normalised position divided by :meth:`brain_scale`, so that a young (small) brain spans as much of
        the network's input range, and as many of its latent grid cells, as the oldest."""
        xn = self.normalise(coords_mm)
        if self.ga_growth is None:
            return xn
        return xn / self.brain_scale(ga_weeks.to(xn.dtype))[:, None]

    def set_ga_scaling(self, coords_mm: torch.Tensor, stack: torch.Tensor) -> None:
        """Fit the brain's growth to the cohort (``template.ga_scaling``): each fetus's size is the geometric mean
        of the standard deviations along the template axes of its brain samples ``coords_mm`` (N, 3, template RAS
        mm; ``stack`` (N,) their stacks), and ``log(size)`` is fitted linear in GA over the fetuses (least squares).
        A shrinking fit (slope < 0: no growth to follow) is set to no scaling."""
        if self.ga_growth is None or len(coords_mm) == 0:
            return
        fetus = self.stack_fetus.to(stack.device)[stack]
        n = int(self.fetus_ga.shape[0])
        log_size, ages = [], []
        for f in range(n):
            points = coords_mm[fetus == f].double()
            if len(points) < 10:
                continue
            log_size.append(float(torch.log(points.std(0).clamp_min(1e-6)).mean()))
            ages.append(float(self.fetus_ga[f]))
        if len(ages) < 2 or np.ptp(ages) <= 0:
            return
        slope, intercept = np.polyfit(np.asarray(ages), np.asarray(log_size), 1)
        slope = max(float(slope), 0.0)
        self.ga_growth.copy_(torch.as_tensor([float(intercept), slope], dtype=self.ga_growth.dtype))

    def normalised_ga(self, ga_weeks: torch.Tensor) -> torch.Tensor:
        lo, hi = self.ga_range[0], self.ga_range[1]
        return ((ga_weeks - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)

    def displacement(self, coords_mm: torch.Tensor, fetus: torch.Tensor) -> torch.Tensor:
        """``u_f(x)`` (N, 3) mm of each sample's fetus at its (template) position."""
        if self.deformation is None:
            return torch.zeros_like(coords_mm)
        return interpolate_latents(self.deformation, fetus, self.normalise(coords_mm))

    def set_position_region(self, coords_mm: torch.Tensor) -> None:
        """Make a fetus's position the mean of its displacement over the points ``coords_mm`` (N, 3, template RAS
        mm; the observed brain): the control points' weights are those of trilinear interpolation, averaged."""
        if self.deformation is None or len(coords_mm) == 0:
            return
        self.position_weights = self._region_weights(coords_mm).to(self.position_weights)

    def _region_weights(self, coords_mm) -> torch.Tensor:
        """(G, G, G) weights, summing to 1, that give the mean over the points ``coords_mm`` (N, 3, template RAS mm)
        of a trilinear field on the control grid: the trilinear weights of the points, averaged (by autograd of the
        interpolation)."""
        g = self.deformation.shape[-1]
        basis = torch.zeros(1, 1, g, g, g, dtype=torch.float64, requires_grad=True)
        xn = self.normalise(torch.as_tensor(coords_mm, dtype=torch.float32, device=self.centre.device)).cpu()
        interpolate_latents(basis, torch.zeros(len(xn), dtype=torch.long), xn.double()).mean().backward()
        weights = basis.grad[0, 0]
        return weights / weights.sum()

    def cohort_position(self, ga_weeks: float, coords_mm, width_weeks: float) -> torch.Tensor:
        """Where the fetuses scanned around ``ga_weeks`` sit against the template (3,) mm, template RAS: each
        fetus's position (its mean displacement over the points ``coords_mm`` (N, 3, template RAS mm), e.g. the
        brain around that GA) averaged over the fetuses with Gaussian weights of σ ``width_weeks`` over their GAs.
        ``T(x + position, GA)`` is the template moved to where those fetuses' anatomy is on average (a fetus sees
        the template point ``x + u_f(x)`` at ``x``).  Zero without displacements or points."""
        if self.deformation is None or self.deformation.shape[0] == 0 or len(coords_mm) == 0:
            return self.centre.new_zeros(3)
        weights = self._region_weights(coords_mm).to(self.deformation)
        positions = (self.deformation.detach() * weights).sum(dim=(2, 3, 4))           # (F, 3) mm
        return self.fetus_weights(ga_weeks, width_weeks).to(positions) @ positions

    def fetus_weights(self, ga_weeks: float, width_weeks: float) -> torch.Tensor:
        """(F,) float64 weights, summing to 1, of the fetuses at ``ga_weeks``: a Gaussian of σ ``width_weeks`` over
        their GAs; a GA far from every fetus (all weights underflow) gives its nearest fetuses equal weights."""
        fetus_ga = self.fetus_ga.double()
        kernel = torch.exp(-0.5 * ((fetus_ga - float(ga_weeks)) / float(width_weeks)) ** 2)
        if not float(kernel.sum()) > 0:
            nearest = (fetus_ga - float(ga_weeks)).abs()
            kernel = (nearest == nearest.min()).double()
        return kernel / kernel.sum()

    # -- queries ---------------------------------------------------------------------------------------------
    def atlas(self, coords_mm: torch.Tensor, ga_weeks, shift_mm=None) -> torch.Tensor:
        """``T(x + shift, GA)``: the atlas (no deformation) at ``coords_mm`` (N, 3) and GA (weeks, scalar or (N,));
        ``shift_mm`` (3,) mm, template RAS (default none) moves it (see :meth:`cohort_position`)."""
        ga = torch.as_tensor(ga_weeks, dtype=coords_mm.dtype, device=coords_mm.device).expand(coords_mm.shape[0])
        if shift_mm is not None:
            coords_mm = coords_mm + torch.as_tensor(shift_mm, dtype=coords_mm.dtype, device=coords_mm.device)
        xn = self.template_coordinates(coords_mm, ga)
        if self.appearance is None or not self.use_appearance or self.appearance_kernel_weeks == 0:
            return self.template(xn, self.normalised_ga(ga))           # the template alone
        offsets = self.fetus_appearance()
        values, which = torch.unique(ga, return_inverse=True)
        # per GA asked for: the template's latent grid plus the kernel-weighted mean of the appearance offsets
        mean = torch.stack([torch.einsum("f,f...->...", self.appearance_weights(float(v)).to(offsets), offsets)
                            for v in values])
        return self.template.decode_grids(xn, self.template.ga_grids(self.normalised_ga(values)) + mean, which)

    def fetus_appearance(self) -> torch.Tensor:
        """The offsets (F, C, G, G, G) the fetuses' latents get: the parameters, less (``appearance_centred``) the
        Gaussian-kernel mean (σ ``mean_kernel_weeks``) of the fetuses' parameters around each one's GA, so that
        what the fetuses of a GA share is left to the template and an offset holds what is the fetus's own or
        changes faster with GA than that kernel."""
        if not self.appearance_centred:
            return self.appearance
        flat = self.appearance.reshape(self.appearance.shape[0], -1)
        kernel = self.ga_kernel(self.mean_kernel_weeks).to(flat)
        return (flat - kernel @ flat).reshape(self.appearance.shape)

    def appearance_weights(self, ga_weeks: float) -> torch.Tensor:
        """(F,) weights of the fetuses' appearance offsets in the atlas at ``ga_weeks``: :meth:`fetus_weights` of
        σ :meth:`appearance_width`."""
        return self.fetus_weights(ga_weeks, self.appearance_width(ga_weeks))

    def appearance_width(self, ga_weeks: float) -> float:
        """σ (weeks) of the atlas's kernel over the fetuses' appearance offsets at ``ga_weeks``:
        ``appearance_kernel_weeks``, or (``appearance_adaptive``, where the fetuses are sparse) the smallest width
        at which the kernel's effective number of fetuses (``1 / Σ w²``) reaches the median of its effective number
        at the fetuses' own GAs (to 0.1 %; a width of 0 stays 0: the template alone)."""
        width = float(self.appearance_kernel_weeks)
        if not self.appearance_adaptive or width <= 0 or self.fetus_ga.numel() < 2:
            return width
        # cached (the TV penalty asks at every step), keyed by the fetuses' GAs too: a loaded state changes them
        key = (float(ga_weeks), width, tuple(self.fetus_ga.tolist()))
        if key not in self._appearance_widths:
            if len(self._appearance_widths) > 4096:
                self._appearance_widths.clear()
            self._appearance_widths[key] = self._adapted_width(float(ga_weeks), width)
        return self._appearance_widths[key]

    def _adapted_width(self, ga_weeks: float, width: float) -> float:
        target = float(np.median([effective_fetuses(self.fetus_weights(float(g), width)) for g in self.fetus_ga]))
        if effective_fetuses(self.fetus_weights(ga_weeks, width)) >= target:
            return width
        low, high = width, 2.0 * width
        for _ in range(64):                     # a wide enough kernel weighs every fetus alike: F >= the target
            if effective_fetuses(self.fetus_weights(ga_weeks, high)) >= target:
                break
            low, high = high, 2.0 * high
        while high - low > 1e-3 * low:
            middle = 0.5 * (low + high)
            low, high = (middle, high) if effective_fetuses(self.fetus_weights(ga_weeks, middle)) < target else \
                (low, middle)
        return high

    def forward(self, coords_mm: torch.Tensor, stack: torch.Tensor) -> torch.Tensor:
        """What stack ``stack`` sees at ``coords_mm``: ``T(x + u_f(x), GA_f)`` (N, n_out)."""
        x = coords_mm
        if self.use_deformation and self.deformation is not None:
            x = x + self.displacement(coords_mm, self.stack_fetus[stack])
        ga = self.stack_ga[stack]
        xn = self.template_coordinates(x, ga)
        if not isinstance(self.template, ModulatedTemplate):
            return self.template(xn, self.normalised_ga(ga))
        # one latent grid per stack, interpolated once: the template's at the stack's GA, plus its fetus's own
        # appearance offset
        grids = self.template.ga_grids(self.normalised_ga(self.stack_ga))
        if self.appearance is not None and self.use_appearance:
            grids = grids + self.fetus_appearance()[self.stack_fetus]
        return self.template.decode_grids(xn, grids, stack)

    # -- regularisation --------------------------------------------------------------------------------------
    def intensity_tv(self, coords_mm: torch.Tensor, ga_weeks: torch.Tensor, step_mm: float,
                     eps: float = 1e-3) -> torch.Tensor:
        """Mean isotropic total variation of the template's intensity (per mm) at ``coords_mm`` (N, 3, template
        RAS) and ``ga_weeks`` (N,): ``mean sqrt(Σ_k ((T(x + h e_k) − T(x)) / h)² + eps²)`` with forward differences
        of ``h = step_mm`` along the template axes (no displacement: the template itself)."""
        n = coords_mm.shape[0]
        if n == 0:
            return coords_mm.new_zeros(())
        h = float(step_mm)
        offsets = torch.cat([coords_mm.new_zeros(1, 3), h * torch.eye(3, dtype=coords_mm.dtype,
                                                                      device=coords_mm.device)])
        points = (coords_mm[None] + offsets[:, None]).reshape(-1, 3)
        values = self.atlas(points, ga_weeks.to(coords_mm.dtype).repeat(4))[:, 0].float().reshape(4, n)
        gradient = (values[1:] - values[:1]) / h
        return torch.sqrt((gradient ** 2).sum(0) + eps ** 2).mean()

    def penalties(self) -> dict:
        """Unweighted penalty terms: ``smoothness`` and ``magnitude`` of the displacements (mm²), ``mean``
        (squared GA-kernel-weighted mean displacement around each fetus's GA, mm²), ``ga`` (the template's
        smoothness across GA nodes) and ``appearance`` (mean square of the fetuses' appearance offsets)."""
        zero = self.ga_range.new_zeros(())
        out = {"ga": self.template.smoothness(), "smoothness": zero, "magnitude": zero, "mean": zero,
               "appearance": zero if self.appearance is None else (self.appearance ** 2).mean()}
        if self.deformation is None or self.deformation.shape[0] == 0:
            return out
        u = self.deformation
        diffs = [(u[:, :, 1:] - u[:, :, :-1]) ** 2, (u[:, :, :, 1:] - u[:, :, :, :-1]) ** 2,
                 (u[..., 1:] - u[..., :-1]) ** 2]
        out["smoothness"] = sum(d.mean() for d in diffs) / 3
        out["magnitude"] = (u ** 2).mean()
        flat = u.reshape(u.shape[0], -1)
        shape_kernel = self.ga_kernel(self.mean_kernel_weeks)
        mean = shape_kernel @ flat
        if self.position_kernel_weeks != self.mean_kernel_weeks:
            # the fetuses' positions (mean displacement over the observed brain) averaged over a narrower GA kernel
            position = (u * self.position_weights).sum(dim=(2, 3, 4))                   # (F, 3) mm
            shift = (self.ga_kernel(self.position_kernel_weeks) - shape_kernel) @ position
            mean = mean + shift.repeat_interleave(u[0, 0].numel(), dim=1)
        out["mean"] = (mean ** 2).mean()
        return out

    def ga_kernel(self, width_weeks: float) -> torch.Tensor:
        """(F, F) Gaussian weights (σ ``width_weeks``) over the fetuses' GAs, each row summing to 1."""
        kernel = torch.exp(-0.5 * ((self.fetus_ga[:, None] - self.fetus_ga[None, :]) / width_weeks) ** 2)
        return kernel / kernel.sum(1, keepdim=True)

    def displacement_summary(self) -> dict:
        """Per fetus: the mean and largest control-point displacement (mm)."""
        if self.deformation is None:
            return {}
        norms = self.deformation.detach().norm(dim=1).reshape(self.deformation.shape[0], -1)
        return {"mean_mm": norms.mean(1).tolist(), "max_mm": norms.max(1).values.tolist()}
