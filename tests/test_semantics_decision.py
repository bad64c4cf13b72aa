"""plugin.semantics.decision against hand-computed cases, and its two limits (flat, CRM)."""
from __future__ import annotations

import numpy as np
import pytest

from plugin.semantics.decision import expected_cost, hierarchical_decision, sharpened
from plugin.semantics.inference import ProbabilityError, crm_scores

# cat, dog, wolf, car, bus: dog/wolf siblings (1), cat meets them at 2, vehicles at 4, car/bus siblings (1)
C5 = np.array([[0, 2, 2, 4, 4],
               [2, 0, 1, 4, 4],
               [2, 1, 0, 4, 4],
               [4, 4, 4, 0, 1],
               [4, 4, 4, 1, 0]], float)
CAT, DOG, WOLF, CAR, BUS = range(5)


def _order(scores):
    return list(np.argsort(-scores[0], kind="stable"))


def test_expected_cost_hand_computed():
    p = np.array([[0.05, 0.31, 0.29, 0.35, 0.0]])
    # dog: .05*2 + .29*1 + .35*4 = 1.79; wolf: .05*2 + .31*1 + 1.4 = 1.81; cat: .62 + .58 + 1.4 = 2.6;
    # car: (.05 + .31 + .29) * 4 = 2.6; bus: 2.6 + .35 = 2.95
    np.testing.assert_allclose(expected_cost(p, C5)[0], [2.6, 1.79, 1.81, 2.6, 2.95])
    # gamma = 2 squares the costs: dog .05*4 + .29*1 + .35*16 = 6.09
    assert expected_cost(p, C5, gamma=2.0)[0, DOG] == pytest.approx(6.09)
    q = np.array([0.0025, 0.0961, 0.0841, 0.1225, 0.0]) / 0.3052  # p ** 2, renormalised
    np.testing.assert_allclose(sharpened(p, 0.5)[0], q)
    np.testing.assert_allclose(expected_cost(p, C5, sharpen=0.5)[0], q @ C5)


def test_gate_switches_between_flat_argmax_and_least_expected_cost():
    p = np.array([[0.05, 0.31, 0.29, 0.35, 0.0]])  # flat says car; the mass is on the dog/wolf pair
    unsure = hierarchical_decision(p, C5, gate=0.5, keep=0.3)
    # max p .35 < gate: top-1 is the least expected cost (dog, 1.79); kept (p >= .3): car; rest by risk
    assert _order(unsure) == [DOG, CAR, WOLF, CAT, BUS]
    sure = hierarchical_decision(p, C5, gate=0.3, keep=0.3)  # .35 >= .3: the flat argmax stays
    assert _order(sure) == [CAR, DOG, WOLF, CAT, BUS]


def test_keep_protects_plausible_classes_from_crm_reordering():
    p = np.array([[0.40, 0.02, 0.03, 0.45, 0.10]])
    # risk: cat 2.30, dog 3.03, wolf 3.02, car 1.90, bus 2.25 -> CRM order car, bus, cat, wolf, dog
    np.testing.assert_allclose(expected_cost(p, C5)[0], [2.30, 3.03, 3.02, 1.90, 2.25])
    assert _order(hierarchical_decision(p, C5, gate=0.5, keep=0.35)) == [CAR, CAT, BUS, WOLF, DOG]
    assert _order(hierarchical_decision(p, C5, gate=0.5, keep=0.5)) == [CAR, BUS, CAT, WOLF, DOG]


def test_limits_are_flat_and_crm():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(5, 0.3), size=50)
    flat = hierarchical_decision(p, C5, gate=0.0, keep=0.0)
    assert (np.argsort(-flat, axis=1, kind="stable") == np.argsort(-p, axis=1, kind="stable")).all()
    crm = hierarchical_decision(p, C5, gate=1.01, keep=1.01)
    assert (np.argsort(-crm, axis=1, kind="stable") == np.argsort(-crm_scores(p, C5), axis=1, kind="stable")).all()


@pytest.mark.parametrize("kw,match", [({"gate": -0.1}, "gate"), ({"keep": np.nan}, "keep"),
                                      ({"sharpen": 0.0}, "sharpen"), ({"gamma": -1.0}, "gamma")])
def test_bad_parameters_are_refused(kw, match):
    with pytest.raises(ProbabilityError, match=match):
        hierarchical_decision(np.array([[0.5, 0.5, 0, 0, 0]]), C5, **kw)


def test_bad_inputs_are_refused():
    with pytest.raises(ProbabilityError, match="sum to 1"):
        hierarchical_decision(np.array([[0.5, 0.2, 0, 0, 0]]), C5)
    with pytest.raises(ProbabilityError, match="cost matrix"):
        hierarchical_decision(np.array([[0.5, 0.5, 0, 0, 0]]), C5[:3, :3])
