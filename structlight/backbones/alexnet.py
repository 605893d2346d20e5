"""AlexNet, in BVLC Caffe's and torchvision's layouts, and the loading of its weight files.

* :class:`AlexNet`: the ImageNet network the paper fine-tunes on MIRFLICKR-25000, returning the
  4096 fc7 features by default; :meth:`AlexNet.load_weights` reads a local state dict and says
  how a file that does not fit differs from the network.
* The layouts' layer stacks (``_caffe_features`` and ``_caffe_classifier``,
  ``_torchvision_features`` and ``_torchvision_classifier``).
* :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD`, the input normalisation both layouts expect.

Converting BVLC's Caffe weights is in :mod:`structlight.backbones.caffe_weights`.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

__all__ = ["FC7_FEATURES", "IMAGENET_MEAN", "IMAGENET_STD", "AlexNet"]

#: ImageNet channel mean and standard deviation (RGB, pixel values in [0, 1]); the inputs
#: both AlexNet variants expect, and what ``datamodules.flickr`` normalises with.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Features AlexNet's fc7 layer produces.
FC7_FEATURES = 4096

#: Where weight files come from; quoted by every weight-loading error.
_WEIGHTS_HELP = {
    "torchvision": (
        "torchvision's ImageNet AlexNet state dict, 'alexnet-owt-7be5be79.pth' from "
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth (what "
        "torchvision.models.AlexNet_Weights.IMAGENET1K_V1 downloads; fetch it yourself, "
        "structlight never downloads)"
    ),
    "caffe": (
        "BVLC's Caffe AlexNet 'bvlc_alexnet.caffemodel' (from the Caffe model zoo, "
        "http://dl.caffe.berkeleyvision.org/bvlc_alexnet.caffemodel), converted with "
        "structlight.backbones.caffe_alexnet_state_dict and saved with torch.save"
    ),
}


def _caffe_features() -> nn.Sequential:
    """BVLC AlexNet's convolutional tower with Caffe's layer names.

    Pooling rounds up (``ceil_mode=True``) as Caffe does, so a 224x224 input gives the same
    6x6 pool5 map as Caffe's native 227x227 (224 -> conv1 54 -> pool1 27 -> 27 -> pool2 13 ->
    13 -> pool5 6), without padding conv1.
    """
    return nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 96, kernel_size=11, stride=4)),
                ("relu1", nn.ReLU(inplace=True)),
                ("norm1", nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)),
                ("pool1", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)),
                ("conv2", nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=2)),
                ("relu2", nn.ReLU(inplace=True)),
                ("norm2", nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)),
                ("pool2", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)),
                ("conv3", nn.Conv2d(256, 384, kernel_size=3, padding=1)),
                ("relu3", nn.ReLU(inplace=True)),
                ("conv4", nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=2)),
                ("relu4", nn.ReLU(inplace=True)),
                ("conv5", nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=2)),
                ("relu5", nn.ReLU(inplace=True)),
                ("pool5", nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)),
            ]
        )
    )


def _caffe_classifier(dropout: float, num_classes: int | None) -> nn.Sequential:
    """fc6-fc7 (ReLU and dropout after each, as in Caffe), plus fc8 when ``num_classes`` is set."""
    layers: list[tuple[str, nn.Module]] = [
        ("fc6", nn.Linear(256 * 6 * 6, FC7_FEATURES)),
        ("relu6", nn.ReLU(inplace=True)),
        ("drop6", nn.Dropout(p=dropout)),
        ("fc7", nn.Linear(FC7_FEATURES, FC7_FEATURES)),
        ("relu7", nn.ReLU(inplace=True)),
        ("drop7", nn.Dropout(p=dropout)),
    ]
    if num_classes is not None:
        layers.append(("fc8", nn.Linear(FC7_FEATURES, num_classes)))
    return nn.Sequential(OrderedDict(layers))


def _torchvision_features() -> nn.Sequential:
    """torchvision's AlexNet convolutional tower, same indices as ``torchvision.models.alexnet``."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _torchvision_classifier(dropout: float, num_classes: int | None) -> nn.Sequential:
    """torchvision's classifier (dropout *before* fc6 and fc7); index 6 is the class layer."""
    layers: list[nn.Module] = [
        nn.Dropout(p=dropout),
        nn.Linear(256 * 6 * 6, FC7_FEATURES),
        nn.ReLU(inplace=True),
        nn.Dropout(p=dropout),
        nn.Linear(FC7_FEATURES, FC7_FEATURES),
        nn.ReLU(inplace=True),
    ]
    if num_classes is not None:
        layers.append(nn.Linear(FC7_FEATURES, num_classes))
    return nn.Sequential(*layers)


