"""The seeds' statistics and the significance rule, on numbers worked out by hand."""
import math

import pytest

from memopt.stats import Spread, significant, spread, verdict


def test_spread_is_mean_sample_std_min_max():
    s = spread([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.min, s.max) == (3, 2.0, 1.0, 3.0)
    assert s.std == pytest.approx(1.0)  # sample std: sqrt(((1-2)^2 + 0 + (3-2)^2) / 2)
    assert s.text(".1f") == "2.0 ± 1.0 (1.0–3.0)"


def test_one_seed_has_no_spread_and_shows_the_value_alone():
    s = spread([0.5])
    assert (s.n, s.mean, s.std, s.min, s.max) == (1, 0.5, 0.0, 0.5, 0.5)
    assert s.text(".2f") == "0.50"


def test_values_that_are_not_finite_are_left_out_and_none_at_all_is_an_error():
    assert spread([1.0, math.nan, 3.0, math.inf, None]) == spread([1.0, 3.0])
    with pytest.raises(ValueError, match="no finite value"):
        spread([math.nan])


def test_a_gap_counts_only_beyond_the_sum_of_the_standard_deviations():
    a = Spread(3, 1.00, 0.02, 0.98, 1.02)
    assert significant(a, Spread(3, 1.05, 0.02, 1.03, 1.07)) is True  # gap 0.05 > 0.04
    assert significant(a, Spread(3, 1.03, 0.02, 1.01, 1.05)) is False  # gap 0.03 < 0.04
    assert significant(Spread(3, 1.03, 0.02, 1.01, 1.05), a) is False  # symmetric
    assert verdict(a, Spread(3, 1.03, 0.02, 1.01, 1.05)) == "not significant"
    assert verdict(a, Spread(3, 1.05, 0.02, 1.03, 1.07)) == "significant"


def test_with_one_seed_on_either_side_nothing_is_claimed():
    one, three = spread([1.0]), spread([2.0, 2.1, 2.2])
    assert significant(one, three) is None and significant(three, one) is None
    assert verdict(one, three) == "one seed"
