"""Observed-sample map and spatial weights: analytic answers, brute force, the reference's ID-matching idea."""
from __future__ import annotations


import numpy as np
import pytest

from infanite.registration import observed as obs_mod
from infanite.geometry import apply_matrix, random_rotation, rigid_matrix, world_to_voxel
from infanite.io.images import Grid
from infanite.io.layout import reference_mask_sample_name
from infanite.registration.observed import observed_map, slice_axis, weight_map


def affine(linear, origin) -> np.ndarray:
    """4x4 voxel → RAS affine from a 3x3 matrix (column a: mm per step along array axis a) and the origin (mm)."""
    m = np.eye(4)
    m[:3, :3] = linear
    m[:3, 3] = origin
    return m


def translation(t) -> np.ndarray:
    m = np.eye(4)
    m[:3, 3] = t
    return m


def template_grid(shape, spacing=0.8, origin=(0.0, 0.0, 0.0)) -> Grid:
    return Grid(tuple(shape), affine(np.eye(3) * spacing, origin))


def brute_force(tgrid: Grid, sgrid: Grid, t2s: np.ndarray, k: int, tol_mm: float):
    """Per-voxel evaluation from first principles: (observed, distance to nearest plane mm, region, v)."""
    x = tgrid.voxel_centres_ras()
    v = world_to_voxel(sgrid.voxel_to_ras, apply_matrix(t2s, x))
    spacing_k = np.linalg.norm(sgrid.voxel_to_ras[:3, k])
    nearest = np.floor(v[..., k] + 0.5)
    dist = np.abs(v[..., k] - nearest) * spacing_k
    fov = np.ones(tgrid.shape, bool)
    for a in range(3):
        if a != k:
            fov &= (v[..., a] >= -0.5) & (v[..., a] <= sgrid.shape[a] - 0.5)
    region = fov & (v[..., k] >= -0.5) & (v[..., k] <= sgrid.shape[k] - 0.5)
    expected = fov & (dist <= tol_mm) & (nearest >= 0) & (nearest <= sgrid.shape[k] - 1)
    return expected, dist, region, v


# ---------------------------------------------------------------------------------------------------------
# slice axis


@pytest.mark.parametrize("spacing, axis", [((1, 1, 3.3), 2), ((3.3, 1, 1), 0), ((1, 4, 1), 1), ((1, 1, 1), 2),
                                           ((2, 2, 1), 1), ((3, 1, 3), 2)])
def test_slice_axis_largest_spacing_ties_last(spacing, axis):
    rot = random_rotation(np.random.default_rng(1))
    assert slice_axis(Grid((10, 10, 10), affine(rot @ np.diag(spacing), (1, 2, 3)))) == axis


# ---------------------------------------------------------------------------------------------------------
# axis-aligned stacks: the expected mask straight from the z coordinates

# template: 0.8 mm, origin chosen so that no template centre is exactly 0.4 mm from a slice plane
TEMPLATE = template_grid((55, 55, 100), 0.8, (-20.03, -18.07, -40.0))
STACK_SHAPE = (30, 28, 20)
STACK_ORIGIN = np.array([-12.0, -10.0, -31.35])
SLICE_MM = 3.3


@pytest.mark.parametrize("t", [(0.0, 0.0, 0.0), (1.7, -2.3, 0.5)])
def test_axis_aligned_stack_observed_exactly_near_slice_planes(t):
    stack = Grid(STACK_SHAPE, affine(np.diag([1.0, 1.0, SLICE_MM]), STACK_ORIGIN))
    out = observed_map(TEMPLATE, stack, translation(t))
    assert out.dtype == np.uint8 and out.shape == TEMPLATE.shape
    assert set(np.unique(out)) <= {0, 1}

    p = TEMPLATE.voxel_centres_ras() + np.asarray(t)          # stack RAS of every template voxel centre
    planes = STACK_ORIGIN[2] + SLICE_MM * np.arange(STACK_SHAPE[2])
    near_plane = (np.abs(p[..., 2][..., None] - planes) <= 0.4).any(-1)
    fov_xy = ((p[..., 0] >= STACK_ORIGIN[0] - 0.5) & (p[..., 0] <= STACK_ORIGIN[0] + STACK_SHAPE[0] - 0.5)
              & (p[..., 1] >= STACK_ORIGIN[1] - 0.5) & (p[..., 1] <= STACK_ORIGIN[1] + STACK_SHAPE[1] - 0.5))
    expected = near_plane & fov_xy
    np.testing.assert_array_equal(out, expected.astype(np.uint8))

    # observed fraction inside the stack's field of view ≈ template voxel / slice spacing
    slab = (p[..., 2] >= planes[0] - SLICE_MM / 2) & (p[..., 2] <= planes[-1] + SLICE_MM / 2)
    fov = fov_xy & slab
    assert (~fov_xy).sum() > 1000 and (~slab).sum() > 1000       # the template extends beyond the stack
    assert out[fov].mean() == pytest.approx(0.8 / SLICE_MM, abs=0.01)
    assert not out[~fov_xy].any()
    beyond = (p[..., 2] < planes[0] - 0.4) | (p[..., 2] > planes[-1] + 0.4)
    assert beyond.sum() > 1000 and not out[beyond].any()


