"""Spa-then-Temp stage two: one training step, and the local correlation windowed vs dense.

At the published size (16 clips of 256 x 256, R18 student, R50 teacher), on `--threads` CPU
threads (or CUDA with `--device cuda`):
- `step`: one `training_step` + backward + Adam step of the real model (windowed correlation).
- `level0` / `level1`: the local correlation of one level alone, forward and backward through
  the reconstruction loss (affinity softmax over the window, reconstruction, smooth L1), on R18
  features (128 x 64 x 64, R = 12; 256 x 32 x 32, R = 6):
  `windowed` = `vcorr.train.correlation` (what the model uses), `dense` = the original's dense
  masked correlation (`[hw, hw]` logits, -inf outside the window, dense softmax, bmm).
Each measurement runs in a fresh process: seconds (best of `--repeat`), then one more run for
the peak tensor memory it adds above its inputs (CPU: the profiler's allocation events; CUDA:
`max_memory_allocated`), with the CPU's peak-RSS growth beside it.
Prints one line per measurement, the ratios and the command.

    python benchmarks/train_step_stt.py [--threads 2] [--clips 16] [--size 256] [--repeat 2]
        [--parts step,level0,level1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shlex
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from vcorr.train import correlation, stt

LEVELS = {"level0": (128, 4, 12), "level1": (256, 8, 6)}  # R18 channels, stride, radius


def added_peak_bytes(run, device: str) -> tuple[int, int]:
    """(peak of the tensor memory `run` allocates above what exists before it, peak RSS growth).

    CUDA: `max_memory_allocated`. CPU: the running sum of the profiler's allocation events (the
    RSS growth is printed beside it; glibc keeps freed blocks of up to 32 MB mapped, so RSS
    overstates code that allocates many medium-sized tensors)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before, 0
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        run()
    events = sorted((event for event in profiler.profiler.kineto_results.events() if event.name() == "[memory]"),
                    key=lambda event: event.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before


def dense_level_loss(tar, ref, values, target, radius):
    """The original's dense masked local correlation and reconstruction for one level."""
    batch, channels, height, width = tar.shape
    ys, xs = torch.meshgrid(torch.arange(height, device=tar.device), torch.arange(width, device=tar.device),
                            indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    mask = ((ys[:, None] - ys[None]).abs() <= radius) & ((xs[:, None] - xs[None]).abs() <= radius)
    logits = torch.einsum("bci,bcj->bij", tar.flatten(2), ref.flatten(2)) / math.sqrt(channels)
    affinity = logits.masked_fill(~mask, float("-inf")).softmax(-1)
    recon = torch.bmm(affinity, values.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(batch, 1, height, width)
    up = F.interpolate(recon, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.smooth_l1_loss(up * 20, target * 20)


def windowed_level_loss(tar, ref, values, target, radius):
    affinity, _ = stt.local_affinity(tar, ref, radius)
    recon = correlation.window_apply(affinity, values, radius)
    up = F.interpolate(recon, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.smooth_l1_loss(up * 20, target * 20)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def child(part: str, variant: str, args) -> dict:
    torch.manual_seed(0)
    device = args.device
    if part == "step":
        cfg = stt.Config(depth=18, image_size=args.size, batch_size=args.clips)
        model = stt.build_model(cfg, total_steps=1).to(device).train()
        optimizer, _ = stt.build_optimizer(cfg, model, steps_per_epoch=1)
        lab = torch.randn(args.clips, 2, 3, args.size, args.size, device=device)
        rgb = torch.randn(args.clips, 2, 3, args.size, args.size, device=device)

        def run():
            loss, _ = stt.training_step(model, (rgb, lab))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    else:
        channels, stride, radius = LEVELS[part]
        side = args.size // stride
        tar = torch.randn(args.clips, channels, side, side, device=device, requires_grad=True)
        ref = torch.randn(args.clips, channels, side, side, device=device, requires_grad=True)
        values = torch.randn(args.clips, 1, side, side, device=device)
        target = torch.randn(args.clips, 1, args.size, args.size, device=device)
        level_loss = windowed_level_loss if variant == "windowed" else dense_level_loss

        def run():
            level_loss(tar, ref, values, target, radius).backward()
            tar.grad = ref.grad = None

    times = []
    for _ in range(args.repeat):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - start)
    peak, rss = added_peak_bytes(run, device)
    return {"part": part, "variant": variant, "seconds": min(times), "peak_gb": peak / 1024**3,
            "rss_gb": rss / 1024**3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--parts", default="step,level0,level1")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--child", nargs=2, metavar=("PART", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(*args.child, args)))
        return
    results = {}
    for part in args.parts.split(","):
        for variant in (["windowed"] if part == "step" else ["windowed", "dense"]):
            command = [sys.executable, __file__, *sys.argv[1:], "--child", part, variant]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                print(f"{part} {variant}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            results[part, variant] = result
            print(f"{part:7s} {variant:9s} {result['seconds']:8.2f} s  peak +{result['peak_gb']:6.2f} GB "
                  f"(RSS +{result['rss_gb']:.2f} GB)", flush=True)
    for part in LEVELS:
        if (part, "windowed") in results and (part, "dense") in results:
            windowed, dense = results[part, "windowed"], results[part, "dense"]
            print(f"{part}: windowed / dense time {windowed['seconds'] / dense['seconds']:.2f}, "
                  f"memory {windowed['peak_gb'] / max(dense['peak_gb'], 1e-9):.2f}")
    print("command:", shlex.join([sys.executable, *sys.argv]))


if __name__ == "__main__":
    main()
