"""Test-only fault injection for the Ray engine.

``FaultyRayEngine(cfg, core, plan)`` is a ``RayEngine`` whose workers are
``FaultyTaskWorker``s; ``plan`` maps a worker slot to ``(step, after_tasks, mode)``:
at meta-step ``step``, after ``after_tasks`` tasks of its shard (with a vmapped
executor, the whole shard is one call: ``after_tasks`` 0), the worker dies by
``sigkill`` (the process), ``ray_kill`` (this actor) or ``hang`` (SIGSTOP), or
``raise``s an error as the user's code would. Only the workers present at start are
armed: replacements behave normally.
"""
from __future__ import annotations

import os
import signal
import sys
import time

from ray import cloudpickle

from distmeta.engine.ray_engine import RayEngine
from distmeta.engine.ray_worker import TaskWorker

# Ray workers cannot import this test module: ship its classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def fail(mode: str, step: int) -> None:
    if mode == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "ray_kill":
        import ray

        ray.kill(ray.get_runtime_context().current_actor)
        time.sleep(60)
    elif mode == "hang":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif mode == "raise":
        raise ValueError(f"injected fault in meta-step {step}")
    else:
        raise ValueError(f"unknown fault mode {mode!r}")


class FaultyTaskWorker(TaskWorker):
    """A ``TaskWorker`` that can be armed to fail before the k-th task of a shard."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._fault = None            # (step, after_tasks, mode)
        self._step, self._tasks = -1, 0
        algorithm = self.core.algorithm
        task_gradient = algorithm.task_gradient

        def counted(*a, **kw):        # called once per task (loop) or once per shard (vmap)
            if self._fault is not None and self._fault[:2] == (self._step, self._tasks):
                fail(self._fault[2], self._step)
            self._tasks += 1
            return task_gradient(*a, **kw)

        algorithm.task_gradient = counted

    def arm(self, step: int, after_tasks: int, mode: str) -> None:
        self._fault = (step, after_tasks, mode)

    def _shard(self, flat_params, step, start, stop):
        self._step, self._tasks = step, 0
        return super()._shard(flat_params, step, start, stop)


class FaultyRayEngine(RayEngine):
    worker_cls = FaultyTaskWorker

    def __init__(self, cfg, core, plan):
        import ray

        super().__init__(cfg, core)
        workers = self.pool.live()
        ray.get([workers[slot].arm.remote(*fault) for slot, fault in plan.items()])