def test_slice_axis_i_and_left_handed_stack():
    # array axis 0 runs along −z with 3.3 mm; axes 1, 2 along x, y (1 mm): left-handed (det < 0)
    origin = np.array([-12.0, -10.0, 31.35])
    stack = Grid((20, 30, 28), affine(np.column_stack([(0, 0, -SLICE_MM), (1, 0, 0), (0, 1, 0)]), origin))
    assert np.linalg.det(stack.voxel_to_ras[:3, :3]) < 0 and slice_axis(stack) == 0
    t = np.array([0.4, 1.1, -0.5])
    out = observed_map(TEMPLATE, stack, translation(t))

    p = TEMPLATE.voxel_centres_ras() + t
    planes = origin[2] - SLICE_MM * np.arange(20)
    near_plane = (np.abs(p[..., 2][..., None] - planes) <= 0.4).any(-1)
    fov_xy = ((p[..., 0] >= origin[0] - 0.5) & (p[..., 0] <= origin[0] + 29.5)
              & (p[..., 1] >= origin[1] - 0.5) & (p[..., 1] <= origin[1] + 27.5))
    np.testing.assert_array_equal(out, (near_plane & fov_xy).astype(np.uint8))
    assert out.sum() > 1000


def test_slice_axis_along_x_rotated_template_frame():
    # stack slices along RAS x (axis 0); the template is a 90° rotation away, so the planes are template y-planes
    stack = Grid((15, 30, 30), affine(np.diag([SLICE_MM, 1.0, 1.0]), (-23.05, -14.0, -14.0)))
    rot90 = rigid_matrix(np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]]))     # template y → stack −x
    tgrid = template_grid((45, 45, 45), 0.8, (-17.6, -17.6, -17.6))
    out = observed_map(tgrid, stack, rot90)
    expected, *_ = brute_force(tgrid, stack, rot90, 0, 0.4)
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    # the planes are template y = const, so inside the field of view the map depends on j only
    per_j = out.any(axis=(0, 2))
    assert per_j.sum() >= 1 and np.array_equal(out[20, :, 20].astype(bool), per_j)


# ---------------------------------------------------------------------------------------------------------
# oblique: brute force on a small grid


def oblique_case(seed: int):
    rng = np.random.default_rng(seed)
    tgrid = template_grid((45, 45, 45), 0.8, (-17.6, -17.6, -17.6))
    spacing = np.array([0.9, 1.1, SLICE_MM])
    shape = (24, 22, 8)
    axes = random_rotation(rng)
    t2s = rigid_matrix(random_rotation(rng), rng.uniform(-20, 20, 3))
    centre_stack = apply_matrix(t2s, rng.uniform(-2, 2, 3))          # near the template centre
    lin = axes @ np.diag(spacing)
    stack = Grid(shape, affine(lin, centre_stack - lin @ ((np.array(shape) - 1) / 2)))
    return tgrid, stack, t2s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oblique_matches_brute_force(seed):
    tgrid, stack, t2s = oblique_case(seed)
    out = observed_map(tgrid, stack, t2s).astype(bool)
    expected, dist, region, v = brute_force(tgrid, stack, t2s, 2, 0.4)
    clear = np.abs(dist - 0.4) > 1e-6                 # leave exact ties (float noise) out of the comparison
    np.testing.assert_array_equal(out[clear], expected[clear])
    # every observed voxel lies within tolerance of an acquired slice plane, inside the field of view
    nearest = np.floor(v[..., 2] + 0.5)
    assert np.all(dist[out] <= 0.4 + 1e-6)
    assert np.all((nearest[out] >= 0) & (nearest[out] <= 7))
    assert np.all((v[..., :2][out] >= -0.5) & (v[..., :2][out] <= np.array([23.5, 21.5])))
    # and no non-observed voxel inside the field of view does
    inside = region & ~out & clear
    assert inside.sum() > 1000 and np.all(dist[inside] > 0.4)
    frac = out[region].mean()
    assert frac == pytest.approx(0.8 / SLICE_MM, rel=0.15)
    # the default tolerance is half the (isotropic) template voxel
    np.testing.assert_array_equal(out, observed_map(tgrid, stack, t2s, tolerance_mm=0.4).astype(bool))


