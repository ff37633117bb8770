"""DD-Ranking's label-robust scores: HLR, IOR and DDRS from known accuracies."""

import math

import pytest

from dcbench_tesla.errors import UserError
from dcbench_tesla.scores import Scores, ddrs, format_scores, hard_label_recovery, improvement_over_random


def test_hlr_and_ior_are_the_differences_the_formulas_name():
    assert hard_label_recovery(acc_real_hard=0.95, acc_syn_hard=0.70) == pytest.approx(0.25)
    assert improvement_over_random(acc_syn=0.80, acc_rdm_same_rule=0.65) == pytest.approx(0.15)


def test_ddrs_matches_the_formula_by_hand():
    hlr, ior, w = 0.25, 0.15, 0.5
    alpha = 0.5 * 0.15 - 0.5 * 0.25  # = -0.05
    expected = (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))
    assert ddrs(hlr, ior, w) == pytest.approx(expected)
    assert ddrs(hlr, ior, w) == pytest.approx(0.2482, abs=1e-4)
    # the extremes map to 0 and 1; w weighs IOR against HLR
    assert ddrs(hlr=1.0, ior=0.0, weight=0.0) == pytest.approx(0.0)
    assert ddrs(hlr=0.0, ior=1.0, weight=1.0) == pytest.approx(1.0)
    assert ddrs(0.0, 0.0, 0.5) == pytest.approx((1 - math.exp(-1)) / (math.e - math.exp(-1)))
    assert ddrs(0.1, 0.3, 0.9) > ddrs(0.1, 0.3, 0.1)
    with pytest.raises(UserError, match="--ddrs-weight"):
        ddrs(0.1, 0.1, 1.5)


def test_scores_of_a_soft_set_and_what_is_missing():
    scores = Scores(acc_syn=0.80, acc_syn_hard=0.70, acc_rdm_same_rule=0.65, acc_real_hard=0.95, ddrs_weight=0.5)
    assert scores.hlr == pytest.approx(0.25) and scores.ior == pytest.approx(0.15)
    assert scores.ddrs == pytest.approx(ddrs(0.25, 0.15, 0.5))
    assert scores.to_dict()["ddrs_weight"] == 0.5 and set(scores.to_dict()) >= {"hlr", "ior", "ddrs", "acc_syn_hard"}
    assert format_scores(scores) == "HLR +25.0 pts  IOR +15.0 pts  DDRS 0.248 (w 0.5)"
    no_real = Scores(acc_syn=0.8, acc_syn_hard=0.7, acc_rdm_same_rule=0.65, acc_real_hard=None)
    assert no_real.hlr is None and no_real.ior == pytest.approx(0.15) and no_real.ddrs is None
    assert format_scores(no_real).startswith("HLR –  IOR +15.0 pts  DDRS –")
