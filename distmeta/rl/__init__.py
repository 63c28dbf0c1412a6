"""Meta-RL on RLlib's new API stack: RL^2 (PPO with a recurrent policy over trials)
and MAML-RL (an RLlib Algorithm whose EnvRunners sample and adapt tasks).

Both are methods of the one run loop (:mod:`distmeta.method`):
:class:`distmeta.rl.rl2_method.RL2Method` and
:class:`distmeta.rl.maml_method.MAMLRLMethod`. Ray and RLlib are imported only by
those submodules, so ``import distmeta.rl`` stays light.
"""
