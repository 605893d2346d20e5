"""Conversion of BVLC's Caffe AlexNet weights to a state dict for ``AlexNet(variant="caffe")``.

:func:`caffe_alexnet_state_dict` copies the blobs of ``bvlc_alexnet.caffemodel`` layer by layer
and folds Caffe's input convention (BGR in [0, 255], mean subtracted; :data:`CAFFE_MEAN_BGR`)
into conv1, so the network reads the ImageNet-normalised RGB inputs structlight feeds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from structlight.backbones.alexnet import IMAGENET_MEAN, IMAGENET_STD, AlexNet

__all__ = ["CAFFE_MEAN_BGR", "caffe_alexnet_state_dict"]

#: Per-channel mean (BGR, pixel values in [0, 255]) of BVLC's ``ilsvrc_2012_mean.binaryproto``,
#: which Caffe subtracts from its inputs; used to fold Caffe's input convention into conv1.
CAFFE_MEAN_BGR: tuple[float, float, float] = (104.00698793, 116.66876762, 122.67891434)

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
