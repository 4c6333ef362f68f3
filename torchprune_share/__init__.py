"""torchprune_share: Deep Compression for PyTorch.

Magnitude pruning, trained k-means weight sharing and Huffman-coded model files, built
as extensions of :mod:`torch.nn.utils.prune` and :mod:`torch.nn.utils.parametrize`.
"""

from . import bits_analysis, sensitivity
from .analysis import BitLevels, LevelKind, PruningMethodLevels, ScanResult, SparsityLevels, scan
from .bits_analysis import perform_bits_analysis
from .checkpoint import CheckpointError, bake, compressed_tensors, load_state_dict
from .config import SharingConfig
from .fileformat import (
    CompressedFileError,
    CompressionReport,
    compression_report,
    load_compressed,
    save_compressed,
)
from .inference import (
    CompressedConv1d,
    CompressedConv2d,
    CompressedLinear,
    InferenceSummary,
    inference_summary,
    to_inference,
)
from .kmeans import kmeans1d
from .parametrizations import PruningMask, WeightSharing
from .policies import LevelPruner, Quantizer, recommend_bits, recommend_sparsities
from .pruning import (
    LevelPruningMethod,
    SigmaThresholdPruningMethod,
    global_level_prune,
    level_prune,
    sigma_prune,
)
from .schedules import AGPSchedule, ConstantSchedule, SparsitySchedule
from .sensitivity import perform_sensitivity_analysis
from .sharing import recluster, register_weight_sharing
from .state import TensorState
from .summary import CompressionSummary, compression_summary

__version__ = "0.2.0"

__all__ = [
    "AGPSchedule",
    "BitLevels",
    "CheckpointError",
    "CompressedConv1d",
    "CompressedConv2d",
    "CompressedFileError",
    "CompressedLinear",
    "CompressionReport",
    "CompressionSummary",
    "ConstantSchedule",
    "InferenceSummary",
    "LevelKind",
    "LevelPruner",
    "LevelPruningMethod",
    "PruningMask",
    "PruningMethodLevels",
    "Quantizer",
    "ScanResult",
    "SharingConfig",
    "SigmaThresholdPruningMethod",
    "SparsityLevels",
    "SparsitySchedule",
    "TensorState",
    "WeightSharing",
    "bake",
    "bits_analysis",
    "compressed_tensors",
    "compression_report",
    "compression_summary",
    "global_level_prune",
    "inference_summary",
    "kmeans1d",
    "level_prune",
    "load_compressed",
    "load_state_dict",
    "perform_bits_analysis",
    "perform_sensitivity_analysis",
    "recluster",
    "recommend_bits",
    "recommend_sparsities",
    "register_weight_sharing",
    "save_compressed",
    "scan",
    "sensitivity",
    "sigma_prune",
    "to_inference",
]
