"""Machinery shared by the Word50 and VarWords data sets: HDF5 writing and reading, and the
DataModule plumbing (argument checks, ``prepare_data``/``setup``, loaders)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules.errors import DatasetNotFoundError

SPLITS = ("train", "val", "test")

# -- generation ---------------------------------------------------------------------------


def strings(values: Sequence[str]) -> np.ndarray:
    """``values`` as an HDF5 variable-length string array."""
    return np.array(list(values), dtype=h5py.string_dtype())


def word_order(rng: np.random.Generator, n: int, n_words: int) -> np.ndarray:
    """``(n,)`` word ids, every word equally often (the first ``n % n_words`` once more), shuffled."""
    return rng.permutation(np.arange(n, dtype=np.int64) % n_words)


@contextmanager
def atomic_h5(path: Path, total: int, desc: str, progress: bool) -> Iterator[tuple[h5py.File, Any]]:
    """An HDF5 file open for writing under a temporary name next to ``path`` and a progress bar;
    renamed to ``path`` when the block ends, removed when it raises."""
    from tqdm.auto import tqdm

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with (
            h5py.File(tmp, "w") as f,
            tqdm(total=total, desc=desc, unit="char", disable=not progress) as bar,
        ):
            yield f, bar
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_header(
    f: h5py.File,
    *,
    format_name: str,
    version: int,
    seed: int,
    alphabet: str,
    extra: dict[str, Any],
    source: str,
    bank: Any,
    photos: Any,
    difficulty: Any,
    config: dict[str, Any],
    words: Sequence[str],
) -> None:
    """Write the top-level attributes and the ``words`` and ``glyph_sources`` datasets (in this
    order: the bytes of a file depend on it); ``extra`` attributes come after ``alphabet``."""
    f.attrs["format"] = format_name
    f.attrs["generator_version"] = version
    f.attrs["seed"] = seed
    f.attrs["alphabet"] = alphabet
    for key, value in extra.items():
        f.attrs[key] = value
    f.attrs["character_source"] = source
    f.attrs["fonts"] = strings(bank.fonts)
    f.attrs["font_sha256"] = strings(bank.digests)
    f.attrs["backgrounds"] = strings(photos.names)
    f.attrs["difficulty"] = json.dumps(difficulty.to_dict(), sort_keys=True)
    f.attrs["config"] = json.dumps(config, sort_keys=True)
    f.create_dataset("words", data=strings(words))
    f.create_dataset("glyph_sources", data=strings(bank.source))


# -- reading ------------------------------------------------------------------------------


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")


def generate_hint(name: str, module: str) -> str:
    return (
        f"Generate it with {name}DataModule(root=..., generate=True) or "
        f"`python -m datamodules.{module} <root>`."
    )


def open_h5(
    path: Path, name: str, format_name: str, error: type[Exception], hint: str
) -> h5py.File:
    """Open the HDF5 file of data set ``name`` read-only after checking it is one."""
    if not path.is_file():
        raise DatasetNotFoundError(name, path, hint)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise error(
            f"'{path}' is not a readable HDF5 file (truncated or not HDF5: {err}). "
            f"Delete it and generate again. {hint}"
        ) from err
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != format_name:
        f.close()
        raise error(
            f"'{path}' is an HDF5 file but not a {name} file: its 'format' attribute is "
            f"{fmt!r}, expected {format_name!r}. Point root elsewhere or delete it. {hint}"
        )
    return f


def decode_attrs(f: h5py.File) -> dict[str, Any]:
    """The file's attributes decoded (JSON attributes parsed, arrays as lists), plus ``words``."""
    attrs: dict[str, Any] = {}
    for key, value in f.attrs.items():
        if isinstance(value, np.ndarray):
            value = [v.decode() if isinstance(v, bytes) else str(v) for v in value.tolist()]
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, np.generic):
            value = value.item()
        if key in ("config", "difficulty") and isinstance(value, str):
            value = json.loads(value)
        attrs[key] = value
    attrs["words"] = (
        [w.decode() if isinstance(w, bytes) else w for w in f["words"][()].tolist()]
        if "words" in f
        else None
    )
    return attrs


