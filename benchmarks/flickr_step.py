"""One Flickr training step split into backbone and head.

The paper's Flickr model: Caffe AlexNet (grouped convolutions, LRN) to fc7, a 4096-76 unary
layer and one 2x2 table per edge of a fully connected graph over 38 binary tags (703 edges;
57,182,408 parameters). One blended step = backbone forward, head (unaries, one sweep on the
stored messages, dual - score), backward, SGD step. Timed separately:

* backbone: forward + backward of AlexNet alone (a dummy loss on its features);
* head: the head's forward, sweep, loss and backward from detached features;
* full step: everything, as training runs it.

    python benchmarks/flickr_step.py [--device cpu|cuda] [--batch 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_common_args, resolve_device, setup_threads, timeit  # noqa: E402

from structlight import FullyConnectedHead  # noqa: E402
from structlight.backbones import AlexNet, SmallConvNet  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = add_common_args(argparse.ArgumentParser(description=__doc__), repeats=3, warmup=1)
    ap.add_argument("--batch", type=int, default=300, help="images per step (paper: 300)")
    ap.add_argument("--variant", choices=["caffe", "torchvision"], default="caffe")
    args = ap.parse_args(argv)
    setup_threads(args.threads)
    device = resolve_device(args.device)
    b, size = args.batch, 224
    if args.quick:
        b, size, args.repeats, args.warmup = 4, 64, 1, 1
        backbone = SmallConvNet(out_features=64).to(device)
    else:
        backbone = AlexNet(variant=args.variant).to(device)
    feat = backbone.out_features
    n_train = 4 * b
    head = FullyConnectedHead(num_vars=38, in_features=feat, num_train_examples=n_train).to(device)
    params = sum(p.numel() for p in [*backbone.parameters(), *head.parameters()])
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, 2, (b, 38), generator=gen).to(device)
    idx = torch.arange(b, device=device)
    batch = {"image": x, "label": y, "index": idx}
    opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=1e-4, momentum=0.95)
    feats_fixed = backbone(x).detach()

    def backbone_only() -> None:
        backbone(x).square().mean().backward()

    def head_only() -> None:
        f = feats_fixed.requires_grad_(True)
        head.training_loss(head(f, batch), batch, track_dual_change=False).loss.mean().backward()

    def full_step() -> None:
        theta = head(backbone(x), batch)
        loss = head.training_loss(theta, batch, track_dual_change=False).loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"Flickr step, batch {b}, {'SmallConvNet (quick)' if args.quick else args.variant} "
        f"backbone, {params:,} parameters, {name}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats}"
    )
    out = {}
    for label, fn in (
        ("backbone fwd+bwd", backbone_only),
        ("head fwd+bwd", head_only),
        ("full step", full_step),
    ):
        out[label] = timeit(fn, args.repeats, args.warmup, device).median
    for label, t in out.items():
        print(f"{label:18s} {t:10.1f} ms  {100 * t / out['full step']:5.1f}% of the step")
    return out


if __name__ == "__main__":
    main()
