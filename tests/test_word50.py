"""Word50: generator, readers, Dataset and DataModule, on tiny data (a few words, two fonts)."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from datamodules import DatasetNotFoundError, Word50DataModule, Word50Dataset, generate_word50
from datamodules.word50 import (
    ALPHABET,
    MATPLOTLIB_FONTS,
    WORDS,
    Word50Difficulty,
    Word50FileError,
    export_folder,
    read_attrs,
    read_folder,
    read_hdf5,
)
from datamodules.word50 import generate as generate_module
from datamodules.word50.glyphs import (
    GLYPH_CANVAS,
    font_glyph_bank,
    matplotlib_font_dir,
    resolve_fonts,
)
from tests.helpers.words import TINY_FONTS, UnaryLetters, quiet_trainer, spell

TINY_WORDS = ["banal", "julep", "mothy"]
TINY = {"words": TINY_WORDS, "fonts": TINY_FONTS, "num_train": 6, "num_val": 3, "num_test": 4}
EASY = Word50Difficulty(
    scale=(1.0, 1.0),
    aspect=(1.0, 1.0),
    rotation=0.0,
    shear=0.0,
    translation=0.0,
    elastic=0.0,
    stroke_steps=(0,),
    opacity=(1.0, 1.0),
    contrast=(0.6, 0.6),
    background_contrast=(0.0, 0.0),
    noise=0.0,
)


def _shutdown(loader: torch.utils.data.DataLoader) -> None:
    """Stop persistent workers now, as Lightning's loops do, rather than at garbage collection."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None:
        iterator._shutdown_workers()


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_word50(
        tmp_path_factory.mktemp("w50") / "tiny.h5", seed=3, progress=False, **TINY
    )


def test_constants() -> None:
    assert len(WORDS) == 50 and len(set(WORDS)) == 50
    assert all(len(w) == 5 and set(w) <= set(ALPHABET) for w in WORDS)
    assert {"banal", "julep", "resty", "drein", "yojan", "mothy"} <= set(WORDS)
    assert set("".join(WORDS)) == set(ALPHABET)  # every letter occurs
    assert [p.name for p in resolve_fonts()] == list(MATPLOTLIB_FONTS)


def test_generate_shapes_ranges_labels(tiny_h5: Path) -> None:
    sizes = {"train": 6, "val": 3, "test": 4}
    with h5py.File(tiny_h5) as f:
        assert [w.decode() for w in f["words"][()]] == TINY_WORDS
        for split, n in sizes.items():
            images, labels = f[split]["images"], f[split]["labels"]
            assert images.shape == (n, 5, 28, 28) and images.dtype == np.uint8
            assert labels.shape == (n, 5) and labels.dtype == np.uint8
            word_ids = f[split]["word_ids"][()]
            # labels spell the words, and every word occurs equally often (+1 for the first ones)
            assert [spell(row) for row in labels[()]] == [TINY_WORDS[i] for i in word_ids]
            counts = np.bincount(word_ids, minlength=3)
            assert counts.max() - counts.min() <= 1 and counts.sum() == n
            arr = images[()]
            assert arr.min() < 60 and arr.max() > 195 and arr.std() > 20  # real pictures
            # each character image differs from every other (random patch, pose, noise)
            flat = arr.reshape(n * 5, -1)
            assert len({row.tobytes() for row in flat}) == n * 5
    attrs = read_attrs(tiny_h5)
    assert attrs["seed"] == 3 and attrs["generator_version"] >= 1
    assert attrs["fonts"] == TINY_FONTS and len(attrs["font_sha256"]) == 2
    assert attrs["format"] == "structlight-word50" and attrs["character_source"] == "fonts"
    assert attrs["difficulty"] == Word50Difficulty().to_dict()
    assert attrs["sizes"] == sizes


def test_generate_is_deterministic(tmp_path: Path, tiny_h5: Path) -> None:
    again = generate_word50(tmp_path / "again.h5", seed=3, progress=False, **TINY)
    other = generate_word50(tmp_path / "other.h5", seed=4, progress=False, **TINY)
    for split in ("train", "val", "test"):
        a, la = read_hdf5(tiny_h5, split)
        b, lb = read_hdf5(again, split)
        c, _ = read_hdf5(other, split)
        assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()
        assert not np.array_equal(a, c)
    assert again.read_bytes() == tiny_h5.read_bytes()  # the whole file, not only the arrays


