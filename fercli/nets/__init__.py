"""From a name to a network: the weights registry, checkpoints, the engines, the models.

Imports `core` and `media` (the crop a network is fed).
"""
