"""One prepared run of the speed benchmarks on a GPU machine, under 5 minutes.

Prints the device, then: ConvexBP sweep/dual/beliefs times (``sweep.py``, CPU and CUDA), the
paper's three Word50 models per training iteration on CUDA (``paper_speed.py``; target on an
H100: under 1 ms per iteration for the 1st-order model) and the chain-CRF step against peers
where they are installed (``peers_chain.py``; a missing peer skips its column), then blending
against the double loop for 20 s each on the GPU (``blending.py``; the regime where sweeps, not
the MLP, dominate a step), its plot written to ``$OUT`` if set, else ``benchmarks/``.

    PYTHONPATH=. python benchmarks/gpu.py            # on the GPU machine, from the repo root
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main(argv: list[str] | None = None) -> None:
    import blending
    import paper_speed
    import peers_chain
    import sweep

    quick = argv is not None and "--quick" in argv
    if not torch.cuda.is_available():
        print("no CUDA device: running the CPU parts only")
    else:
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    t0 = time.perf_counter()
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    print("\n== ConvexBP sweep / dual / beliefs (float32) ==")
    sweep.main(["--repeats", "3" if quick else "30", "--device", *devices])
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"\n== Word50 training iteration, paper's models ({dev}) ==")
    paper_speed.main(["--device", dev] + (["--quick"] if quick else ["--repeats", "50"]))
    print(f"\n== chain CRF training step vs peers ({dev}) ==")
    peers_chain.main(["--device", dev] + (["--quick"] if quick else ["--repeats", "30"]))
    print(f"\n== blending vs the double loop, Word50 2nd order ({dev}) ==")
    plot = Path(os.environ.get("OUT") or HERE) / f"blending_{dev}.png"
    if quick:
        blending.main(["--quick", "--device", dev, "--plot", str(plot)])
    else:
        blending.main(
            ["--device", dev, "--seconds", "20", "--eval-every", "5", "--plot", str(plot)]
        )
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
