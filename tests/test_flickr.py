"""Tests for datamodules.flickr on a tiny fake MIRFLICKR tree (tests/data/mirflickr/make_fake.py)."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer

from datamodules.errors import DatasetNotFoundError
from datamodules.flickr import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MIRFLICKR_TAGS,
    MirFlickrDataModule,
    decode_image,
    read_mirflickr_labels,
)

MAKE_FAKE = Path(__file__).parent / "data" / "mirflickr" / "make_fake.py"
DESIGN_ORDER = (
    "animals baby bird car clouds dog female flower food indoor lake male night people "
    "plant_life portrait river sea sky structures sunset transport tree water "
    "baby_r1 bird_r1 car_r1 clouds_r1 dog_r1 female_r1 flower_r1 male_r1 night_r1 people_r1 "
    "portrait_r1 river_r1 sea_r1 tree_r1"
).split()


def _load_make_fake() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_fake_mirflickr", MAKE_FAKE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


make_fake = _load_make_fake()


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A 30-image tree (make_fake.FakeMirFlickr) shared by the tests that only read it."""
    return make_fake.make_fake_mirflickr(tmp_path_factory.mktemp("mirflickr"))


@pytest.fixture
def own_fake(tmp_path: Path) -> Any:
    """A fresh tree a test may damage."""
    return make_fake.make_fake_mirflickr(tmp_path / "mirflickr")


def datamodule(fake: Any, **kwargs: Any) -> MirFlickrDataModule:
    options = {"batch_size": 4, "num_workers": 0, **fake.splits, **kwargs}
    return MirFlickrDataModule(fake.root, **options)


def denormalise(image: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) normalised -> pixel values in [0, 255]."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image * std + mean) * 255.0


def test_tag_order() -> None:
    assert list(MIRFLICKR_TAGS) == DESIGN_ORDER and len(set(MIRFLICKR_TAGS)) == 38
    assert make_fake.TAGS == MIRFLICKR_TAGS
    assert MirFlickrDataModule.num_labels == 38


def test_fake_tree_is_seeded(tmp_path: Path, fake: Any) -> None:
    again = make_fake.make_fake_mirflickr(tmp_path, num_images=30)
    np.testing.assert_array_equal(again.labels, fake.labels)
    assert (tmp_path / "im30.jpg").read_bytes() == (fake.root / "im30.jpg").read_bytes()


def test_read_labels(fake: Any) -> None:
    labels = read_mirflickr_labels(fake.annotation_dir, num_images=30)
    assert labels.shape == (30, 38) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, fake.labels)
    # Known ids: image 1 is animals, dog and dog_r1; image 2 has no tag.
    assert [MIRFLICKR_TAGS[j] for j in np.flatnonzero(labels[0])] == ["animals", "dog", "dog_r1"]
    assert labels[1].sum() == 0
    for column, tag in enumerate(MIRFLICKR_TAGS):
        ids = [int(t) for t in (fake.annotation_dir / f"{tag}.txt").read_text().split()]
        assert sorted(np.flatnonzero(labels[:, column]) + 1) == ids
    # Relevant annotations are a subset of the potential ones, as in the real data.
    for tag in MIRFLICKR_TAGS[24:]:
        relevant = labels[:, MIRFLICKR_TAGS.index(tag)]
        assert (relevant <= labels[:, MIRFLICKR_TAGS.index(tag[: -len("_r1")])]).all()
    # More images than annotated: the extra rows are all zero.
    assert read_mirflickr_labels(fake.annotation_dir, num_images=40)[30:].sum() == 0


def test_read_labels_errors(tmp_path: Path, fake: Any) -> None:
    annotations = tmp_path / "annotations"
    shutil.copytree(fake.annotation_dir, annotations)
    (annotations / "sky.txt").write_text("3\n\nim4\n")
    with pytest.raises(ValueError, match=r"sky\.txt', line 3: expected a 1-based image id"):
        read_mirflickr_labels(annotations, num_images=30)
    (annotations / "sky.txt").write_text("3\n31\n")
    with pytest.raises(ValueError, match=r"sky\.txt', line 2: image id 31 is outside 1\.\.30"):
        read_mirflickr_labels(annotations, num_images=30)
    (annotations / "tree_r1.txt").unlink()
    (annotations / "baby.txt").unlink()
    with pytest.raises(FileNotFoundError) as info:
        read_mirflickr_labels(annotations, num_images=30)
    message = str(info.value)
    assert "2 of the 38" in message and str(annotations / "tree_r1.txt") in message
    assert str(annotations / "baby.txt") in message
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        read_mirflickr_labels(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="num_images"):
        read_mirflickr_labels(fake.annotation_dir, num_images=0)


