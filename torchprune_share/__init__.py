"""torchprune_share: Deep Compression (pruning, trained weight sharing, Huffman coding) for PyTorch."""

__all__: list[str] = []