def truncated_error(error: type[Exception], path: Path, split: str, err: OSError) -> Exception:
    return error(
        f"'{path}': reading {split} failed ({err}); the file is probably truncated. "
        "Delete it and generate again."
    )


# -- DataModule plumbing ------------------------------------------------------------------

STAGE_SPLITS = {
    None: SPLITS,
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
}


def check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}. Got {value!r}.")


def check_shuffle_seed(shuffle_seed: Any) -> None:
    if shuffle_seed is not None and (
        isinstance(shuffle_seed, bool) or not isinstance(shuffle_seed, int)
    ):
        raise ValueError(f"shuffle_seed must be None or an integer. Got {shuffle_seed!r}.")


class WordsDataModule(LightningDataModule):
    """The plumbing of a generated-HDF5 words DataModule; subclasses set the class attributes,
    call :meth:`_init_loading` from ``__init__`` and implement :meth:`_generate_file`,
    :meth:`_load`, :meth:`_train_sampler` and :meth:`_collate`."""

    _name: str  # the data set's name in messages
    _module: str  # ``python -m datamodules.<_module>``
    _file_error: type[Exception]

    def _init_loading(
        self,
        root: str | Path,
        batch_size: int,
        eval_batch_size: int | None,
        num_workers: int,
        generate: bool,
        in_memory: bool,
        train_shuffle: bool,
        shuffle_seed: int | None,
        drop_last: bool,
        pin_memory: bool,
        progress: bool,
    ) -> None:
        self.root = Path(root)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.generate = generate
        self.in_memory = in_memory
        self.train_shuffle = train_shuffle
        self.shuffle_seed = shuffle_seed
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.progress = progress
        self.datasets: dict[str, Dataset] = {}

    @property
    def path(self) -> Path:
        """The HDF5 file: ``<root>/<filename>``."""
        return self.root / self.hparams.filename

    # -- LightningDataModule hooks --------------------------------------------------------
    def prepare_data(self) -> None:
        """Generate the HDF5 file if it is missing (one process only)."""
        if self.path.exists():
            return
        if not self.generate:
            raise self._not_found()
        self._generate_file()

    def _generate_file(self) -> None:
        raise NotImplementedError

    def _not_found(self) -> DatasetNotFoundError:
        return DatasetNotFoundError(
            self._name,
            self.path,
            f"Pass generate=True to {self._name}DataModule (it generates the file in "
            f"prepare_data), or run `python -m datamodules.{self._module} {self.root}`.",
        )

    def _config_error(self, found: dict[str, Any]) -> Exception:
        diff = sorted(
            k for k in set(found) | set(self._config) if found.get(k) != self._config.get(k)
        )
        detail = ", ".join(
            f"{k}: file {found.get(k)!r} vs asked {self._config.get(k)!r}" for k in diff[:4]
        )
        return self._file_error(
            f"'{self.path}' was generated with different settings ({detail}). Use another root, "
            "delete the file to regenerate it, or pass generate=False to use it as it is."
        )

    def _ensure_file(self) -> None:
        if not self.path.exists():
            if not self.generate:
                raise self._not_found()
            self.prepare_data()  # setup() called without prepare_data(): a single process

    def setup(self, stage: str | None = None) -> None:
        """Load the splits the stage needs (``fit``: train + val; ``test``/``predict``: test)."""
        if stage not in STAGE_SPLITS:
            raise ValueError(f"Unknown stage {stage!r}; expected one of {list(STAGE_SPLITS)}.")
        needed = [s for s in STAGE_SPLITS[stage] if s not in self.datasets]
        if needed:
            self._load(needed)

    def _load(self, needed: list[str]) -> None:
        raise NotImplementedError

    def _train_sampler(self, data: Any) -> Any:
        raise NotImplementedError

    def _collate(self) -> Callable[[list[Any]], Any]:
        raise NotImplementedError

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"The {split} split is not loaded; call setup() first.")
        data = self.datasets[split]
        return DataLoader(
            data,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=self._train_sampler(data) if train else None,
            drop_last=train and self.drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=self._collate(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
