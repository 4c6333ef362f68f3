"""The networks of Deep Compression's MNIST experiments, sized for any square input."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["LeNet5", "LeNet300100", "build_model"]


class LeNet300100(nn.Module):
    """LeNet-300-100: a fully connected ``in-300-100-10`` network (Han et al., Table 1).

    Args:
        image_size (int): side of the square input image (8 for digits, 28 for MNIST).
        num_classes (int): number of outputs. Default: 10.

    Example:
        >>> LeNet300100(8)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(image_size * image_size, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))


class LeNet5(nn.Module):
    """Caffe's LeNet-5: conv 20 (5x5) - pool - conv 50 (5x5) - pool - fc 500 - fc 10.

    For 8x8 inputs (digits) the convolutions are padded (``padding=2``) so that the two
    poolings leave a 2x2 map; for 28x28 the layers are exactly Caffe's.

    Args:
        image_size (int): side of the square input image. Default: 28.
        num_classes (int): number of outputs. Default: 10.

    Example:
        >>> LeNet5(8)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        pad = 0 if image_size >= 28 else 2
        side = image_size
        for _ in range(2):
            side = (side + 2 * pad - 4) // 2
        self.conv1 = nn.Conv2d(1, 20, 5, padding=pad)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=pad)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(50 * side * side, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.conv1(x))
        x = self.pool(self.conv2(x))
        return self.fc2(self.relu(self.fc1(x.flatten(1))))


def build_model(name: str, image_size: int, num_classes: int = 10) -> nn.Module:
    """Build ``"lenet300"`` (LeNet-300-100) or ``"lenet5"`` for a square input.

    Args:
        name (str): ``"lenet300"`` or ``"lenet5"``.
        image_size (int): side of the input image.
        num_classes (int): number of outputs. Default: 10.

    Returns:
        The freshly initialised model.

    Example:
        >>> type(build_model("lenet5", 8)).__name__
        'LeNet5'
    """
    models = {"lenet300": LeNet300100, "lenet5": LeNet5}
    if name not in models:
        raise ValueError(f"model must be one of {sorted(models)}, got {name!r}")
    return models[name](image_size, num_classes)
