"""The routing cost: uncovered prefill + fetch penalty per tier + a load term."""

import pytest

from kvstore.routing import RouteCost, WorkerView, rank


def test_holder_of_the_prefix_wins_at_equal_load():
    views = [
        WorkerView("a", "a:1", {}, load=0),
        WorkerView("b", "b:1", {"dram": 4}, load=0),
    ]
    best = rank(views, prompt_tokens=80, block_tokens=16)
    assert [r.view.worker for r in best] == ["b", "a"]
    assert best[0].uncovered_tokens == 16
    assert best[1].uncovered_tokens == 80


def test_load_term_spreads_work_and_zero_weight_chases_hits():
    views = [
        WorkerView("hot", "h:1", {"hbm": 4}, load=500),
        WorkerView("cold", "c:1", {}, load=0),
    ]
    assert rank(views, 64, 16)[0].view.worker == "cold"
    assert rank(views, 64, 16, RouteCost(load_weight=0.0))[0].view.worker == "hot"


def test_slower_tiers_cost_more_than_hbm():
    views = [WorkerView("disk", "d:1", {"disk": 4}), WorkerView("hbm", "h:1", {"hbm": 4})]
    ranked = rank(views, 64, 16)
    assert ranked[0].view.worker == "hbm"
    assert ranked[0].cost == 0
    assert ranked[1].cost == pytest.approx(64 * 0.15)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        RouteCost(load_weight=-1)
    with pytest.raises(ValueError):
        RouteCost(tier_penalty={"dram": 2.0})
    with pytest.raises(ValueError):
        rank([], 10, 0)
