"""Backbone networks that compute features for the unary (and pairwise) potentials.

* :class:`AlexNet`: the ImageNet network the paper fine-tunes on MIRFLICKR-25000, in two layouts:
  ``"caffe"`` (BVLC AlexNet as the paper used it: grouped convolutions, local response
  normalisation, 96-256-384-384-256 filters) and ``"torchvision"`` (torchvision's single-tower
  variant, 64-192-384-256-256 filters, no normalisation). Both return the 4096 fc7 features by
  default; the structured head adds its own top layer (4096-76 for the 38 Flickr tags).
* :class:`SmallConvNet`: a tiny random convolutional network for tests and smoke runs.
* :class:`PerPosition`: applies one module to every position of a sequence (Word50's characters).

Pretrained weights are only ever read from a local file the user names; nothing is downloaded.

The package's modules: :mod:`~structlight.backbones.alexnet` (AlexNet, its layouts and weight
loading), :mod:`~structlight.backbones.caffe_weights` (converting BVLC's Caffe weights) and
:mod:`~structlight.backbones.small` (SmallConvNet, PerPosition). Everything is importable from
``structlight.backbones`` itself, the path recipes name (``structlight.backbones.PerPosition``).
"""

from __future__ import annotations

from structlight.backbones.alexnet import FC7_FEATURES, IMAGENET_MEAN, IMAGENET_STD, AlexNet
from structlight.backbones.caffe_weights import CAFFE_MEAN_BGR, caffe_alexnet_state_dict
from structlight.backbones.small import PerPosition, SmallConvNet

__all__ = [
    "AlexNet",
    "CAFFE_MEAN_BGR",
    "FC7_FEATURES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PerPosition",
    "SmallConvNet",
    "caffe_alexnet_state_dict",
]
