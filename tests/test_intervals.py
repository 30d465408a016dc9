"""The bootstrap intervals: coverage on known distributions, pairing, bad input, and the verdict table."""

from __future__ import annotations

import pytest
import torch

from codecircuits import intervals
from codecircuits.errors import InputError


def test_mean_interval_covers_the_true_mean_about_95_percent_of_the_time():
    gen = torch.Generator().manual_seed(0)
    hits = 0
    for s in range(200):
        x = torch.randn(50, generator=gen) + 3.0
        ci = intervals.mean(x, n_resamples=400, seed=s)
        hits += ci.low <= 3.0 <= ci.high
        assert ci.low <= ci.estimate <= ci.high
    assert 0.88 <= hits / 200 <= 0.99


def test_interval_width_shrinks_with_more_examples():
    gen = torch.Generator().manual_seed(1)
    small = intervals.mean(torch.randn(20, generator=gen))
    large = intervals.mean(torch.randn(2000, generator=gen))
    assert (large.high - large.low) < 0.3 * (small.high - small.low)


def test_accuracy_from_bools_and_general_statistic_agree_with_mean():
    correct = torch.tensor([True] * 30 + [False] * 10)
    a = intervals.mean(correct, seed=3)
    b = intervals.bootstrap(lambda v: v.mean(), correct, seed=3)
    assert a.estimate == pytest.approx(0.75)
    assert a.low == pytest.approx(b.low) and a.high == pytest.approx(b.high)


def test_paired_interval_is_tighter_than_independent_for_correlated_conditions():
    gen = torch.Generator().manual_seed(2)
    base = torch.randn(100, generator=gen) * 5
    after = base - 0.5 + 0.1 * torch.randn(100, generator=gen)
    p = intervals.paired(lambda a, b: (a - b).mean(), base, after)
    d = intervals.difference(base, after)
    assert p.above(0.3) and not d.above(0.3)
    assert p.estimate == pytest.approx(d.estimate)


def test_statistic_that_is_undefined_on_some_resamples_drops_them():
    y = torch.tensor([1, 0, 0, 0, 0, 0, 0, 0])
    ci = intervals.bootstrap(lambda v: v.sum() / v.sum() if v.sum() else float("nan"), y, n_resamples=200)
    assert ci.low == 1.0 and ci.high == 1.0


def test_bad_input_says_what_is_wrong():
    with pytest.raises(InputError, match="first dimension"):
        intervals.paired(lambda a, b: 0.0, torch.zeros(3), torch.zeros(4))
    with pytest.raises(InputError, match="at least one example"):
        intervals.mean(torch.zeros(0))
    with pytest.raises(InputError, match="verdict must be one of"):
        intervals.Claim("x", "yes")


def test_claims_table_and_json():
    ci = intervals.Interval(0.64, 0.49, 0.78, 40)
    c = intervals.Claim("faithful at 10%", intervals.verdict(ci.above(0.4)), ci, intervals.Interval(0.1, 0.0, 0.2, 40))
    assert c.verdict == "reproduced"
    md = intervals.claims_markdown([c])
    assert "| faithful at 10% | **reproduced** | 0.64 [0.49, 0.78] | 0.10 [0.00, 0.20] |" in md
    assert intervals.Interval.from_json(c.to_json()["evidence"]) == ci
    assert ci.format(percent=True, digits=2) == "64% [49%, 78%]"
    assert intervals.verdict(False, partly=True) == "partly"


def test_statistics_to_bootstrap_match_their_definitions_and_batch_over_resamples():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(20, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)
    assert torch.isclose(intervals.mean_difference(a, b), (a - b).mean())
    base, source = torch.zeros(20, dtype=torch.float64), torch.full((20,), 2.0, dtype=torch.float64)
    assert float(intervals.recovery(torch.ones(20, dtype=torch.float64), base, source)) == 0.5
    pred = torch.tensor([1, 1, 0, 0], dtype=torch.float64)
    lab = torch.tensor([1, 0, 1, 0], dtype=torch.float64)
    assert float(intervals.f1(pred, lab)) == 0.5  # precision 1/2, recall 1/2
    assert float(intervals.f1(torch.zeros(4, dtype=torch.float64), lab)) == 0.0  # nothing right: 0, not NaN
    # a covariate that explains y fully leaves x's own signal
    z = torch.randn(40, 1, generator=g, dtype=torch.float64)
    x = torch.randn(40, generator=g, dtype=torch.float64)
    y = x + 5 * z[:, 0]
    assert float(intervals.partial_correlation(x, y, z)) > 0.99
    from codecircuits.heads import partial_correlation as heads_pc

    assert abs(float(intervals.partial_correlation(x, y, z)) - float(heads_pc(x, y[:, None], z)[0])) < 1e-5
    # emergence: the mean over examples reaches half its final value at layer 2 and stays
    lens = torch.tensor([[0.0, 0.1, 0.6, 0.8, 1.0]] * 3, dtype=torch.float64)
    assert float(intervals.emergence_layer(lens, 0.5)) == 2.0
    assert torch.isnan(intervals.emergence_layer(-lens, 0.5))  # a final value <= 0 never emerges
    # batched: a leading resample axis gives one value per resample, as intervals.statistic passes them
    assert intervals.emergence_layer(torch.stack([lens, lens]), 0.5).tolist() == [2.0, 2.0]
    iv = intervals.statistic(intervals.mean_difference, a, b, n_resamples=200)
    assert iv.low <= float((a - b).mean()) <= iv.high
