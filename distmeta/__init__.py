"""distmeta: distributed meta-learning on Ray.

Public API: ``distmeta.train(config)`` runs the one training loop and returns
the run folder; ``distmeta.load(path)`` returns an adaptable model
(``model.adapt(support_x, support_y).predict(query_x)``); the registries in
:mod:`distmeta.registry` accept user datasets, tasks, models and algorithms.
"""
__version__ = "0.1.0"


def train(config=None, out=None, steps=None, resume=None, **kwargs):
    """Train from an :class:`~distmeta.config.ExperimentConfig`, a dict or a YAML path."""
    from distmeta.engine.trainer import train as _train

    return _train(config, out=out, steps=steps, resume=resume, **kwargs)


def load(path, device="cpu", checkpoint="final"):
    """Load a run folder (its ``final`` or ``best`` checkpoint) or a checkpoint file as an
    adaptable model (never executes checkpoint code)."""
    from distmeta.api import load as _load

    return _load(path, device=device, checkpoint=checkpoint)


__all__ = ["train", "load", "__version__"]