def test_splits_and_labels(fake: Any) -> None:
    dm = datamodule(fake)
    assert dm.num_train_examples == 10
    dm.setup("fit")
    assert dm.labels is not None and dm.labels.shape == (30, 38)
    np.testing.assert_array_equal(dm.labels, fake.labels)
    expected = {"train": range(1, 11), "test": range(11, 21), "val": range(21, 31)}
    for split, ids in expected.items():
        data = getattr(dm, f"{split}_dataset")
        assert list(data.ids) == list(ids)
        item = data[3]
        assert int(item["index"]) == 3
        assert item["label"].tolist() == fake.labels[ids[3] - 1].tolist()


def test_eval_batches(fake: Any) -> None:
    dm = datamodule(fake, eval_batch_size=6)
    dm.setup("test")
    batches = list(dm.iter_split("test"))
    assert [len(b["index"]) for b in batches] == [6, 4]
    batch = batches[0]
    assert set(batch) == {"image", "label", "index"}
    assert batch["image"].shape == (6, 3, 224, 224) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (6, 38) and batch["label"].dtype == torch.long
    assert batch["index"].tolist() == list(range(6))
    assert batch["label"].tolist() == fake.labels[10:16].tolist()
    # Normalisation: undoing it gives the centre 224 crop of the decoded 256 square.
    for i, image in enumerate(batch["image"]):
        decoded = decode_image(fake.root / f"im{11 + i}.jpg", 256)
        assert decoded.shape == (3, 256, 256) and decoded.dtype == torch.uint8
        torch.testing.assert_close(
            denormalise(image), decoded[:, 16:240, 16:240].float(), rtol=0, atol=1e-3
        )


def test_train_augmentation(fake: Any) -> None:
    """Training images are random crops of the decoded square, some flipped."""
    torch.manual_seed(0)
    dm = datamodule(fake, resize=40, image_size=32, batch_size=10)
    dm.setup("fit")
    flips, offsets = 0, set()
    for _ in range(3):
        batch = next(dm.iter_split("train"))
        for image, index in zip(batch["image"], batch["index"], strict=True):
            decoded = decode_image(fake.root / f"im{int(index) + 1}.jpg", 40).float()
            pixels = denormalise(image)
            found = [
                (top, left, flip)
                for top in range(9)
                for left in range(9)
                for flip in (False, True)
                if torch.allclose(
                    decoded[:, top : top + 32, left : left + 32].flip(-1) if flip else
                    decoded[:, top : top + 32, left : left + 32],
                    pixels, atol=1e-3,
                )
            ]  # fmt: skip
            assert found, "a training image is not a crop of its decoded square"
            flips += found[0][2]
            offsets.add(found[0][:2])
    assert 0 < flips < 30 and len(offsets) > 5
    # augment=False: training batches are centre crops too.
    plain = datamodule(fake, resize=40, image_size=32, batch_size=10, augment=False)
    plain.setup("fit")
    batch = next(plain.iter_split("train"))
    decoded = decode_image(fake.root / f"im{int(batch['index'][0]) + 1}.jpg", 40).float()
    torch.testing.assert_close(
        denormalise(batch["image"][0]), decoded[:, 4:36, 4:36], atol=1e-3, rtol=0
    )


