"""The demo's choice of its best setting: the lowest FD ratio among the settings of at most MAX_NFE UNet evaluations."""

from scratch_diffusion.demo.sampling import MAX_NFE, SampleSet, eligible, pick_best


def _set(sampler: str, steps: int, nfe: int, ratio: float) -> SampleSet:
    return SampleSet(sampler, steps, 1.0, 100, "sweep", nfe=nfe, results={"fd_ratio": ratio})


def test_a_better_but_costlier_setting_is_not_chosen():
    heun = _set("flow Heun", 10, 2 * 10 - 1, 1.01)
    euler = _set("flow Euler", 10, 10, 1.20)
    dpm = _set("DPM-Solver++", 5, 5, 1.30)
    assert heun.nfe > MAX_NFE
    assert eligible([heun, euler, dpm]) == [euler, dpm]
    assert pick_best([heun, euler, dpm]) is euler


def test_when_nothing_is_cheap_enough_every_setting_competes():
    costly = [_set("flow Heun", 25, 49, 1.3), _set("flow Heun", 50, 99, 1.1)]
    assert eligible(costly) == costly
    assert pick_best(costly).steps == 50
