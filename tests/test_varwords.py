"""VarWords: word list, generator, reader, Dataset and DataModule, on tiny data (two fonts)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from datamodules import DatasetNotFoundError, VarWordsDataModule, VarWordsDataset
from datamodules.varwords import (
    ALPHABET,
    VarWordsFileError,
    english_words,
    generate_varwords,
    read_attrs,
    read_hdf5,
    vocabulary,
)
from datamodules.varwords.constants import WORD_LIST_FILE
from structlight.batching import LengthGroupedSampler
from tests.helpers.words import TINY_FONTS, UnaryLetters, quiet_trainer, spell

TINY = {"fonts": TINY_FONTS, "num_train": 24, "num_val": 6, "num_test": 5}


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_varwords(
        tmp_path_factory.mktemp("vw") / "tiny.h5", seed=3, progress=False, **TINY
    )


def test_word_list() -> None:
    words = english_words()
    assert len(words) == 3194 and len(set(words)) == len(words)
    assert all(2 <= len(w) <= 14 and set(w) <= set(ALPHABET) for w in words)
    assert {len(w) for w in words} == set(range(2, 15))
    assert set("".join(words)) == set(ALPHABET)
    header = (Path(__file__).parents[1] / "datamodules" / "varwords" / WORD_LIST_FILE).read_text()
    assert "Copyright 2000-2011 by Kevin Atkinson" in header  # the licence travels with the list
    assert "Permission to use, copy, modify, distribute and sell these word" in header
    assert vocabulary(min_length=13, max_length=13) == tuple(w for w in words if len(w) == 13)


def test_generate_ragged_layout_lengths_and_labels(tiny_h5: Path) -> None:
    sizes = {"train": 24, "val": 6, "test": 5}
    words = english_words()
    with h5py.File(tiny_h5) as f:
        assert [w.decode() for w in f["words"][()]] == list(words)
        for split, n in sizes.items():
            images, labels, offsets = read_hdf5(tiny_h5, split)
            assert images.dtype == np.uint8 and images.shape == (offsets[-1], 28, 28)
            assert labels.dtype == np.uint8 and labels.shape == (offsets[-1],)
            assert offsets.shape == (n + 1,) and offsets[0] == 0
            lengths = np.diff(offsets)
            assert lengths.min() >= 2 and lengths.max() <= 14
            assert labels.max() <= 25
            word_ids = f[split]["word_ids"][()]
            assert len(set(word_ids.tolist())) == n  # fewer words than the vocabulary: distinct
            spelled = [spell(labels[offsets[i] : offsets[i + 1]]) for i in range(n)]
            assert spelled == [words[i] for i in word_ids]
            assert f[split]["glyph_ids"].shape == (offsets[-1],)
            if split == "train":
                assert images.min() < 60 and images.max() > 195 and images.std() > 20
                assert len({row.tobytes() for row in images}) == len(images)
    attrs = read_attrs(tiny_h5)
    assert attrs["format"] == "structlight-varwords" and attrs["seed"] == 3
    assert attrs["min_length"] == 2 and attrs["max_length"] == 14
    assert attrs["sizes"] == sizes and attrs["config"]["num_words"] == 3194


def test_generate_is_deterministic(tmp_path: Path, tiny_h5: Path) -> None:
    again = generate_varwords(tmp_path / "again.h5", seed=3, progress=False, **TINY)
    other = generate_varwords(tmp_path / "other.h5", seed=4, progress=False, **TINY)
    assert again.read_bytes() == tiny_h5.read_bytes()  # same seed: the same bytes
    a, _, oa = read_hdf5(tiny_h5, "train")
    c, _, oc = read_hdf5(other, "train")
    assert oa.shape != oc.shape or not np.array_equal(oa, oc) or not np.array_equal(a, c)


def test_every_word_equally_often_and_custom_words(tmp_path: Path) -> None:
    words = ["ox", "zebra", "quizzically"]
    path = generate_varwords(
        tmp_path / "c.h5", words=words, fonts=TINY_FONTS, num_train=7, num_val=0, num_test=3,
        max_length=11, progress=False,
    )  # fmt: skip
    _, labels, offsets = read_hdf5(path, "train")
    spelled = [spell(labels[offsets[i] : offsets[i + 1]]) for i in range(7)]
    assert sorted(spelled) == sorted(["ox"] * 3 + ["zebra"] * 2 + ["quizzically"] * 2)
    images, labels, offsets = read_hdf5(path, "val")
    assert images.shape == (0, 28, 28) and labels.shape == (0,) and offsets.tolist() == [0]
    assert len(VarWordsDataset(path, "val")) == 0


def test_bad_generator_arguments(tmp_path: Path, tiny_h5: Path) -> None:
    def gen(**kwargs: object) -> Path:
        return generate_varwords(tmp_path / "x.h5", progress=False, **kwargs)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match="lower-case letters a-z. Got 'Zebra'"):
        gen(words=["Zebra"])
    with pytest.raises(ValueError, match="2 to 14 letters .* 'a' \\(1 letters\\)"):
        gen(words=["a", "ab"])
    with pytest.raises(ValueError, match="distinct. 'ab' occurs"):
        gen(words=["ab", "cd", "ab"])
    with pytest.raises(ValueError, match="must not be empty"):
        gen(words=[])
    with pytest.raises(ValueError, match="min_length must be <= max_length"):
        gen(min_length=5, max_length=4)
    with pytest.raises(ValueError, match="no words of 15 to 20 letters"):
        gen(min_length=15, max_length=20)
    with pytest.raises(ValueError, match="num_train must be a non-negative integer"):
        gen(num_train=-1)
    with pytest.raises(ValueError, match="At least one"):
        gen(num_train=0, num_val=0, num_test=0)
    with pytest.raises(ValueError, match="seed"):
        gen(seed=-2)
    with pytest.raises(FileNotFoundError):
        gen(fonts=["no-such-font.ttf"], num_train=1)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_varwords(tiny_h5, progress=False, **TINY)
    assert not (tmp_path / "x.h5").exists()


def test_dataset_items_and_lazy_reading(tiny_h5: Path) -> None:
    data = VarWordsDataset(tiny_h5, "train")
    lazy = VarWordsDataset(tiny_h5, "train", in_memory=False)
    images, labels, offsets = read_hdf5(tiny_h5, "train")
    assert len(data) == 24 and np.array_equal(data.lengths, np.diff(offsets))
    for i in (0, 5, -1):
        item, other = data[i], lazy[i]
        j = i % 24
        n = int(offsets[j + 1] - offsets[j])
        assert item["image"].shape == (n, 1, 28, 28) and item["image"].dtype == torch.float32
        assert item["label"].dtype == torch.int64 and item["label"].shape == (n,)
        assert int(item["index"]) == j
        assert torch.equal(item["image"], other["image"]) and torch.equal(
            item["label"], other["label"]
        )
        assert np.array_equal(item["label"].numpy(), data.word_labels(j))
        assert torch.equal(
            item["image"][:, 0],
            torch.from_numpy(images[offsets[j] : offsets[j + 1]] / 255.0).float(),
        )
    with pytest.raises(IndexError, match="out of range for a split of 24 words"):
        data[24]
    same = VarWordsDataset.from_arrays(images, labels, offsets)
    assert torch.equal(same[3]["image"], data[3]["image"])
    with pytest.raises(VarWordsFileError, match="offsets must start at 0"):
        VarWordsDataset.from_arrays(images, labels, offsets[1:])
    with pytest.raises(VarWordsFileError, match="word 1 has 0"):
        VarWordsDataset.from_arrays(images, labels, np.r_[0, 2, 2, offsets[-1]])
    with pytest.raises(ValueError, match="one label per character"):
        VarWordsDataset.from_arrays(images, labels[:-1], offsets)
    with pytest.raises(VarWordsFileError, match="the first is 26"):
        VarWordsDataset.from_arrays(images, np.full_like(labels, 26), offsets)


def test_datamodule_batches(tmp_path: Path, tiny_h5: Path) -> None:
    root = tmp_path / "dm"
    root.mkdir()
    (root / "varwords.h5").write_bytes(tiny_h5.read_bytes())
    dm = VarWordsDataModule(root=root, batch_size=4, seed=3, shuffle_seed=1, progress=False, **TINY)
    assert dm.n_max == 14 and dm.num_classes == 26 and dm.words is None
    assert isinstance(dm.hparams.root, str)  # plain data in checkpoints (weights-only loads)
    plain = VarWordsDataModule(difficulty={"noise": 0.0})
    assert plain.hparams.difficulty["noise"] == 0.0 and plain._config["difficulty"]["noise"] == 0.0
    dm.setup("fit")
    assert len(dm.words) == 3194
    loader = dm.train_dataloader()
    sampler = loader.batch_sampler.sampler
    assert isinstance(sampler, LengthGroupedSampler) and sampler.batch_size == 4
    seen = []
    for batch in loader:
        b = len(batch["index"])
        assert batch["image"].shape == (b, 14, 1, 28, 28) and batch["label"].shape == (b, 14)
        assert batch["length"].dtype == torch.int64 and batch["length"].min() >= 2
        positions = torch.arange(14)[None, :]
        real = positions < batch["length"][:, None]
        assert (batch["label"][~real] == -100).all() and (batch["label"][real] >= 0).all()
        assert (batch["image"][~real] == 0).all()
        seen.extend(batch["index"].tolist())
    assert sorted(seen) == list(range(24))
    longest = VarWordsDataModule(
        root=root, batch_size=4, seed=3, pad_to="longest", group_by_length=False, **TINY
    )
    longest.setup("validate")
    for batch in longest.val_dataloader():
        assert batch["image"].shape[1] == int(batch["length"].max())
    with pytest.raises(RuntimeError, match="call setup"):
        longest.train_dataloader()


def test_datamodule_errors(tmp_path: Path, tiny_h5: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="python -m datamodules.varwords"):
        VarWordsDataModule(root=tmp_path / "none", generate=False).setup("fit")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        VarWordsDataModule(batch_size=0)
    with pytest.raises(ValueError, match="pad_to must be 'max' or 'longest'"):
        VarWordsDataModule(pad_to="most")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group_window"):
        VarWordsDataModule(group_window=0)
    with pytest.raises(ValueError, match="Unknown stage"):
        VarWordsDataModule(root=tmp_path).setup("train")
    root = tmp_path / "other"
    root.mkdir()
    (root / "varwords.h5").write_bytes(tiny_h5.read_bytes())
    with pytest.raises(VarWordsFileError, match="different settings .*seed: file 3 vs asked 4"):
        VarWordsDataModule(root=root, seed=4, **TINY).setup("fit")
    as_is = VarWordsDataModule(root=root, seed=4, generate=False, max_length=9, **TINY)
    as_is.setup("test")
    assert as_is.n_max == 14  # the file's
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(VarWordsFileError, match="not a readable HDF5 file"):
        read_attrs(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(VarWordsFileError, match="not a VarWords file"):
        VarWordsDataset(tmp_path / "foreign.h5")
    with pytest.raises(ValueError, match="split must be one of"):
        read_hdf5(tiny_h5, "dev")


def test_lightning_trainer_drives_the_datamodule(tmp_path: Path) -> None:
    """Trainer calls prepare_data (generates) and setup; a model sees padded dict batches."""
    small = {"fonts": TINY_FONTS, "num_train": 10, "num_val": 2, "num_test": 2}
    dm = VarWordsDataModule(root=tmp_path, batch_size=3, progress=False, **small)
    model = UnaryLetters()
    trainer = quiet_trainer(tmp_path, limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    assert (tmp_path / "varwords.h5").is_file()
    assert sorted(model.seen) == list(range(10))


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datamodules.varwords.__main__ import main

    args = [str(tmp_path / "w"), "--num-train", "3", "--num-val", "1", "--num-test", "1"]
    path = main([*args, "--max-length", "6", "--difficulty", '{"noise": 0.0}'])
    attrs = read_attrs(path)
    assert attrs["difficulty"]["noise"] == 0.0 and attrs["max_length"] == 6
    assert max(len(w) for w in attrs["words"]) == 6
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("order", [1, 2])
def test_chain_head_trains_on_padded_batches(tmp_path: Path, tiny_h5: Path, order: int) -> None:
    """A few VarWords batches through DeepStructuredModel + ChainHead(num_vars=n_max)."""
    from functools import partial

    import lightning.pytorch as pl

    from structlight.backbones import PerPosition
    from structlight.head import ChainHead
    from structlight.potentials import MLP
    from structlight.task import DeepStructuredModel
    from tests.helpers.synthetic import quiet_trainer

    (tmp_path / "varwords.h5").write_bytes(tiny_h5.read_bytes())
    dm = VarWordsDataModule(root=tmp_path, batch_size=4, eval_batch_size=6, seed=3, **TINY)
    pl.seed_everything(0, verbose=False)
    model = DeepStructuredModel(
        PerPosition(MLP(784, [16])),
        ChainHead(dm.n_max, dm.num_classes, 16, order=order),
        optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9),
        val_sweeps=3,
    )
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            losses.append(float(outputs["loss"]))

    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3, callbacks=[Record()])
    trainer.fit(model, dm)
    assert len(losses) == 3 and all(np.isfinite(losses))
    result = trainer.validate(model, dm, verbose=False)[0]
    assert 0.0 <= result["val/char_acc"] <= 100.0
    batch = next(iter(dm.val_dataloader()))
    model.eval()
    with torch.no_grad():
        labels = model.predict_step(batch, 0)["labels"]
    real = torch.arange(dm.n_max)[None, :] < batch["length"][:, None]
    assert labels.shape == (6, dm.n_max)
    assert (labels[~real] == -100).all() and ((labels[real] >= 0) & (labels[real] < 26)).all()


def test_mid_epoch_resume_repeats_the_length_grouped_batches(tmp_path: Path, tiny_h5: Path) -> None:
    """ResumeState fast-forwards the LengthGroupedSampler: the resumed run's batches are the
    uninterrupted run's."""
    import lightning.pytorch as pl

    from structlight.checkpointing import ResumableCheckpoint, ResumeState
    from tests.helpers.synthetic import Snapshot, quiet_trainer

    (tmp_path / "varwords.h5").write_bytes(tiny_h5.read_bytes())

    class Record(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(28 * 28, 26)
            self.batches: list[tuple[int, list[int]]] = []

        def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            self.batches.append((self.global_step, batch["index"].tolist()))
            logits = self.net(batch["image"].flatten(2))
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["label"].flatten())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    def fit(ckpt_dir: Path, ckpt_path: Path | None = None, snapshot: Path | None = None) -> Record:
        dm = VarWordsDataModule(root=tmp_path, batch_size=5, seed=3, shuffle_seed=2, **TINY)
        callbacks: list[pl.Callback] = [
            ResumableCheckpoint(dirpath=ckpt_dir, last_every_n_train_steps=2),
            ResumeState(),
        ]
        if snapshot is not None:
            callbacks.append(Snapshot(ckpt_dir, 7, snapshot))  # 5 steps an epoch: mid-epoch 2
        model = Record()
        trainer = quiet_trainer(
            max_epochs=2, callbacks=callbacks, enable_checkpointing=True, limit_val_batches=0
        )
        trainer.fit(model, dm, ckpt_path=ckpt_path)
        return model

    mid = tmp_path / "mid.ckpt"
    whole = fit(tmp_path / "a", snapshot=mid)
    assert len(whole.batches) == 10
    epochs = [sorted(i for _, b in whole.batches[e * 5 : e * 5 + 5] for i in b) for e in (0, 1)]
    assert epochs == [list(range(24))] * 2  # every word once per epoch
    assert whole.batches[:5] != whole.batches[5:]  # reshuffled
    resumed = fit(tmp_path / "b", ckpt_path=mid)
    assert resumed.batches == [s for s in whole.batches if s[0] >= 6]


def test_datamodule_shards_the_grouping_for_the_trainers_rank(
    tmp_path: Path, tiny_h5: Path
) -> None:
    """Under data parallelism the length-grouped sampler is made for the trainer's rank, so
    the DDP wiring (which keeps a ShardedSampler of the right rank) leaves it in place."""
    from types import SimpleNamespace

    from structlight.distributed import ShardedSampler

    (tmp_path / "varwords.h5").write_bytes(tiny_h5.read_bytes())
    seen = []
    for rank in (0, 1):
        dm = VarWordsDataModule(root=tmp_path, batch_size=4, seed=3, shuffle_seed=0, **TINY)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)  # what DDP would give
        dm.setup("fit")
        sampler = dm.train_dataloader().batch_sampler.sampler
        assert isinstance(sampler, ShardedSampler) and isinstance(sampler, LengthGroupedSampler)
        assert (sampler.num_replicas, sampler.rank) == (2, rank)
        seen.append(list(sampler))
        assert all(i % 2 == rank for i in seen[-1]) and len(seen[-1]) == 12
    assert sorted(seen[0] + seen[1]) == list(range(24))