def test_hdf5_packing(tmp_path: Path, fake: Any) -> None:
    path = tmp_path / "packed" / "mirflickr.h5"
    packed = datamodule(fake, pack_hdf5=True, hdf5_path=path, eval_batch_size=5)
    packed.prepare_data()
    with h5py.File(path, "r") as f:
        assert f["images"].shape == (30, 3, 256, 256) and f["images"].dtype == np.uint8
        assert f["ids"][:].tolist() == list(range(1, 31))
        np.testing.assert_array_equal(f["images"][6], decode_image(fake.root / "im7.jpg").numpy())
    assert sorted(p.name for p in path.parent.iterdir()) == ["mirflickr.h5"]  # no temp file left
    packed.setup("test")
    jpeg = datamodule(fake, eval_batch_size=5)
    jpeg.setup("test")
    for split in ("test", "val"):
        for a, b in zip(packed.iter_split(split), jpeg.iter_split(split), strict=True):
            assert torch.equal(a["image"], b["image"])
            assert torch.equal(a["label"], b["label"]) and torch.equal(a["index"], b["index"])
    # Packing happens once: a second prepare_data reuses the file.
    stamp = path.stat().st_mtime_ns
    datamodule(fake, pack_hdf5=True, hdf5_path=path).prepare_data()
    assert path.stat().st_mtime_ns == stamp
    # A file packed differently is refused, not silently used.
    with pytest.raises(ValueError, match=r"packed with resize=256, not 128.*Delete it"):
        datamodule(fake, pack_hdf5=True, hdf5_path=path, resize=128, image_size=96).prepare_data()
    with pytest.raises(FileNotFoundError, match="call prepare_data"):
        datamodule(fake, pack_hdf5=True, hdf5_path=tmp_path / "absent.h5").setup()


@pytest.mark.parametrize("pack", [False, True])
def test_two_workers(tmp_path: Path, fake: Any, pack: bool) -> None:
    dm = datamodule(
        fake, num_workers=2, batch_size=3, pack_hdf5=pack, hdf5_path=tmp_path / "w.h5",
        resize=64, image_size=48,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    seen = []
    for batch in dm.iter_split("train"):
        assert batch["image"].shape[1:] == (3, 48, 48)
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(10))


# --------------------------------------------------------------------------- bad input
def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"MIRFLICKR-25000 not found at .*nothing here"):
        MirFlickrDataModule(tmp_path / "nothing here").setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"empty'. It holds no im<id>\.jpg"):
        MirFlickrDataModule(tmp_path / "empty").setup()
    with pytest.raises(DatasetNotFoundError, match="empty"):
        MirFlickrDataModule(tmp_path / "empty", pack_hdf5=True).prepare_data()


