"""The evaluation's statistics and reference scores against hand-computed cases."""

from __future__ import annotations

import doctest

import pytest

from studio.evaluate import judge, scores, stats


def test_wilson_interval_hand_computed():
    # 8/10: centre (0.8 + 1.96²/20) / (1 + 1.96²/10) = 0.71673, half-width 1.96·sqrt(0.025604)/1.38415
    low, high = stats.wilson(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    # 0/10: the classic upper bound 0.2775 (a bare 0% would hide that)
    low, high = stats.wilson(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    # symmetric: 10/10 mirrors 0/10
    assert [round(x, 6) for x in stats.wilson(10, 10)] == [round(1 - high, 6), 1.0]
    assert stats.wilson(0, 0) == (0.0, 1.0)


def test_win_rate_counts_a_tie_as_half_with_its_interval():
    rate = stats.win_rate(["B", "B", "B", "tie", "A"])
    assert (rate.wins, rate.ties, rate.losses, rate.n) == (3, 1, 1, 5)
    assert rate.rate == pytest.approx(0.7)
    assert rate.interval == pytest.approx(stats.wilson(3.5, 5))
    assert rate.text().startswith("0.70 [") and "n=5 (3 wins, 1 ties, 1 losses)" in rate.text()
    with pytest.raises(ValueError, match="not among"):
        stats.win_rate(["B", "left"])


def test_both_orders_tie_rule():
    assert stats.both_orders("B", "B") == "B"
    assert stats.both_orders("A", "A") == "A"
    assert stats.both_orders("A", "B") == "tie"  # split: the judge followed the position
    assert stats.both_orders("B", "tie") == "tie"
    assert stats.both_orders("tie", "tie") == "tie"
    with pytest.raises(ValueError, match="verdict"):
        stats.both_orders("1", "B")


def test_position_bias_cancels():
    # a judge that always prefers the answer shown first: A in order 1, B in order 2 -> tie
    first = judge.to_model(judge.parse("[[1]]")[0], a_first=True)
    second = judge.to_model(judge.parse("[[1]]")[0], a_first=False)
    assert (first, second) == ("A", "B")
    assert stats.both_orders(first, second) == "tie"
    # a judge that prefers B's answer wherever it stands
    assert stats.both_orders(judge.to_model("2", True), judge.to_model("1", False)) == "B"


def test_verdict_parsing():
    assert judge.parse("Answer 2 is clearer. [[2]]") == ("2", True)
    assert judge.parse("[[ TIE ]]") == ("tie", True)
    assert judge.parse("I prefer answer 1.") == ("1", False)
    assert judge.parse("hmm") == ("tie", False)


def test_cohen_kappa_hand_computed():
    # observed 4/6; chance (3·3 + 2·3 + 1·0) / 36 = 15/36; kappa = (24-15)/(36-15) = 9/21
    agreement = stats.cohen_kappa(["A", "A", "A", "B", "B", "tie"], ["A", "A", "B", "B", "B", "A"])
    assert agreement.n == 6
    assert agreement.percent == pytest.approx(400 / 6)
    assert agreement.kappa == pytest.approx(9 / 21)
    # perfect agreement on two labels: kappa 1; one label only: chance is 1, kappa undefined
    assert stats.cohen_kappa(["A", "B"], ["A", "B"]).kappa == pytest.approx(1.0)
    assert stats.cohen_kappa(["B", "B"], ["B", "B"]).kappa is None
    with pytest.raises(ValueError, match="paired"):
        stats.cohen_kappa(["A"], [])


def test_reference_scores_hand_computed():
    assert scores.normalize("The  Capital, of France!") == "capital of france"
    assert scores.exact_match("Paris.", "paris") == 1.0
    assert scores.exact_match("Paris, France", "Paris") == 0.0
    # got {paris, is, capital}, want {capital, is, paris, france}: P 1, R 3/4, F1 6/7
    assert scores.token_f1("Paris is the capital", "the capital is Paris, France") == pytest.approx(6 / 7)
    assert scores.token_f1("", "") == 1.0 and scores.token_f1("x", "") == 0.0
    # longest common word subsequence "the cat on mat": 4 of 6 words each way
    assert scores.rouge_l("the cat lay on a mat", "the cat sat on the mat") == pytest.approx(4 / 6)
    # the stemmer: "jumps" and "jumping" count as the same word
    assert scores.rouge_l("dogs jumping", "dog jumps") == pytest.approx(1.0)


def test_perplexity_pools_tokens():
    parts = [scores.Likelihood(2.0, 1), scores.Likelihood(4.0, 3)]
    assert scores.perplexity(parts) == pytest.approx(2.718281828 ** (6 / 4))
    assert scores.mean_log_likelihood(parts) == pytest.approx(-1.5)
    assert scores.perplexity([]) is None


def test_docstring_examples_hold():
    for module in (stats, scores, judge):
        failed, _ = doctest.testmod(module)
        assert failed == 0, module.__name__
