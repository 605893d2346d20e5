"""Tests for structlight.backbones: AlexNet layouts and weights, SmallConvNet, PerPosition."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from structlight.backbones import (
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN,
    IMAGENET_STD,
    AlexNet,
    PerPosition,
    SmallConvNet,
    caffe_alexnet_state_dict,
)

CAFFE_TO_FC7 = 56_868_224  # BVLC AlexNet up to fc7 (docs/design.md, section 3)
TORCHVISION_TO_FC7 = 57_003_840  # torchvision.models.alexnet without classifier.6
PAPER_FLICKR = 57_182_408  # + 4096-76 top + 703 2x2 edge tables (docs/design.md, section 3)


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def caffe() -> AlexNet:
    torch.manual_seed(0)
    return AlexNet("caffe").eval()


@pytest.fixture(scope="module")
def caffe_file(caffe: AlexNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "alexnet_caffe.pt"
    torch.save(caffe.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(1)
    reference = torchvision.models.alexnet(weights=None).eval()
    path = tmp_path_factory.mktemp("weights") / "alexnet-owt-7be5be79.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


def test_parameter_counts(caffe: AlexNet) -> None:
    assert count(caffe) == CAFFE_TO_FC7
    top, edges = nn.Linear(4096, 76), 38 * 37 // 2
    assert edges == 703
    assert count(caffe) + count(top) + edges * 2 * 2 == PAPER_FLICKR
    assert caffe.out_features == 4096
    with torch.device("meta"):
        tv = AlexNet("torchvision")
        full = torchvision.models.alexnet(weights=None)
    assert count(tv) == TORCHVISION_TO_FC7 == count(full) - count(full.classifier[6])
    assert {k: v.shape for k, v in tv.state_dict().items()} == {
        k: v.shape for k, v in full.state_dict().items() if not k.startswith("classifier.6.")
    }


def test_caffe_layout(caffe: AlexNet) -> None:
    f = caffe.features
    assert f.conv2.groups == 2 and f.conv4.groups == 2 and f.conv5.groups == 2
    assert f.conv3.groups == 1 and f.conv1.padding == (0, 0)
    assert isinstance(f.norm1, nn.LocalResponseNorm) and isinstance(f.norm2, nn.LocalResponseNorm)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        # Caffe's ceil-mode pooling: 224 and Caffe's native 227 both reach a 6x6 pool5 map.
        assert f(x).shape == (1, 256, 6, 6)
        assert f(torch.randn(1, 3, 227, 227)).shape == (1, 256, 6, 6)


@pytest.mark.parametrize("size", [224, 227, 96])
def test_forward_shapes(caffe: AlexNet, size: int) -> None:
    with torch.no_grad():
        y = caffe(torch.randn(2, 3, size, size))
    assert y.shape == (2, 4096) and y.dtype == torch.float32 and (y >= 0).all()


def test_forward_rejects_bad_input(caffe: AlexNet) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\).*\(2, 1, 224, 224\)"):
        caffe(torch.randn(2, 1, 224, 224))


def test_torchvision_weights_match_torchvision(torchvision_file: tuple[nn.Module, Path]) -> None:
    reference, path = torchvision_file
    x = torch.randn(2, 3, 224, 224)
    features = AlexNet("torchvision", weights=path).eval()  # classifier.6 in the file: ignored
    scores = AlexNet("torchvision", weights=path, num_classes=1000).eval()
    with torch.no_grad():
        expected_features = reference.classifier[:6](
            torch.flatten(reference.avgpool(reference.features(x)), 1)
        )
        torch.testing.assert_close(features(x), expected_features, rtol=0, atol=0)
        torch.testing.assert_close(scores(x), reference(x), rtol=0, atol=0)


def test_caffe_round_trip(caffe: AlexNet, caffe_file: Path) -> None:
    loaded = AlexNet("caffe", weights=str(caffe_file), freeze=True).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), caffe(x), rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters())
    assert all(p.requires_grad for p in caffe.parameters())


def test_missing_weight_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "alexnet.pth"
    with pytest.raises(FileNotFoundError) as info:
        AlexNet("torchvision", weights=path)
    assert str(path) in str(info.value) and "alexnet-owt-7be5be79.pth" in str(info.value)
    assert "download.pytorch.org" in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"bvlc_alexnet\.caffemodel"):
        AlexNet("caffe", weights=path)


def test_mismatched_weight_file(torchvision_file: tuple[nn.Module, Path]) -> None:
    _, path = torchvision_file
    with pytest.raises(ValueError) as info:
        AlexNet("caffe", weights=path)
    message = str(info.value)
    assert str(path) in message
    assert "missing 14 keys" in message and "features.conv1.weight (96x3x11x11)" in message
    assert "unexpected 16 keys" in message and "features.0.weight (64x3x11x11)" in message
    assert "variant='torchvision'" in message and "bvlc_alexnet.caffemodel" in message


def test_shape_mismatch_and_junk_files(caffe: AlexNet, tmp_path: Path) -> None:
    # Broadcast views keep the file tiny: torch.save stores one element per tensor.
    state = {
        k: torch.zeros(1).expand(v.shape)
        for k, v in caffe.state_dict().items()
        if k != "classifier.fc7.bias"
    }
    state["classifier.fc6.bias"] = torch.zeros(100)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        AlexNet("caffe", weights=path)
    message = str(info.value)
    assert "missing 1 keys: classifier.fc7.bias (4096)" in message
    assert "classifier.fc6.bias expected 4096, got 100" in message
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        AlexNet("caffe", weights=tmp_path / "list.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"could not read weight file .*junk\.pt"):
        AlexNet("caffe", weights=tmp_path / "junk.pt")


def test_broadcast_and_half_precision_files(caffe: AlexNet, tmp_path: Path) -> None:
    half = torch.full((1,), 0.5, dtype=torch.float16)
    state = {k: half.expand(v.shape) for k, v in caffe.state_dict().items()}
    torch.save(state, tmp_path / "views.pt")
    assert (tmp_path / "views.pt").stat().st_size < 100_000
    net = AlexNet("caffe", weights=tmp_path / "views.pt", num_classes=3)
    weight = net.classifier.fc6.weight
    assert weight.dtype == torch.float32 and weight.is_contiguous() and weight.requires_grad
    assert (weight == 0.5).all() and not net.classifier.fc8.weight.is_meta
    assert net.classifier.fc8.weight.std() > 0  # the missing class layer was initialised
    net(torch.randn(1, 3, 224, 224)).sum().backward()
    assert weight.grad is not None


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'caffe' or 'torchvision'"):
        AlexNet("vgg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_classes"):
        AlexNet(num_classes=0)
    with pytest.raises(ValueError, match="dropout"):
        AlexNet(dropout=1.5)


def test_caffe_conversion(caffe: AlexNet) -> None:
    own = caffe.state_dict()
    blobs = {
        name: [own[f"{parent}.{name}.weight"].numpy(), own[f"{parent}.{name}.bias"].numpy()]
        for name, parent in [(f"conv{i}", "features") for i in range(1, 6)]
        + [("fc6", "classifier"), ("fc7", "classifier")]
    }
    blobs["data"] = []  # layers without weights are ignored
    plain = caffe_alexnet_state_dict(blobs, fold_input_normalisation=False)
    assert plain.keys() == own.keys()
    assert all(torch.equal(plain[k], own[k]) for k in own)

    # Folded conv1 on normalised RGB in [0, 1] == Caffe's conv1 on BGR 0-255 minus the mean.
    folded = caffe_alexnet_state_dict(blobs)
    rgb = torch.rand(2, 3, 40, 40)
    normalised = (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(1, 3, 1, 1)
    caffe_input = 255.0 * rgb.flip(1) - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    conv = nn.functional.conv2d
    expected = conv(caffe_input, own["features.conv1.weight"], own["features.conv1.bias"], 4)
    got = conv(normalised, folded["features.conv1.weight"], folded["features.conv1.bias"], 4)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)

    with pytest.raises(ValueError, match="no blobs for layer 'fc7'"):
        caffe_alexnet_state_dict({k: v for k, v in blobs.items() if k != "fc7"})
    with pytest.raises(ValueError, match=r"conv1 weight has shape \(2, 2\)"):
        caffe_alexnet_state_dict({**blobs, "conv1": [torch.zeros(2, 2).numpy(), blobs["conv1"][1]]})


@pytest.mark.parametrize("size", [8, 32, 61])
def test_small_conv_net(size: int) -> None:
    net = SmallConvNet(out_features=16)
    y = net(torch.randn(3, 3, size, size + 5))
    assert y.shape == (3, 16) and (y >= 0).all() and net.out_features == 16
    with pytest.raises(ValueError, match="out_features"):
        SmallConvNet(out_features=0)


def test_per_position() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 12))
    mlp.out_features = 12  # type: ignore[assignment]
    wrapped = PerPosition(mlp)
    x = torch.randn(4, 5, 28, 28)
    y = wrapped(x)
    assert y.shape == (4, 5, 12) and wrapped.out_features == 12
    torch.testing.assert_close(y, torch.stack([mlp(x[:, i]) for i in range(5)], dim=1))
    conv = PerPosition(SmallConvNet(out_features=7))
    assert conv(torch.randn(2, 3, 3, 16, 16)).shape == (2, 3, 7)
    with pytest.raises(ValueError, match=r"\(B, N, \*rest\)"):
        wrapped(torch.randn(5))
    with pytest.raises(TypeError):
        PerPosition(lambda t: t)  # type: ignore[arg-type]