def test_missing_annotations(own_fake: Any) -> None:
    (own_fake.annotation_dir / "dog_r1.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"annotations/dog_r1\.txt"):
        datamodule(own_fake).setup()
    with pytest.raises(DatasetNotFoundError, match="annotations not found"):
        datamodule(own_fake, annotation_dir=own_fake.root / "elsewhere").setup()
    shutil.rmtree(own_fake.annotation_dir)
    with pytest.raises(DatasetNotFoundError, match=r"No annotation files \(animals\.txt"):
        datamodule(own_fake).setup()


def test_annotation_without_image(own_fake: Any) -> None:
    with open(own_fake.annotation_dir / "sea.txt", "a") as f:
        f.write("31\n")
    with pytest.raises(ValueError) as info:
        datamodule(own_fake).setup()
    message = str(info.value)
    assert "sea.txt" in message and "image id 31" in message
    assert str(own_fake.root / "im31.jpg") in message


def test_missing_split_image(own_fake: Any) -> None:
    (own_fake.root / "im1.jpg").unlink()  # annotated: animals, dog, dog_r1
    with pytest.raises(ValueError, match=r"animals\.txt', line 1, names image id 1.*im1\.jpg"):
        datamodule(own_fake).setup()
    (own_fake.root / "im2.jpg").unlink()  # in no annotation, but in the training split
    for tag in ("animals", "dog", "dog_r1"):
        path = own_fake.annotation_dir / f"{tag}.txt"
        path.write_text("".join(f"{i}\n" for i in path.read_text().split() if i != "1"))
    with pytest.raises(FileNotFoundError, match=r"2 images of the splits are missing: .*im1\.jpg"):
        datamodule(own_fake).setup()


def test_official_zip_layout(tmp_path: Path) -> None:
    """Images in root/mirflickr/, annotations in root/mirflickr25k_annotations_v080/."""
    fake = make_fake.make_fake_mirflickr(tmp_path / "unzipped" / "mirflickr")
    fake.annotation_dir.rename(tmp_path / "unzipped" / "mirflickr25k_annotations_v080")
    dm = MirFlickrDataModule(tmp_path / "unzipped", num_workers=0, **fake.splits)
    dm.setup()
    assert dm.image_dir == tmp_path / "unzipped" / "mirflickr"
    np.testing.assert_array_equal(dm.labels, fake.labels)
    # num_images limits the tree: later annotations are ignored, the ranges must fit.
    small = MirFlickrDataModule(
        tmp_path / "unzipped", num_workers=0, num_images=12, train_ids=(1, 6), test_ids=(7, 12),
        val_ids=None,
    )  # fmt: skip
    small.setup()
    np.testing.assert_array_equal(small.labels, fake.labels[:12])


def test_bad_ranges(fake: Any) -> None:
    with pytest.raises(ValueError, match=r"train_ids=\(1, 10000\) reaches beyond the 30 images"):
        MirFlickrDataModule(fake.root, num_workers=0).setup()
    with pytest.raises(ValueError, match="overlaps train_ids"):
        MirFlickrDataModule(fake.root, train_ids=(1, 10), test_ids=(10, 20))
    with pytest.raises(ValueError, match="1 <= first <= last"):
        MirFlickrDataModule(fake.root, train_ids=(5, 1))
    with pytest.raises(ValueError, match="image_size"):
        MirFlickrDataModule(fake.root, image_size=300)
    with pytest.raises(ValueError, match="batch_size"):
        MirFlickrDataModule(fake.root, batch_size=0)
    dm = MirFlickrDataModule(fake.root, train_ids=(1, 10), test_ids=(11, 30), val_ids=None)
    dm.setup()
    assert dm.val_dataloader() == [] and len(dm.test_dataset) == 20


def test_unreadable_jpeg_fails_setup(own_fake: Any) -> None:
    bad = own_fake.root / "im12.jpg"
    bad.write_bytes(b"this is not a JPEG")
    with pytest.raises(ValueError, match=r"1 images cannot be read: .*im12\.jpg"):
        datamodule(own_fake).setup()
    with pytest.raises(ValueError, match=r"cannot decode image .*im12\.jpg.* while packing"):
        datamodule(own_fake, pack_hdf5=True).prepare_data()
    assert not list(own_fake.root.glob("*.h5*"))  # no half-written file left


def truncate(path: Path) -> None:
    """Cut a JPEG halfway through its scan data: the header still reads, decoding fails."""
    data = path.read_bytes()
    scan = data.index(b"\xff\xda")  # start-of-scan marker
    path.write_bytes(data[: scan + (len(data) - scan) // 2])


def test_truncated_jpeg_is_skipped(own_fake: Any) -> None:
    truncate(own_fake.root / "im7.jpg")
    dm = datamodule(own_fake, batch_size=4)
    dm.setup("fit")  # the header reads fine
    with pytest.warns(RuntimeWarning, match=r"skipped unreadable image .*im7\.jpg"):
        seen = [i for batch in dm.iter_split("train") for i in batch["index"].tolist()]
    assert sorted(seen) == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    assert dm.skipped_images == 1 and dm.skipped_paths == [str(own_fake.root / "im7.jpg")]
    # Packing decodes every image, so there the same file fails before training.
    with pytest.raises(ValueError, match=r"cannot decode image .*im7\.jpg"):
        datamodule(own_fake, pack_hdf5=True).prepare_data()


class _TinyTagger(LightningModule):
    """Unary-only stand-in for the structured head: SmallConvNet features -> 38 logits."""

    def __init__(self) -> None:
        super().__init__()
        from structlight.backbones import SmallConvNet

        self.backbone = SmallConvNet(out_features=16)
        self.top = torch.nn.Linear(16, 38)
        self.batch_sizes: list[int] = []

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        assert set(batch) == {"image", "label", "index"}
        self.batch_sizes.append(len(batch["index"]))
        logits = self.top(self.backbone(batch["image"]))
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"].float())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_trainer_counts_skipped_images(own_fake: Any) -> None:
    truncate(own_fake.root / "im3.jpg")
    dm = datamodule(own_fake, batch_size=10, resize=64, image_size=48)
    model = _TinyTagger()
    trainer = Trainer(
        fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, datamodule=dm)
    assert model.batch_sizes == [9] and dm.skipped_images == 1
    assert any("im3.jpg" in str(w.message) for w in caught)