def test_explicit_tolerance_widens_slab():
    tgrid, stack, t2s = oblique_case(5)
    narrow = observed_map(tgrid, stack, t2s, tolerance_mm=0.4).astype(bool)
    wide = observed_map(tgrid, stack, t2s, tolerance_mm=0.8)
    expected, dist, region, _ = brute_force(tgrid, stack, t2s, 2, 0.8)
    clear = np.abs(dist - 0.8) > 1e-6
    np.testing.assert_array_equal(wide.astype(bool)[clear], expected[clear])
    assert np.all(wide[narrow] == 1) and wide[region].mean() == pytest.approx(1.6 / SLICE_MM, rel=0.1)


def test_anisotropic_template_default_tolerance_is_half_voxel_along_normal():
    # 2 mm template z spacing, axial slices: default tolerance 1.0 mm → every plane hits one voxel per column
    tgrid = Grid((20, 20, 30), affine(np.diag([0.8, 0.8, 2.0]), (0, 0, 0.3)))
    stack = Grid((16, 16, 12), affine(np.diag([1.0, 1.0, 4.0]), (0, 0, 7.77)))
    out = observed_map(tgrid, stack, np.eye(4))
    z = 0.3 + 2.0 * np.arange(30)
    planes = 7.77 + 4.0 * np.arange(12)
    hits = (np.abs(z[:, None] - planes) <= 1.0).any(1)
    assert np.count_nonzero(hits) == 12                 # one template layer per plane
    inside = (0.8 * np.arange(20) <= 15.5)
    np.testing.assert_array_equal(out, (inside[:, None, None] & inside[None, :, None] & hits).astype(np.uint8))


# ---------------------------------------------------------------------------------------------------------
# the reference's idea: voxel-ID volume in stack space, each acquired sample marks its nearest template voxel


@pytest.mark.parametrize("slice_mm, oz", [(3.2, 4.9), (3.3, 6.55)])
def test_matches_reference_nearest_template_voxel(slice_mm, oz):
    tgrid = template_grid((40, 40, 60), 0.8)
    t = np.array([1.3, -0.7, 0.9])
    shape = (30, 36, 12)
    stack = Grid(shape, affine(np.diag([0.8, 0.8, slice_mm]), (1.3 - 2.4, -0.7 + 4.0, oz)))
    t2s = translation(t)
    # reference: unique IDs per acquired voxel, mapped through inverse(template_to_stack) to the nearest voxel
    ids = np.arange(1, np.prod(shape) + 1).reshape(shape)
    ijk = np.argwhere(ids > 0).astype(np.float64)
    template_ras = apply_matrix(np.linalg.inv(t2s), apply_matrix(stack.voxel_to_ras, ijk))
    idx = np.rint(world_to_voxel(tgrid.voxel_to_ras, template_ras)).astype(int)
    ok = np.all((idx >= 0) & (idx < np.array(tgrid.shape)), axis=1)
    mask3 = np.zeros(tgrid.shape, np.int64)
    mask3[tuple(idx[ok].T)] = ids[tuple(ijk[ok].astype(int).T)]
    assert np.count_nonzero(mask3) == ok.sum()          # one template voxel per acquired sample, no collisions
    out = observed_map(tgrid, stack, t2s)
    _, _, region, _ = brute_force(tgrid, stack, t2s, 2, 0.4)
    assert region.sum() > 1000 and (~region).sum() > 1000
    np.testing.assert_array_equal(out[region], (mask3[region] > 0).astype(np.uint8))
    np.testing.assert_array_equal(out, (mask3 > 0).astype(np.uint8))