def test_glyph_geometry_matches_the_letter(tmp_path: Path) -> None:
    """With every perturbation off, each character is its glyph on a flat background."""
    path = generate_word50(
        tmp_path / "easy.h5", words=TINY_WORDS, fonts=TINY_FONTS, num_train=6, num_val=0, num_test=0,
        difficulty=EASY, progress=False,
    )  # fmt: skip
    bank = font_glyph_bank(resolve_fonts(TINY_FONTS), stroke_steps=(0,))
    templates = bank.alpha.reshape(-1, 28, 2, 28, 2).mean(axis=(2, 4))  # canvas -> 28x28
    with h5py.File(path) as f:
        images = f["train/images"][()].reshape(-1, 28, 28).astype(np.float64)
        glyph_ids = f["train/glyph_ids"][()].reshape(-1)
        labels = f["train/labels"][()].reshape(-1)
        sources = [s.decode() for s in f["glyph_sources"][()]]
    assert GLYPH_CANVAS == 56
    for image, g, k in zip(images, glyph_ids, labels, strict=True):
        assert sources[g].split(":")[1][0] == ALPHABET[k]
        ink = np.abs(image - np.median(image))
        ink /= ink.max()
        corr = [np.corrcoef(ink.ravel(), t.ravel())[0, 1] for t in templates]
        assert corr[g] > 0.95, (ALPHABET[k], corr[g])
        # the right glyph beats every glyph of another letter (and its own transpose)
        assert corr[g] > max(c for c, lk in zip(corr, bank.letter, strict=True) if lk != k)
        assert corr[g] > np.corrcoef(ink.ravel(), templates[g].T.ravel())[0, 1] + 0.05 or k in (
            ALPHABET.index("o"),
            ALPHABET.index("x"),
        )


def test_bad_generator_arguments(tmp_path: Path, tiny_h5: Path) -> None:
    with pytest.raises(ValueError, match="opacity"):
        Word50Difficulty(opacity=(0.9, 0.1))
    with pytest.raises(ValueError, match="noise"):
        Word50Difficulty(noise=-1.0)
    with pytest.raises(ValueError, match="lower-case"):
        generate_word50(tmp_path / "x.h5", words=["Banal"], progress=False)
    with pytest.raises(ValueError, match="num_train"):
        generate_word50(tmp_path / "x.h5", num_train=-1, progress=False)
    with pytest.raises(FileNotFoundError, match="no-such-font"):
        generate_word50(tmp_path / "x.h5", fonts=["no-such-font.ttf"], progress=False)
    with pytest.raises(ValueError, match="lower-case Latin"):
        resolve_fonts(["cmsy10.ttf"])  # symbols only
    with pytest.raises(FileExistsError):
        generate_word50(tiny_h5, progress=False, **TINY)
    assert not list(tmp_path.iterdir())


def test_font_dir_adds_only_faces_with_latin_letters(tmp_path: Path) -> None:
    fonts = tmp_path / "fonts" / "sub"
    fonts.mkdir(parents=True)
    for name in ("DejaVuSerif.ttf", "LastResortHE-Regular.ttf", "cmex10.ttf"):
        shutil.copy(matplotlib_font_dir() / name, fonts / name)
    (fonts / "broken.ttf").write_bytes(b"not a font")
    assert [p.name for p in resolve_fonts(font_dir=tmp_path / "fonts")] == ["DejaVuSerif.ttf"]
    both = resolve_fonts(["cmr10.ttf"], font_dir=tmp_path / "fonts")
    assert [p.name for p in both] == ["cmr10.ttf", "DejaVuSerif.ttf"]


