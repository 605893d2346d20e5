"""Small backbones: a tiny convolutional network and a per-position wrapper.

* :class:`SmallConvNet`: a tiny random convolutional network for tests and smoke runs.
* :class:`PerPosition`: applies one module to every position of a sequence (Word50's
  characters).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PerPosition", "SmallConvNet"]


class SmallConvNet(nn.Module):
    """A tiny random convolutional backbone for tests and smoke runs.

    Three stride-2 3x3 convolutions with ReLU (``width``, ``2 * width``, ``4 * width`` channels),
    an adaptive average pool to 2x2 and a linear layer with ReLU, so any input size of at least
    8x8 works.

    Args:
        out_features: size of the output feature vector.
        in_channels: channels of the input images.
        width: channels of the first convolution.

    Shape:
        - input: ``(B, in_channels, H, W)``.
        - output: ``(B, out_features)``, non-negative (after ReLU, like AlexNet's fc7).
    """

    def __init__(self, out_features: int = 64, in_channels: int = 3, width: int = 8) -> None:
        super().__init__()
        for name, value in (
            ("out_features", out_features),
            ("in_channels", in_channels),
            ("width", width),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SmallConvNet {name} must be a positive int, got {value!r}")
        self.out_features = out_features
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, 4 * width, kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((2, 2)),
        )
        self.fc = nn.Linear(4 * width * 4, out_features)

    def forward(self, x: Tensor) -> Tensor:
        """Compute features.

        Args:
            x: ``(B, in_channels, H, W)`` images.

        Returns:
            ``(B, out_features)`` features.
        """
        return torch.relu(self.fc(torch.flatten(self.features(x), 1)))


class PerPosition(nn.Module):
    """Apply one module to every position of a batch of sequences, sharing its weights.

    The positions are folded into the batch: ``(B, N, *rest) -> (B * N, *rest) -> module ->
    (B * N, *out) -> (B, N, *out)``. Word50 uses it to run the same character MLP on each of a
    word's five 28x28 images.

    Args:
        module: maps ``(M, *rest)`` to ``(M, *out)``; its ``out_features`` attribute, if any,
            is exposed as this wrapper's.

    Shape:
        - input: ``(B, N, *rest)``.
        - output: ``(B, N, *out)``, e.g. ``(B, N, F)``.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"PerPosition wraps an nn.Module, got {type(module).__name__}")
        self.module = module
        out = getattr(module, "out_features", None)
        if out is not None:
            self.out_features = out

    def forward(self, x: Tensor) -> Tensor:
        """Apply the module at every position.

        Args:
            x: ``(B, N, *rest)``.

        Returns:
            ``(B, N, *out)``.
        """
        if x.dim() < 2:
            raise ValueError(
                f"PerPosition expects input of shape (B, N, *rest); got {tuple(x.shape)}"
            )
        batch, positions = x.shape[:2]
        y = self.module(x.reshape(batch * positions, *x.shape[2:]))
        if y.dim() < 1 or y.shape[0] != batch * positions:
            raise ValueError(
                f"PerPosition: the wrapped module returned shape {tuple(y.shape)} for "
                f"{batch * positions} inputs; expected a leading dimension of {batch * positions}"
            )
        return y.reshape(batch, positions, *y.shape[1:])
