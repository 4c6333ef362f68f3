"""The demo's LeNet models under their 0.1.0 name; they live in :mod:`torchprune_share.demo.models`.

Kept so that code written for 0.1.0 (``from torchprune_share.models import LeNet5``)
keeps working. New code imports :mod:`torchprune_share.demo.models`. The library itself
never imports this module.

Example:
    >>> from torchprune_share import models
    >>> from torchprune_share.demo import models as demo_models
    >>> models.build_model is demo_models.build_model
    True
"""

from .demo.models import LeNet5, LeNet300100, build_model

__all__ = ["LeNet5", "LeNet300100", "build_model"]