# ---------------------------------------------------------------------------------------------------------
# chunking


def test_chunked_equals_one_shot(monkeypatch):
    tgrid, stack, t2s = oblique_case(7)
    tgrid = template_grid((23, 17, 13), 1.3, (-14.0, -10.0, -8.0))
    expected, dist, _, _ = brute_force(tgrid, stack, t2s, 2, 0.65)
    monkeypatch.setattr(obs_mod, "_CHUNK_VOXELS", 500)          # 2 slabs of 17×13 per chunk, last one partial
    out = observed_map(tgrid, stack, t2s).astype(bool)
    clear = np.abs(dist - 0.65) > 1e-6
    assert expected.any()
    np.testing.assert_array_equal(out[clear], expected[clear])


def test_large_grid_chunked_exact():
    tgrid = template_grid((135, 189, 155), 0.8, (-54.0, -75.6, -62.0))
    assert np.prod(tgrid.shape) > 1.5 * obs_mod._CHUNK_VOXELS
    rng = np.random.default_rng(11)
    lin = random_rotation(rng) @ np.diag([1.0, 1.0, SLICE_MM])
    shape = (110, 110, 30)
    t2s = rigid_matrix(random_rotation(rng), rng.uniform(-30, 30, 3))
    stack = Grid(shape, affine(lin, apply_matrix(t2s, np.zeros(3)) - lin @ ((np.array(shape) - 1) / 2)))
    out = observed_map(tgrid, stack, t2s).astype(bool)
    expected, dist, region, _ = brute_force(tgrid, stack, t2s, 2, 0.4)
    clear = np.abs(dist - 0.4) > 1e-6
    np.testing.assert_array_equal(out[clear], expected[clear])
    assert out[region].mean() == pytest.approx(0.8 / SLICE_MM, rel=0.05)


# ---------------------------------------------------------------------------------------------------------
# validation, weights, reference file name


def test_observed_map_validates_inputs():
    stack = Grid(STACK_SHAPE, affine(np.diag([1.0, 1.0, SLICE_MM]), STACK_ORIGIN))
    small = template_grid((5, 5, 5))
    with pytest.raises(ValueError):
        observed_map(small, stack, np.eye(3))
    bad = np.eye(4)
    bad[0, 3] = np.nan
    with pytest.raises(ValueError):
        observed_map(small, stack, bad)
    for tol in (0.0, -1.0, np.inf):
        with pytest.raises(ValueError):
            observed_map(small, stack, np.eye(4), tolerance_mm=tol)


def test_weight_map_values_and_errors():
    observed = np.array([[1, 1, 0, 0, 1]], np.uint8)
    brain = np.array([[1, 0, 1, 0, 2]], np.uint8)
    w = weight_map(observed, brain)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, [[1.6, 0.0, 0.8, 0.0, 1.6]], rtol=1e-6)
    np.testing.assert_allclose(weight_map(observed, brain, w_obs=2.0, w_int=0.5), [[2.0, 0, 0.5, 0, 2.0]])
    # compatible with the reference loader: uint8 cast, > 0.5 observed
    assert np.array_equal(w.astype(np.uint8) > 0.5, (observed > 0) & (brain > 0))
    with pytest.raises(ValueError):
        weight_map(observed, brain[:, :4])
    with pytest.raises(ValueError):
        weight_map(observed, brain, w_obs=-1.0)
    with pytest.raises(ValueError):
        weight_map(observed, brain, w_int=-0.1)


def test_reference_mask_sample_name():
    assert reference_mask_sample_name("24_0001_602") == "0001_602_mask_sample.nii.gz"
    assert reference_mask_sample_name("sub-01_run-1") == "sub-01_run-1_mask_sample.nii.gz"
    assert reference_mask_sample_name("stackA") == "stackA_mask_sample.nii.gz"
    with pytest.raises(ValueError):
        reference_mask_sample_name("")
