"""torchprune_share: Deep Compression for PyTorch.

Magnitude pruning, trained k-means weight sharing and Huffman-coded model files, built
as extensions of :mod:`torch.nn.utils.prune` and :mod:`torch.nn.utils.parametrize`.
"""

from .checkpoint import CheckpointError, bake, compressed_tensors, load_state_dict
from .parametrizations import PruningMask, WeightSharing
from .pruning import (
    LevelPruningMethod,
    SigmaThresholdPruningMethod,
    global_level_prune,
    level_prune,
    sigma_prune,
)
from .sharing import recluster, register_weight_sharing

__all__ = [
    "CheckpointError",
    "LevelPruningMethod",
    "PruningMask",
    "SigmaThresholdPruningMethod",
    "WeightSharing",
    "bake",
    "compressed_tensors",
    "global_level_prune",
    "level_prune",
    "load_state_dict",
    "recluster",
    "register_weight_sharing",
    "sigma_prune",
]