class AlexNet(nn.Module):
    """AlexNet (Krizhevsky et al. 2012) as a feature extractor, in Caffe's or torchvision's layout.

    ``variant="caffe"`` is BVLC AlexNet, the network of the paper: conv1 96x3x11x11 stride 4,
    ReLU, local response normalisation (size 5, alpha 1e-4, beta 0.75), max-pool 3/2; conv2 256
    5x5 in 2 groups, ReLU, LRN, pool; conv3 384 3x3; conv4 384 3x3 in 2 groups; conv5 256 3x3 in
    2 groups, pool; fc6 9216-4096 and fc7 4096-4096, each followed by ReLU and dropout. That is
    56,868,224 parameters up to fc7; with the paper's 4096-76 top and 703 2x2 edge tables the
    Flickr model has 57,182,408. Pooling rounds up as in Caffe, so 224x224 inputs (the
    ``datamodules.flickr`` crops) and Caffe's 227x227 both reach a 6x6 pool5 map; module names
    are Caffe's (``features.conv1``, ``classifier.fc6``, ...).

    ``variant="torchvision"`` is ``torchvision.models.alexnet`` with identical module indices
    (``features.0``, ..., ``classifier.4``; ``classifier.6`` is the class layer), 57,003,840
    parameters up to fc7. Its dropout precedes fc6 and fc7, so its fc7 output is not dropped out.

    Both end with an adaptive average pool to 6x6 (the identity at 224x224), so other input
    sizes of at least 63x63 also work. Random initialisation is PyTorch's default.

    Args:
        variant: ``"caffe"`` or ``"torchvision"``.
        weights: a local file with a state dict for this variant: for ``"torchvision"``
            torchvision's ``alexnet-owt-7be5be79.pth``; for ``"caffe"`` BVLC's
            ``bvlc_alexnet.caffemodel`` converted by :func:`caffe_alexnet_state_dict` and saved
            with ``torch.save``. ``None`` leaves the network randomly initialised. Never
            downloaded.
        num_classes: ``None`` (default) returns the fc7 features (the structured head adds its
            own top); an integer adds a final ``4096 -> num_classes`` layer (fc8), loaded from
            ``weights`` when the file has one of that shape and randomly initialised otherwise.
        dropout: dropout probability of the fully connected layers.
        freeze: if true, no parameter of the backbone requires gradients.

    Shape:
        - input: ``(B, 3, H, W)`` float, ImageNet-normalised RGB (see :data:`IMAGENET_MEAN`),
          224x224 as the paper's crops (227x227 also gives the same feature map).
        - output: ``(B, 4096)`` fc7 features after ReLU, or ``(B, num_classes)`` scores.

    Raises:
        ValueError: unknown ``variant`` or bad ``num_classes`` / ``dropout``; a weight file that
            does not match (see :meth:`load_weights`).
        FileNotFoundError: ``weights`` names a file that does not exist.
    """

    def __init__(
        self,
        variant: Literal["caffe", "torchvision"] = "caffe",
        weights: str | Path | None = None,
        num_classes: int | None = None,
        dropout: float = 0.5,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        if variant not in ("caffe", "torchvision"):
            raise ValueError(f"AlexNet variant must be 'caffe' or 'torchvision', got {variant!r}")
        if num_classes is not None and (isinstance(num_classes, bool) or num_classes < 1):
            raise ValueError(f"num_classes must be None or a positive int, got {num_classes!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.variant = variant
        self.num_classes = num_classes
        #: Size of the output: 4096 (fc7) or ``num_classes``.
        self.out_features = FC7_FEATURES if num_classes is None else num_classes
        # With a weight file, build on the meta device: the file provides the values, so the
        # random initialisation of 57M parameters (most of a second) would be thrown away.
        with torch.device("meta") if weights is not None else contextlib.nullcontext():
            if variant == "caffe":
                self.features = _caffe_features()
                self.classifier = _caffe_classifier(dropout, num_classes)
            else:
                self.features = _torchvision_features()
                self.classifier = _torchvision_classifier(dropout, num_classes)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        if weights is not None:
            self.load_weights(weights)
        if freeze:
            self.requires_grad_(False)

    @property
    def _top_prefix(self) -> str:
        """State-dict prefix of the final class layer (fc8) in this variant's naming."""
        return "classifier.fc8." if self.variant == "caffe" else "classifier.6."

    def forward(self, x: Tensor) -> Tensor:
        """Compute fc7 features (or class scores).

        Args:
            x: ``(B, 3, H, W)`` normalised images.

        Returns:
            ``(B, 4096)`` features, or ``(B, num_classes)`` when ``num_classes`` is set.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"AlexNet expects images of shape (B, 3, H, W); got {tuple(x.shape)}")
        x = self.features(x)
        x = self.avgpool(x)
        return self.classifier(torch.flatten(x, 1))

    def load_weights(self, path: str | Path) -> None:
        """Load a state dict for this variant from a local file.

        The file's final class layer (``classifier.6.*`` for torchvision, ``classifier.fc8.*``
        for caffe) is ignored when ``num_classes`` is ``None`` and when its shape differs from
        ``num_classes``; every other key must be present with the right shape and no key may be
        extra.

        Args:
            path: a file written by ``torch.save`` holding a ``dict[str, Tensor]``.

        Raises:
            FileNotFoundError: the file does not exist (the message says where such weights
                come from).
            ValueError: the file is not a state dict, or its keys or shapes do not match this
                variant (missing keys, unexpected keys and shape mismatches are listed).
        """
        path = Path(os.path.expanduser(str(path)))
        help_text = _WEIGHTS_HELP[self.variant]
        if not path.is_file():
            raise FileNotFoundError(
                f"AlexNet(variant={self.variant!r}) weight file '{path}' does not exist. "
                f"Expected {help_text}."
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for a corrupt or foreign file
            raise ValueError(
                f"AlexNet(variant={self.variant!r}) could not read weight file '{path}' with "
                f"torch.load ({type(err).__name__}: {err}). Expected {help_text}."
            ) from err
        if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
        ):
            raise ValueError(
                f"AlexNet(variant={self.variant!r}) weight file '{path}' does not hold a state "
                f"dict (a mapping of parameter names to tensors); got {type(state).__name__}. "
                f"Expected {help_text}."
            )
        own = self.state_dict()
        top = self._top_prefix
        state = dict(state)
        for key in [k for k in state if k.startswith(top)]:
            if key not in own or own[key].shape != state[key].shape:
                del state[key]  # no class layer, or one for another number of classes
        required = {k for k in own if not k.startswith(top)}
        missing = sorted(required - state.keys())
        unexpected = sorted(state.keys() - own.keys())
        mismatched = sorted(
            k for k in state.keys() & own.keys() if tuple(state[k].shape) != tuple(own[k].shape)
        )
        if missing or unexpected or mismatched:
            raise ValueError(
                _mismatch_message(
                    self.variant, path, own, state, missing, unexpected, mismatched, help_text
                )
            )
        on_meta = any(v.is_meta for v in own.values())
        # Own dtype, own (dense) memory: a saved tensor may be half precision or a broadcast view.
        state = {k: v.to(own[k].dtype).contiguous() for k, v in state.items()}
        self.load_state_dict(state, strict=False, assign=on_meta)
        if on_meta:  # a class layer the file lacked: initialise it as PyTorch would
            for module in self.modules():
                if any(p.is_meta for p in module.parameters(recurse=False)):
                    module.to_empty(device="cpu", recurse=False)
                    module.reset_parameters()


def _mismatch_message(
    variant: str,
    path: Path,
    own: Mapping[str, Tensor],
    state: Mapping[str, Tensor],
    missing: Sequence[str],
    unexpected: Sequence[str],
    mismatched: Sequence[str],
    help_text: str,
    limit: int = 12,
) -> str:
    """Describe how a state dict differs from the model's, listing at most ``limit`` of each."""

    def listing(keys: Sequence[str], show: Any) -> str:
        shown = ", ".join(show(k) for k in keys[:limit])
        more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
        return shown + more

    def shape(t: Tensor) -> str:
        return "x".join(str(s) for s in t.shape) or "scalar"

    parts = [f"AlexNet(variant={variant!r}) cannot use weight file '{path}':"]
    if missing:
        parts.append(
            f"missing {len(missing)} keys: " + listing(missing, lambda k: f"{k} ({shape(own[k])})")
        )
    if unexpected:
        parts.append(
            f"unexpected {len(unexpected)} keys: "
            + listing(unexpected, lambda k: f"{k} ({shape(state[k])})")
        )
    if mismatched:
        parts.append(
            f"{len(mismatched)} shape mismatches: "
            + listing(mismatched, lambda k: f"{k} expected {shape(own[k])}, got {shape(state[k])}")
        )
    guess = _guess_variant(state)
    if guess is not None and guess != variant:
        parts.append(f"The file looks like the {guess!r} layout; try AlexNet(variant={guess!r}).")
    parts.append(f"Expected {help_text}.")
    return " ".join(parts)


def _guess_variant(state: Mapping[str, Tensor]) -> str | None:
    """Which AlexNet layout a state dict seems to be for, from its first convolution."""
    if "features.conv1.weight" in state:
        return "caffe"
    if "features.0.weight" in state:
        return "torchvision"
    return None
