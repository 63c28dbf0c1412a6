"""TaskPrefetcher: background sampling returns exactly the on-demand tasks, wrong
guesses fall back to sampling on demand, and sampling never runs concurrently."""
import threading
import time

import torch

from distmeta.config import from_dict
from distmeta.engine.core import MetaCore
from distmeta.engine.prefetch import TaskPrefetcher


def sinusoid_core():
    return MetaCore(from_dict({"task": {"kind": "sinusoid", "shots": 5, "queries": 5},
                               "model": {"name": "mlp", "hidden": [8]}, "algorithm": {"name": "maml"}}))


def test_prefetched_tasks_equal_on_demand_tasks():
    core = sinusoid_core()
    pre = TaskPrefetcher(lambda step, idx: core.make_tasks("train", step, idx))
    pre.ahead(3, range(2, 6))
    got = pre.take(3, range(2, 6))
    want = core.make_tasks("train", 3, range(2, 6))
    assert pre.hits == 1 and pre.misses == 0
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k])
    pre.close()


def test_wrong_guess_is_sampled_on_demand():
    calls = []
    pre = TaskPrefetcher(lambda step, idx: calls.append((step, tuple(idx))) or [(step, i) for i in idx])
    pre.ahead(5, range(0, 3))
    assert pre.take(5, range(0, 2)) == [(5, 0), (5, 1)]   # the shard changed: re-sampled
    assert pre.take(6, range(0, 2)) == [(6, 0), (6, 1)]   # nothing prefetched
    assert (pre.hits, pre.misses) == (0, 2)
    assert calls == [(5, (0, 1, 2)), (5, (0, 1)), (6, (0, 1))]
    pre.close()


def test_sampling_never_overlaps():
    busy = threading.Lock()
    overlaps = []

    def sample(step, idx):
        if not busy.acquire(blocking=False):
            overlaps.append(step)
            return []
        try:
            time.sleep(0.02)
            return [step]
        finally:
            busy.release()

    pre = TaskPrefetcher(sample)
    for step in range(10):
        pre.ahead(step, [0])
        pre.ahead(step + 100, [0])           # a guess that is never taken
        assert pre.take(step, [0]) == [step]  # sampled on demand after the guess in flight
    assert overlaps == []
    pre.close()


def test_failed_background_sampling_surfaces_on_demand():
    state = {"fail": True}

    def sample(step, idx):
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("flaky storage")
        return [step]

    pre = TaskPrefetcher(sample)
    pre.ahead(1, [0])
    assert pre.take(1, [0]) == [1]
    pre.close()
