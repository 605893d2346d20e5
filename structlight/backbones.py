"""Backbone networks that compute features for the unary (and pairwise) potentials.

* :class:`AlexNet`: the ImageNet network the paper fine-tunes on MIRFLICKR-25000, in two layouts:
  ``"caffe"`` (BVLC AlexNet as the paper used it: grouped convolutions, local response
  normalisation, 96-256-384-384-256 filters) and ``"torchvision"`` (torchvision's single-tower
  variant, 64-192-384-256-256 filters, no normalisation). Both return the 4096 fc7 features by
  default; the structured head adds its own top layer (4096-76 for the 38 Flickr tags).
* :class:`SmallConvNet`: a tiny random convolutional network for tests and smoke runs.
* :class:`PerPosition`: applies one module to every position of a sequence (Word50's characters).

Pretrained weights are only ever read from a local file the user names; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "AlexNet",
    "CAFFE_MEAN_BGR",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PerPosition",
    "SmallConvNet",
    "caffe_alexnet_state_dict",
]

#: ImageNet channel mean and standard deviation (RGB, pixel values in [0, 1]); the inputs
#: both AlexNet variants expect, and what ``datamodules.flickr`` normalises with.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Per-channel mean (BGR, pixel values in [0, 255]) of BVLC's ``ilsvrc_2012_mean.binaryproto``,
#: which Caffe subtracts from its inputs; used to fold Caffe's input convention into conv1.
CAFFE_MEAN_BGR: tuple[float, float, float] = (104.00698793, 116.66876762, 122.67891434)

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

# The layers of the Caffe layout that carry weights, as (BVLC layer name, parent module): the
# names are BVLC's, so a Caffe blob dict converts one to one.
_CAFFE_LAYERS: tuple[tuple[str, str], ...] = (
    ("conv1", "features"),
    ("conv2", "features"),
    ("conv3", "features"),
    ("conv4", "features"),
    ("conv5", "features"),
    ("fc6", "classifier"),
    ("fc7", "classifier"),
    ("fc8", "classifier"),
)


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


def caffe_alexnet_state_dict(
    blobs: Mapping[str, Sequence[np.ndarray] | Mapping[str, np.ndarray]],
    *,
    fold_input_normalisation: bool = True,
    caffe_mean_bgr: Sequence[float] = CAFFE_MEAN_BGR,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> dict[str, Tensor]:
    """Convert BVLC Caffe AlexNet weights to a state dict for ``AlexNet(variant="caffe")``.

    Caffe's blob shapes are PyTorch's (conv ``(out, in/groups, kh, kw)``, inner product
    ``(out, in)``, pool5 flattened channel-major), so the weights copy over unchanged, except
    for the input convention: BVLC's network reads BGR images in [0, 255] with the mean image
    subtracted, while structlight feeds RGB in [0, 1] normalised by ImageNet mean and std. With
    ``fold_input_normalisation`` (default) conv1 absorbs the difference exactly (conv1 has no
    padding): its input channels are reversed and scaled by ``255 * std``, and its bias takes
    ``sum W * (255 * mean - caffe_mean)``. The per-channel Caffe mean stands in for the mean
    image, as is customary.

    Getting the blobs, with pycaffe (``caffe.Net(deploy.prototxt, bvlc_alexnet.caffemodel,
    caffe.TEST)``)::

        blobs = {name: [b.data.copy() for b in p] for name, p in net.params.items()}
        torch.save(caffe_alexnet_state_dict(blobs), "alexnet_caffe.pt")

    or, without Caffe, by parsing the ``.caffemodel`` protobuf (``caffe_pb2.NetParameter``) and
    reshaping each layer's ``blobs[i].data`` to ``blobs[i].shape.dim``.

    Args:
        blobs: per Caffe layer name (``conv1`` .. ``conv5``, ``fc6``, ``fc7``, optionally
            ``fc8``), either a ``[weight, bias]`` sequence or ``{"weight": .., "bias": ..}``.
            Other layers are ignored.
        fold_input_normalisation: fold Caffe's input convention into conv1 (see above). Turn
            it off only if you feed the network Caffe-style BGR 0-255 inputs yourself.
        caffe_mean_bgr: the mean Caffe subtracts, BGR, in [0, 255].
        mean: the RGB mean the inputs were normalised with, in [0, 1].
        std: the RGB standard deviation the inputs were normalised with.

    Returns:
        A state dict for ``AlexNet(variant="caffe")`` (with ``num_classes=1000`` if ``fc8`` is
        given; :meth:`AlexNet.load_weights` ignores fc8 otherwise).

    Raises:
        ValueError: a layer is missing or has the wrong shape.
    """
    with torch.device("meta"):  # shapes only, no memory, no initialisation cost
        reference = AlexNet("caffe", num_classes=1000).state_dict()
    state: dict[str, Tensor] = {}
    for name, parent in _CAFFE_LAYERS:
        if name not in blobs:
            if name == "fc8":
                continue
            raise ValueError(
                f"caffe_alexnet_state_dict: no blobs for layer {name!r}; expected BVLC AlexNet "
                f"layers conv1..conv5, fc6, fc7 (fc8 optional), got {sorted(blobs)}"
            )
        layer = blobs[name]
        if isinstance(layer, Mapping):
            pair = (layer.get("weight"), layer.get("bias"))
        else:
            pair = tuple(layer)[:2] if len(layer) >= 2 else (None, None)
        for part, array in zip(("weight", "bias"), pair, strict=True):
            key = f"{parent}.{name}.{part}"
            if array is None:
                raise ValueError(f"caffe_alexnet_state_dict: layer {name!r} has no {part} blob")
            tensor = torch.as_tensor(np.asarray(array, dtype=np.float32))
            expected = reference[key].shape
            if tensor.numel() != expected.numel():
                raise ValueError(
                    f"caffe_alexnet_state_dict: {name} {part} has shape {tuple(tensor.shape)}, "
                    f"expected {tuple(expected)} (BVLC AlexNet)"
                )
            state[key] = tensor.reshape(expected).clone()
    if fold_input_normalisation:
        w = state["features.conv1.weight"].flip(1)  # BGR input channels -> RGB
        std_t = torch.tensor(list(std), dtype=torch.float32)
        offset = 255.0 * torch.tensor(list(mean), dtype=torch.float32) - torch.tensor(
            list(caffe_mean_bgr), dtype=torch.float32
        ).flip(0)
        state["features.conv1.bias"] = state["features.conv1.bias"] + torch.einsum(
            "ochw,c->o", w, offset
        )
        state["features.conv1.weight"] = w * (255.0 * std_t).view(1, 3, 1, 1)
    return state


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
