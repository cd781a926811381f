"""Label propagation speed at DAVIS-17 size (K = 256, 60 x 107 features, 480 x 854 labels).

Random features, four settings (the protocols' defaults and 4-frame contexts); prints seconds per
frame once the context is full, the peak resident memory, and the command that reproduced them.
`--still` feeds the same features every frame: a still clip, where nearly every query's top-k is
an exact tie, the worst case of the tie rule (`--ties cpu` rebuilds the original's key list for
each such query, vcorr.propagation.affinity).
The originals, measured on the project's 2-core machine with the same inputs: crw defaults
44.7 s/frame, stt defaults 11.5, crw C=4 2.4, stt P=4 3.4.

    python benchmarks/propagation_speed.py [--threads 2] [--frames 3] [--settings crw,stt,crw4,stt4]
        [--still] [--ties cpu|cuda]
"""

from __future__ import annotations

import argparse
import resource
import shlex
import sys
import time

import numpy as np
import torch

from vcorr.propagation import make_propagator

SETTINGS = {
    "crw": ("crw", dict(cxt_size=50, radius=12, topk=15, temp=0.1), 44.7, 3.0),
    "stt": ("stt", dict(precede=20, topk=10, temp=0.07, nrange=24), 11.5, 1.15),
    "crw4": ("crw", dict(cxt_size=4, radius=12, topk=15, temp=0.1), 2.4, 0.8),
    "stt4": ("stt", dict(precede=4, topk=10, temp=0.07, nrange=24), 3.4, 0.42),
}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def measure(
    name: str, frames: int, device: str, tile: tuple[int, int] | None, still: bool = False, ties: str = "cpu"
) -> tuple[float, float]:
    protocol, params, original, target = SETTINGS[name]
    context = params.get("cxt_size", params.get("precede"))
    generator = torch.Generator().manual_seed(0)
    label0 = np.zeros((480, 854), np.uint8)
    label0[100:300, 200:500] = 1
    label0[250:400, 400:700] = 2
    extra = {"tile_size": tile} if tile else {}
    propagator = make_propagator(protocol, label0, **params, ties=ties, **extra)
    first = torch.randn(256, 60, 107, generator=generator).to(device)

    def features():
        return first if still else torch.randn(256, 60, 107, generator=generator).to(device)

    # fill the context: the work per frame is the same once it holds `context` frames
    propagator.push(features())
    for _ in range(context):
        propagator.push(features())
    times = []
    for _ in range(frames):
        frame_features = features()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        propagator.push(frame_features)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    print(
        f"{name:5s} {protocol} {params}{' still clip' if still else ''}, ties {ties}: {seconds:.3f} s/frame (median of {frames}; "
        f"original {original} s, target <= {target} s, speed-up {original / seconds:.1f}x)",
        flush=True,
    )
    return seconds, peak_rss_gb()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=3, help="timed frames per setting")
    parser.add_argument("--settings", default="crw,stt,crw4,stt4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile", default=None, help="query tile rows,cols (default: the library's)")
    parser.add_argument("--still", action="store_true", help="the same features every frame (exact ties everywhere)")
    parser.add_argument("--ties", default="cpu", choices=("cpu", "cuda"), help="the tie rule (default cpu)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tile = tuple(int(v) for v in args.tile.split(",")) if args.tile else None
    print("command:", shlex.join([sys.executable.split("/")[-1], *sys.argv]))
    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}")
    with open("/proc/loadavg") as handle:
        print("load average before:", handle.read().split()[:3])
    for name in args.settings.split(","):
        measure(name, args.frames, args.device, tile, args.still, args.ties)
    print(f"peak RSS {peak_rss_gb():.2f} GB (whole run, limit 2.5 GB)")
    with open("/proc/loadavg") as handle:
        print("load average after:", handle.read().split()[:3])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
