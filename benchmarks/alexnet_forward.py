"""Time AlexNet (both layouts) and the MIRFLICKR input pipeline at the paper's batch size.

Part 1: forward (eval, no grad) and forward + backward (train mode) of ``AlexNet`` at batch
``--batch`` (the paper's 300) on 224x224 inputs, median over ``--repeats``.

Part 2 (``--images N``, 0 to skip): writes N JPEGs of MIRFLICKR's size (random 333..500 px
sides, from ``tests/data/mirflickr/make_fake.py``) to a temporary folder, then times the header
check of ``setup``, HDF5 packing, and one pass over the training batches from the JPEG files
and from the packed file, each with 0 and ``--workers`` DataLoader workers.

    python benchmarks/alexnet_forward.py [--batch 300] [--repeats 3] [--images 600]
        [--workers 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from datamodules.flickr import MirFlickrDataModule, _check_images, _image_path
from structlight.backbones import AlexNet

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timeit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in seconds, after one warm-up call."""
    return timeit(fn, repeats, warmup=1, device=device).median / 1e3


def time_networks(batch: int, repeats: int, device: torch.device) -> None:
    x = torch.randn(batch, 3, 224, 224, device=device)
    print(
        "| network | batch | forward s (eval, no grad) | forward+backward s | images/s (fwd+bwd) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for variant in ("caffe", "torchvision"):
        net = AlexNet(variant).to(device)
        top = torch.nn.Linear(4096, 76).to(device)  # the Flickr head's unary top

        def forward(net: AlexNet = net, top: torch.nn.Module = top) -> None:
            with torch.no_grad():
                top(net.eval()(x))

        def train_step(net: AlexNet = net, top: torch.nn.Module = top) -> None:
            net.train()
            top(net(x)).sum().backward()

        fwd = median_seconds(forward, repeats, device)
        both = median_seconds(train_step, repeats, device)
        print(f"| {variant} | {batch} | {fwd:.2f} | {both:.2f} | {batch / both:.0f} |")


def time_loading(images: int, workers: int, batch: int) -> None:
    spec = importlib.util.spec_from_file_location(
        "make_fake", ROOT / "tests" / "data" / "mirflickr" / "make_fake.py"
    )
    assert spec is not None and spec.loader is not None
    make_fake = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = make_fake
    spec.loader.exec_module(make_fake)
    with tempfile.TemporaryDirectory() as tmp:
        third = images // 3
        fake = make_fake.make_fake_mirflickr(
            tmp, images, third, 2 * third, seed=0, min_side=333, max_side=500
        )
        size = sum(p.stat().st_size for p in Path(tmp).glob("im*.jpg")) / images
        print(f"\n{images} JPEGs, mean {size / 1024:.0f} KiB; batch {batch}, train split {third}")
        paths = [_image_path(Path(tmp), i) for i in range(1, images + 1)]
        start = time.perf_counter()
        _check_images(paths, workers)
        check = (time.perf_counter() - start) / images
        print(f"header check (setup, {workers} threads): {check * 1e6:.0f} us/image")
        h5 = Path(tmp) / "packed.h5"
        dm = MirFlickrDataModule(
            tmp, num_workers=workers, pack_hdf5=True, hdf5_path=h5, batch_size=batch,
            **fake.splits,
        )  # fmt: skip
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dm.prepare_data()
        pack = (time.perf_counter() - start) / images
        print(f"HDF5 packing ({workers} threads): {pack * 1e3:.2f} ms/image")
        print("\n| source | workers | train images/s |\n| --- | --- | --- |")
        for packed in (False, True):
            for n in (0, workers):
                dm = MirFlickrDataModule(
                    tmp, num_workers=n, pack_hdf5=packed, hdf5_path=h5, batch_size=batch,
                    **fake.splits,
                )  # fmt: skip
                dm.setup("fit")
                next(iter(dm.train_dataloader()))  # start the workers
                start = time.perf_counter()
                count = sum(len(b["index"]) for b in dm.iter_split("train"))
                rate = count / (time.perf_counter() - start)
                print(f"| {'HDF5' if packed else 'JPEG'} | {n} | {rate:.0f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-networks", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"torch {torch.__version__}, {name}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}\n"
    )
    if not args.skip_networks:
        time_networks(args.batch, args.repeats, device)
    if args.images:
        time_loading(args.images, args.workers, args.batch)


if __name__ == "__main__":
    main()
