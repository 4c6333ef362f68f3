"""The demo application: Deep Compression of LeNets on small offline data sets.

Not part of the library: nothing outside this package and the command line imports it.
It holds the pipeline behind ``torchprune-share demo`` (:mod:`.app`), its training
stages (:mod:`.stages`), the offline data sets (:mod:`.data`) and the LeNet models
(:mod:`.models`), and uses only the library's public API.

Example:
    >>> from torchprune_share.demo import DemoConfig, run_demo
    >>> DemoConfig().model
    'lenet300'
"""

from .app import SCAN_BITS, SCAN_SPARSITIES, DemoConfig, run_demo
from .stages import prune_agp, save_and_reload, share_and_finetune, train_dense

__all__ = [
    "SCAN_BITS",
    "SCAN_SPARSITIES",
    "DemoConfig",
    "prune_agp",
    "run_demo",
    "save_and_reload",
    "share_and_finetune",
    "train_dense",
]
