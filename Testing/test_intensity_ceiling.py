"""The intensity ceiling (infanite.inr.ceiling): what the scanner measured around each GA caps the atlas's T2w."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from infanite.inr.ceiling import (ceiling_at, ceiling_identity, ceiling_table, corrected_intensities,
                                  read_intensity_ceiling, write_intensity_ceiling)
from infanite.inr.data import PackedCohort
from infanite.inr.intensity import StackIntensity
from infanite.io.layout import INTENSITY_CEILING


def _cohort(values, stack, ga_weeks, labels=None, coords=None):
    n = len(values)
    return PackedCohort(
        coords_mm=torch.zeros(n, 3) if coords is None else torch.as_tensor(coords, dtype=torch.float32),
        intensity=torch.as_tensor(values, dtype=torch.float32),
        label=torch.ones(n, dtype=torch.int64) if labels is None else torch.as_tensor(labels),
        weight=torch.ones(n), stack=torch.as_tensor(stack), psf_cov_mm2=torch.eye(3).repeat(len(ga_weeks), 1, 1),
        stack_ids=[f"s{i}" for i in range(len(ga_weeks))], ga_weeks=list(ga_weeks), halo_label=9,
        support_mask=np.ones((2, 2, 2), bool), centre_mm=np.zeros(3), half_extent_mm=np.full(3, 50.0),
        voxel_to_ras=np.eye(4), shape=(2, 2, 2))


def test_table_pools_the_stacks_within_the_window_and_takes_the_quantile():
    """Three stacks: 22.0 and 23.0 weeks (1 week apart: pooled with a 1.5-week window) and 30.0; the values are
    0..999 / 1000 per stack scaled by 1, 2 and 3, so each pooled quantile is known."""
    base = np.arange(1000) / 1000.0
    values = np.concatenate([base, 2 * base, 3 * base])
    stack = np.repeat([0, 1, 2], 1000)
    table = ceiling_table(values, stack, [22.0, 23.0, 30.0], quantile=50.0, window_weeks=1.5)
    assert table["ga_weeks"] == [22.0, 23.0, 30.0]
    pooled = np.percentile(np.concatenate([base, 2 * base]), 50.0)
    assert table["ceiling"] == pytest.approx([pooled, pooled, np.percentile(3 * base, 50.0)])
    alone = ceiling_table(values, stack, [22.0, 23.0, 30.0], quantile=100.0, window_weeks=0.5)
    assert alone["ceiling"] == pytest.approx([0.999, 1.998, 2.997])
    for bad, match in (({"quantile": 0.0}, "quantile"), ({"quantile": 101.0}, "quantile"),
                       ({"window_weeks": -1.0}, "window")):
        with pytest.raises(ValueError, match=match):
            ceiling_table(values, stack, [22.0, 23.0, 30.0], **bad)


def test_ceiling_is_linear_in_ga_between_stacks_and_flat_beyond():
    table = {"ga_weeks": [22.0, 30.0], "ceiling": [0.8, 1.0]}
    assert ceiling_at(table, 26.0) == pytest.approx(0.9)
    assert ceiling_at(table, 20.0) == 0.8 and ceiling_at(table, 38.0) == 1.0


def test_samples_are_divided_by_their_stack_gain_and_bias_and_the_halo_left_out():
    """Stack 1 with gain e^0.5 and a linear bias along x: each brain sample's corrected value is its intensity over
    exp(log-gain + b·x/half-extent); the halo sample (label 9) is not a brain sample."""
    coords = np.array([[10.0, 0, 0], [-20.0, 0, 0], [25.0, 0, 0], [0, 0, 0]])
    data = _cohort([0.5, 0.6, 0.9, 0.7], [0, 1, 1, 1], [28.0, 29.0], labels=[1, 3, 5, 9], coords=coords)
    model = StackIntensity(2, data.centre_mm, data.half_extent_mm, bias_order=1)
    with torch.no_grad():
        model.log_gain[1] = 0.5
        model.bias[1, 0] = 0.2
    got = corrected_intensities(data, model)
    factor = np.exp(np.array([0.0, 0.5 + 0.2 * -20 / 50, 0.5 + 0.2 * 25 / 50]))
    np.testing.assert_allclose(got, np.array([0.5, 0.6, 0.9]) / factor, rtol=1e-6)
    np.testing.assert_allclose(corrected_intensities(data, None), [0.5, 0.6, 0.9], rtol=1e-6)


def test_written_table_reads_back_and_a_broken_one_is_named(tmp_path):
    data = _cohort(np.linspace(0, 1, 200), np.repeat([0, 1], 100), [27.0, 33.0])
    path = write_intensity_ceiling(tmp_path, data, None, quantile=100.0)
    assert path == tmp_path / INTENSITY_CEILING
    table = read_intensity_ceiling(tmp_path)
    assert table["ga_weeks"] == [27.0, 33.0]
    assert table["ceiling"] == pytest.approx([np.linspace(0, 1, 200)[99], 1.0])
    assert read_intensity_ceiling(tmp_path / "none") is None
    path.write_text(json.dumps({"ga_weeks": [30.0, 29.0], "ceiling": [1.0, 1.0]}))
    with pytest.raises(ValueError, match=f"{INTENSITY_CEILING}.*increasing"):
        read_intensity_ceiling(tmp_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{INTENSITY_CEILING}: not an intensity ceiling table"):
        read_intensity_ceiling(tmp_path)


def test_one_ga_written_with_two_precisions_is_one_entry_and_the_identity_follows_the_values(tmp_path):
    """28 + 1/7 weeks written as 28.142857142857 on one stack and 28.142857 on another is one GA of the table
    (it would otherwise hold two equal GAs and be refused); another table's values give another identity."""
    values = np.linspace(0, 1, 300)
    stack = np.repeat([0, 1, 2], 100)
    table = ceiling_table(values, stack, [28.142857142857, 28.142857, 33.0], quantile=100.0, window_weeks=0.0)
    assert table["ga_weeks"] == [28.1429, 33.0]
    assert table["ceiling"] == pytest.approx([values[199], 1.0])
    data = _cohort(values, stack, [28.142857142857, 28.142857, 33.0])
    write_intensity_ceiling(tmp_path, data, None)
    assert read_intensity_ceiling(tmp_path)["ga_weeks"] == [28.1429, 33.0]
    other = {**table, "ceiling": [table["ceiling"][0], 0.9]}
    assert ceiling_identity(table) != ceiling_identity(other)
    assert ceiling_identity(table) == ceiling_identity(dict(table))
