"""The ``rl:`` section's types live in :mod:`distmeta.schema` (``RLConfig``,
``RL2Section``, ``MAMLSection``); this module re-exports them."""
from distmeta.schema import MAMLSection, RL2Section, RLConfig  # noqa: F401
