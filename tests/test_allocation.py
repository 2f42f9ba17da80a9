"""The per-layer allocation of ``convert(to='auto')`` on numbers worked out by hand."""

import itertools

import pytest

from leanconv.conversion.allocation import OutOfReach, Point, allocate, front, whole_front

# layer A: dense 4 ms; a3 is slower and worse than a2 (dominated)
A = [Point(4.0, 0.0, "dense"), Point(3.0, 0.01, "a1"), Point(1.0, 0.05, "a2"), Point(2.5, 0.5, "a3")]
# layer B: b3 is slower than dense (dropped); b1 lies in a dent of the hull dense -> b2
B = [Point(3.0, 0.0, "dense"), Point(2.0, 0.04, "b1"), Point(1.5, 0.045, "b2"), Point(3.5, 0.001, "b3")]
FIXED = 1.0


def keys(points):
    return [p.key for p in points]


def test_front_drops_dominated_and_slower_than_dense():
    assert keys(front(A)) == ["dense", "a1", "a2"]
    assert keys(front(B)) == ["dense", "b1", "b2"]


def brute_force(fronts, budget, fixed):
    """The exact least-damage mix by trying every combination (the reference)."""
    best = None
    paths = sorted(fronts)
    for combo in itertools.product(*(range(len(fronts[p])) for p in paths)):
        ms = fixed + sum(fronts[p][i].ms for p, i in zip(paths, combo))
        damage = sum(fronts[p][i].damage for p, i in zip(paths, combo))
        if ms <= budget + 1e-12 and (best is None or damage < best[0] - 1e-15):
            best = (damage, dict(zip(paths, combo)))
    return best


@pytest.mark.parametrize("budget, expected", [
    # 8 ms all dense. Save 2 ms: a2 alone (0.05) beats a1 + b2 (5.5 ms, 0.055)
    (6.0, {"A": "a2", "B": "dense"}),
    # 4.6 ms: a2 + b1 (4.0 ms, 0.09) beats a2 + b2 (3.5 ms, 0.095); b1 lies in a dent of B's
    # convex hull, where a greedy walk on error per ms saved would never stop
    (4.6, {"A": "a2", "B": "b1"}),
    (8.0, {"A": "dense", "B": "dense"}),
    (3.5, {"A": "a2", "B": "b2"}),
])
def test_allocate_picks_the_mix_worked_out_by_hand(budget, expected):
    fronts = {"A": front(A), "B": front(B)}
    chosen = allocate(fronts, budget, FIXED)
    assert {p: fronts[p][i].key for p, i in chosen.items()} == expected
    damage, exact = brute_force(fronts, budget, FIXED)
    assert sum(fronts[p][i].damage for p, i in chosen.items()) == pytest.approx(damage)


def test_allocate_out_of_reach_names_the_floor():
    fronts = {"A": front(A), "B": front(B)}
    with pytest.raises(OutOfReach, match=r"budget 3 ms is below 3.5 ms"):
        allocate(fronts, 3.0, FIXED)


def test_whole_front_is_every_least_damage_mix():
    fronts = {"A": front(A), "B": front(B)}
    # all 9 combinations by hand (ms incl. 1 ms fixed, damage), keeping the non-dominated ones
    assert whole_front(fronts, FIXED) == [pytest.approx(x) for x in [
        (3.5, 0.095), (4.0, 0.09), (5.0, 0.05), (6.5, 0.045), (7.0, 0.01), (8.0, 0.0)]]


def test_allocate_matches_brute_force_on_random_fronts():
    import random

    rng = random.Random(0)
    for _ in range(200):
        fronts = {}
        for name in "ABC":
            dense = rng.uniform(1, 5)
            points = [Point(dense, 0.0)] + [Point(rng.uniform(0.2, 6), rng.uniform(0.001, 1)) for _ in range(4)]
            fronts[name] = front(points)
        budget = rng.uniform(1, 15)
        try:
            chosen = allocate(fronts, budget, 0.5)
        except OutOfReach:
            assert brute_force(fronts, budget, 0.5) is None
            continue
        total = 0.5 + sum(fronts[p][i].ms for p, i in chosen.items())
        assert total <= budget + 1e-9
        damage = sum(fronts[p][i].damage for p, i in chosen.items())
        exact = brute_force(fronts, budget, 0.5)[0]
        assert damage == pytest.approx(exact)


def test_layer_share_steps_on_the_secant_kept_inside_the_bracket():
    from leanconv.conversion.allocation import layer_share

    # (layers' predicted ms, whole model measured ms); budget 4 ms
    assert layer_share([(2.0, 3.0), (4.0, 5.0)], 4.0) == pytest.approx(3.0)  # slope 1: halfway
    # a bracket whose line reaches the budget near its low end is kept a tenth inside it
    assert layer_share([(2.0, 3.95), (4.0, 5.0)], 4.0) == pytest.approx(2.2)
    # no bracket: on the line through the last two (slope 1/2), from either side
    assert layer_share([(4.0, 5.0), (3.5, 4.75)], 4.0) == pytest.approx(2.0)
    assert layer_share([(1.0, 2.0), (2.0, 2.5)], 4.0) == pytest.approx(5.0)
    # the bracket (the fastest-predicted attempt over the budget) wins over the last two:
    # (1, 2) met, (3, 5) over -> slope 3/2; the last two, (3, 5) and (3.5, 6), would say 2.5
    assert layer_share([(1.0, 2.0), (3.0, 5.0), (3.5, 6.0)], 4.0) == pytest.approx(1.0 + 2.0 / 1.5)
    # lines too flat or too steep to be a trend, one point, or a falling line: no step
    assert layer_share([(4.0, 5.0), (3.5, 4.99)], 4.0) is None
    assert layer_share([(4.0, 5.0), (3.9, 6.0)], 4.0) is None
    assert layer_share([(4.0, 5.0)], 4.0) is None
    assert layer_share([(4.0, 5.0), (4.0, 4.5)], 4.0) is None
    # never below 0 ms for the layers
    assert layer_share([(1.0, 9.0), (2.0, 10.0)], 4.0) == 0.0