def test_interrupted_generation_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def boom(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 2:  # after the train split was written
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = generate_module.render_characters
    monkeypatch.setattr(generate_module, "render_characters", boom)
    with pytest.raises(KeyboardInterrupt):
        generate_word50(tmp_path / "w.h5", progress=False, **TINY)
    assert list(tmp_path.iterdir()) == []


def test_dataset_items_and_lazy_reading(tiny_h5: Path) -> None:
    images, labels = read_hdf5(tiny_h5, "train")
    for in_memory in (True, False):
        ds = Word50Dataset(tiny_h5, "train", in_memory=in_memory)
        assert len(ds) == 6
        item = ds[4]
        assert item["image"].shape == (5, 1, 28, 28) and item["image"].dtype == torch.float32
        assert item["label"].dtype == torch.int64 and item["index"].item() == 4
        torch.testing.assert_close(item["image"][:, 0], torch.from_numpy(images[4]).float() / 255)
        assert item["label"].tolist() == labels[4].tolist()
        batch = Word50Dataset.collate(ds.__getitems__([5, 0, 5, -1]))
        assert batch["index"].tolist() == [5, 0, 5, 5]
        torch.testing.assert_close(
            batch["image"][1, :, 0], torch.from_numpy(images[0]).float() / 255
        )
        torch.testing.assert_close(batch["image"][0], batch["image"][2])
        with pytest.raises(IndexError):
            ds[6]
    # default_collate over per-item dicts gives the same batch as the fast path
    slow = torch.utils.data.default_collate([ds[i] for i in (1, 2)])
    fast = Word50Dataset.collate(ds.__getitems__([1, 2]))
    for key in ("image", "label", "index"):
        assert torch.equal(slow[key], fast[key])


@pytest.mark.parametrize("in_memory", [True, False])
def test_datamodule_with_two_workers(tmp_path: Path, in_memory: bool) -> None:
    dm = Word50DataModule(
        root=tmp_path,
        batch_size=4,
        num_workers=2,
        seed=1,
        in_memory=in_memory,
        progress=False,
        **TINY,
    )
    dm.prepare_data()
    assert dm.path.is_file()
    dm.setup("fit")
    images, labels = read_hdf5(dm.path, "train")
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    seen = []
    for _ in range(2):  # two epochs over persistent workers
        for batch in loader:
            assert set(batch) == {"image", "label", "index"}
            b = len(batch["index"])
            assert (
                batch["image"].shape == (b, 5, 1, 28, 28) and batch["image"].dtype == torch.float32
            )
            assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
            assert batch["label"].shape == (b, 5) and batch["label"].dtype == torch.int64
            idx = batch["index"].numpy()
            assert np.array_equal(batch["label"].numpy(), labels[idx])
            assert np.array_equal(np.rint(batch["image"][:, :, 0].numpy() * 255), images[idx])
            seen.extend(idx.tolist())
    assert sorted(seen) == sorted(list(range(6)) * 2)
    val_loader = dm.val_dataloader()
    val = list(val_loader)
    assert torch.cat([b["index"] for b in val]).tolist() == [0, 1, 2]  # not shuffled
    assert dm.words == tuple(TINY_WORDS) and dm.num_classes == 26
    dm.setup("test")
    test_loader = dm.test_dataloader()
    assert sum(len(b["index"]) for b in test_loader) == 4
    for used in (loader, val_loader, test_loader):
        _shutdown(used)


def test_missing_file_without_generate(tmp_path: Path) -> None:
    dm = Word50DataModule(root=tmp_path / "nowhere", generate=False)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert str(tmp_path / "nowhere" / "word50.h5") in message and "generate=True" in message
    with pytest.raises(FileNotFoundError, match="generate"):
        dm.setup("fit")
    with pytest.raises(DatasetNotFoundError):
        Word50Dataset(tmp_path / "none.h5")


def test_truncated_foreign_and_bad_labels(tmp_path: Path, tiny_h5: Path) -> None:
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(tiny_h5.read_bytes()[:4000])
    with pytest.raises(Word50FileError, match="truncated"):
        Word50Dataset(truncated)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(Word50FileError, match="not a readable HDF5"):
        read_hdf5(text, "train")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["train/images"] = np.zeros((1, 5, 28, 28), np.uint8)
    with pytest.raises(Word50FileError, match="not a Word50 file"):
        Word50Dataset(foreign)
    bad = tmp_path / "bad.h5"
    shutil.copy(tiny_h5, bad)
    with h5py.File(bad, "r+") as f:
        f["val/labels"][1, 2] = 30
    read_hdf5(bad, "train")  # other splits are still fine
    with pytest.raises(Word50FileError, match=r"0\.\.25.*30 at \[1, 2\]"):
        Word50Dataset(bad, "val")
    dm = Word50DataModule(root=tmp_path, filename="bad.h5", generate=False)
    with pytest.raises(Word50FileError, match="30"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="split"):
        read_hdf5(tiny_h5, "training")
    with pytest.raises(ValueError, match="uint8"):
        Word50Dataset.from_arrays(np.zeros((2, 5, 28, 28), np.float32), np.zeros((2, 5), np.int64))


def test_existing_file_generated_differently(tmp_path: Path, tiny_h5: Path) -> None:
    shutil.copy(tiny_h5, tmp_path / "word50.h5")
    Word50DataModule(root=tmp_path, seed=3, progress=False, **TINY).setup("fit")  # same settings
    dm = Word50DataModule(root=tmp_path, seed=5, progress=False, **TINY)
    with pytest.raises(Word50FileError, match="seed: file 3 vs asked 5"):
        dm.setup("fit")
    Word50DataModule(root=tmp_path, seed=5, generate=False).setup("fit")  # as it is: fine


def test_folder_layout_round_trip(tmp_path: Path, tiny_h5: Path) -> None:
    root = export_folder(tiny_h5, tmp_path / "folder")
    assert sorted(p.name for p in (root / "train" / "0").iterdir()) == [
        "0.png", "1.png", "2.png", "3.png", "4.png", "label.txt",
    ]  # fmt: skip
    data = read_folder(root)
    for split in ("train", "val", "test"):
        images, labels = read_hdf5(tiny_h5, split)
        assert np.array_equal(data[split][0], images) and np.array_equal(data[split][1], labels)
    # the DataModule serves the folder exactly as it serves the HDF5 file
    kwargs = {"batch_size": 3, "train_shuffle": False, "progress": False}
    from_folder = Word50DataModule(source="folder", folder=str(root), **kwargs)
    from_h5 = Word50DataModule(root=tiny_h5.parent, filename=tiny_h5.name, generate=False, **kwargs)
    for dm in (from_folder, from_h5):
        dm.setup("fit")
    for a, b in zip(from_folder.train_dataloader(), from_h5.train_dataloader(), strict=True):
        for key in ("image", "label", "index"):
            assert torch.equal(a[key], b[key])
    # broken folders
    (root / "train" / "1" / "label.txt").unlink()
    with pytest.raises(FileNotFoundError, match="label.txt"):
        read_folder(root, ["train"])
    (root / "val" / "0" / "label.txt").write_text("1\n2\n26\n3\n4\n")
    with pytest.raises(Word50FileError, match="26"):
        read_folder(root, ["val"])
    with pytest.raises(DatasetNotFoundError, match="folder"):
        read_folder(tmp_path / "missing")


def _fake_chars74k(root: Path, subsets: tuple[str, ...], letters: str = ALPHABET) -> None:
    font = ImageFont.truetype(str(matplotlib_font_dir() / "DejaVuSans.ttf"), 40)
    for sub in subsets:
        for k, char in enumerate(letters):
            sample = ALPHABET.index(char) + 37
            folder = (
                root / "English" / sub / ("Img" if sub == "Hnd" else "") / f"Sample{sample:03d}"
            )
            folder.mkdir(parents=True)
            for j in range(2):
                im = Image.new("L", (64, 64), 255)  # dark ink on white, as Chars74K
                ImageDraw.Draw(im).text((12 + 4 * j, 4), char, fill=0, font=font)
                im.save(folder / f"img{sample:03d}-{k * 2 + j + 1:05d}.png")


def test_chars74k_source(tmp_path: Path) -> None:
    _fake_chars74k(tmp_path / "c74k", ("Fnt", "Hnd"))
    path = generate_word50(
        tmp_path / "c.h5", chars74k_root=tmp_path / "c74k", words=TINY_WORDS, num_train=6,
        num_val=0, num_test=0, progress=False,
    )  # fmt: skip
    attrs = read_attrs(path)
    assert attrs["character_source"] == "chars74k"
    assert attrs["fonts"] == ["chars74k:English/Fnt", "chars74k:English/Hnd"]
    with h5py.File(path) as f:
        sources = [s.decode() for s in f["glyph_sources"][()]]
        glyph_ids = f["train/glyph_ids"][()]
        labels = f["train/labels"][()]
    assert len(sources) == 26 * 2 * 2 * 3  # letters x subsets x images x stroke steps
    for g, k in zip(glyph_ids.ravel(), labels.ravel(), strict=True):
        assert f"/Sample{k + 37:03d}/" in sources[g]  # the glyph came from the letter's folder
    # Fnt only; a missing letter; a missing root
    only_fnt = generate_word50(
        tmp_path / "f.h5", chars74k_root=tmp_path / "c74k" / "English", chars74k_subsets=["Fnt"],
        words=TINY_WORDS, num_train=2, num_val=0, num_test=0, progress=False,
    )  # fmt: skip
    assert read_attrs(only_fnt)["fonts"] == ["chars74k:English/Fnt"]
    _fake_chars74k(tmp_path / "partial", ("Fnt",), letters="abc")
    with pytest.raises(ValueError, match="'defghijklmnopqrstuvwxyz'"):
        generate_word50(tmp_path / "p.h5", chars74k_root=tmp_path / "partial", progress=False)
    with pytest.raises(DatasetNotFoundError, match="Chars74K"):
        generate_word50(tmp_path / "p.h5", chars74k_root=tmp_path / "nothing", progress=False)
    assert not (tmp_path / "p.h5").exists()


def test_lightning_trainer_drives_the_datamodule(tmp_path: Path) -> None:
    """Trainer calls prepare_data (generates) and setup, and a model sees dict batches."""
    dm = Word50DataModule(root=tmp_path, batch_size=2, progress=False, **TINY)
    model = UnaryLetters()
    trainer = quiet_trainer(tmp_path, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert (tmp_path / "word50.h5").is_file()
    assert sorted(model.seen) == list(range(6)) and model.val_seen == [0, 1, 2]


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from datamodules.word50.__main__ import main

    args = [str(tmp_path / "w"), "--num-train", "2", "--num-val", "1", "--num-test", "1"]
    path = main([*args, "--difficulty", '{"noise": 0.0}', "--export-folder", str(tmp_path / "f")])
    assert read_attrs(path)["difficulty"]["noise"] == 0.0
    assert [len(read_folder(tmp_path / "f")[s][1]) for s in ("train", "val", "test")] == [2, 1, 1]
    assert "wrote" in capsys.readouterr().out
