"""Speed and peak memory of the training methods' losses and steps, against dense formulations.

    python benchmarks/train_step.py [--only hvc] [--device cpu|cuda] [--threads 2] [--repeats 3]

Every measurement runs in a fresh Python subprocess (the same script with `--measure NAME`), so
one variant's allocations never lower or raise another's peak. Peak memory on the CPU is the
process's resident-set high-water mark (VmHWM) over the measured calls, reset to the current
RSS (`/proc/self/clear_refs`) just before them, so it is what the calls add on top of the inputs
and the model (`peak`) and the process total (`total`); on CUDA, `torch.cuda.max_memory_allocated`
over the calls. Time: the median of `--repeats` calls after one warm-up call, wall and CPU
seconds (CPU seconds are less disturbed by other processes on a shared machine).

Sections (`--only` picks one; add a section by adding to `SECTIONS` and `MEASUREMENTS`):
- hvc: (1) HVC's hybrid loss, forward + backward, at the paper's N = 128, 32x32 grids, C = 256
  (two random crops per sample as RandomResizedCrop(scale=(0, 1)) draws them): vcorr's sparse
  loss against the dense [N, 1024, 1024] formulation of the original; (2) a whole HVC training
  step (forward with its EMA update, backward, Adam) at batch 16 of 256x256 views, with either loss.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


# ------------------------------------------------------------------------------------------------
# Measuring one callable in this process


def _rss_high_water_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _rss_kib() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def measure(step: Callable[[], None], device: torch.device, repeats: int) -> dict[str, float]:
    """Peak memory over a warm-up call plus `repeats` timed calls, and their median times."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # high-water mark := current RSS
        base = _rss_kib() * 1024
    walls, cpus = [], []
    for call in range(repeats + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if call:  # the first call is a warm-up
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    if device.type == "cuda":
        peak_total = torch.cuda.max_memory_allocated()
    else:
        peak_total = _rss_high_water_kib() * 1024
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
            "peak_mib": (peak_total - base) / 2**20, "total_mib": peak_total / 2**20}


# ------------------------------------------------------------------------------------------------
# HVC


def dense_hybrid_loss(q, k, coord_q, coord_k, flow, pos_radius=0.1):
    """The original's formulation (HVC `hybrid_loss`): every [N, HW, HW] tensor materialised."""
    N, C, H, W = q.shape
    cols = torch.arange(0.0, float(W), dtype=coord_q.dtype, device=q.device).view(1, 1, -1).repeat(1, H, 1)
    rows = torch.arange(0.0, float(H), dtype=coord_q.dtype, device=q.device).view(1, -1, 1).repeat(1, 1, W)

    def grid(box):
        bw = ((box[:, 2] - box[:, 0]) / W).view(-1, 1, 1)
        bh = ((box[:, 3] - box[:, 1]) / H).view(-1, 1, 1)
        x = (cols + 0.5) * bw + box[:, 0].view(-1, 1, 1)
        y = (rows + 0.5) * bh + box[:, 1].view(-1, 1, 1)
        return x.view(-1, H * W), y.view(-1, H * W), torch.sqrt(bw ** 2 + bh ** 2)

    xq, yq, dq = grid(coord_q)
    xk, yk, dk = grid(coord_k)
    dist = torch.sqrt((xq[:, :, None] - xk[:, None, :]) ** 2 + (yq[:, :, None] - yk[:, None, :]) ** 2) / torch.max(dq, dk)
    mask = (dist < pos_radius).float().detach()
    count = mask.sum(-1).sum(-1) + 1e-6
    spatial = (torch.bmm(q.view(N, C, -1).transpose(1, 2), k.view(N, C, -1)) * mask).sum(-1).sum(-1) / count
    f = F.normalize(flow(q, k), dim=1).view(N, 2, -1)
    g = F.normalize(flow(k, q), dim=1).view(N, 2, -1)
    temporal = (torch.bmm(f.transpose(1, 2), g) * mask).sum(-1).sum(-1) / count
    return -2 * (spatial.mean() + temporal.mean()), {}


def random_crop_boxes(n: int, generator: torch.Generator, scale=(0.0, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Boxes as HVC's RandomResizedCropCoord draws them on a 640x480 image (normalised)."""
    from vcorr.train.data import RandomResizedCropBox, normalised_box

    crop = RandomResizedCropBox(256, scale, ratio)
    return torch.stack([normalised_box(*crop.box(640, 480, generator), 640, 480) for _ in range(n)])


def hvc_loss(variant: str, device: torch.device, repeats: int) -> dict[str, float]:
    from vcorr.train import hvc

    generator = torch.Generator().manual_seed(0)
    n, c, size = 128, 256, 32
    q = F.normalize(torch.randn(n, c, size, size, generator=generator), dim=1).to(device).requires_grad_(True)
    k = F.normalize(torch.randn(n, c, size, size, generator=generator), dim=1).to(device)
    box_q, box_k = (random_crop_boxes(n, generator).to(device) for _ in range(2))
    flow = hvc.FlowHead(2 * c, 256, 2).to(device)
    loss_fn = hvc.hybrid_loss if variant == "sparse" else dense_hybrid_loss

    def step() -> None:
        q.grad = None
        flow.zero_grad(set_to_none=True)
        loss, _ = loss_fn(q, k, box_q, box_k, flow, 0.1)
        loss.backward()

    result = measure(step, device, repeats)
    result["positives_per_sample"] = len(hvc.positive_pairs(box_q, box_k, size, size, 0.1)[0]) / n
    return result


def hvc_step(variant: str, device: torch.device, repeats: int) -> dict[str, float]:
    from vcorr.train import hvc

    if variant == "dense":
        hvc.hybrid_loss = dense_hybrid_loss  # HVC.forward looks the loss up in its module
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    batch, size = 16, 256
    views = [torch.randn(batch, 3, size, size, generator=generator).to(device) for _ in range(2)]
    boxes = [random_crop_boxes(batch, generator).to(device) for _ in range(2)]
    cfg = hvc.Config(batch_size=batch)
    model = hvc.build_model(cfg, total_steps=100).to(device).train()
    optimizer, _ = hvc.build_optimizer(cfg, model, steps_per_epoch=100)

    def step() -> None:
        loss, _ = hvc.training_step(model, (*views, *boxes))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return measure(step, device, repeats)


# ------------------------------------------------------------------------------------------------
# Sections, subprocesses and the report

MEASUREMENTS: dict[str, Callable[[str, torch.device, int], dict[str, float]]] = {
    "hvc_loss": hvc_loss,
    "hvc_step": hvc_step,
}
# section -> [(title, measurement, variants (the first is vcorr's, the last the reference), repeats)]
SECTIONS: dict[str, list[tuple[str, str, tuple[str, ...], int | None]]] = {
    "hvc": [
        ("HVC hybrid loss fwd+bwd, N=128, 32x32, C=256", "hvc_loss", ("sparse", "dense"), None),
        ("HVC training step, batch 16, 256x256", "hvc_step", ("sparse", "dense"), 1),
    ],
}


def run_subprocess(measurement: str, variant: str, args: argparse.Namespace, repeats: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--measure", measurement, "--variant", variant, "--device", args.device,
               "--threads", str(args.threads), "--repeats", str(repeats)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    if completed.returncode != 0:
        raise SystemExit(f"{measurement}/{variant} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SECTIONS), help="run one section (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up (default 3)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement subprocess")
    parser.add_argument("--measure", choices=sorted(MEASUREMENTS), help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.measure:
        result = MEASUREMENTS[args.measure](args.variant, torch.device(args.device), args.repeats)
        print(json.dumps(result))
        return

    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads")
    for section in ([args.only] if args.only else list(SECTIONS)):
        for title, measurement, variants, repeats in SECTIONS[section]:
            count = repeats or args.repeats
            results = {variant: run_subprocess(measurement, variant, args, count) for variant in variants}
            print(f"\n{title} (median of {count} after a warm-up; peak = memory the calls add):")
            for variant, result in results.items():
                extra = "".join(f", {key} {value:.1f}" for key, value in result.items()
                                if key not in {"wall_s", "cpu_s", "peak_mib", "total_mib"})
                print(f"  {variant:>8}: {result['wall_s']:8.3f} s wall {result['cpu_s']:8.3f} s CPU  "
                      f"peak {result['peak_mib']:9.1f} MiB (process {result['total_mib']:9.1f} MiB){extra}")
            ours, reference = results[variants[0]], results[variants[-1]]
            print(f"  {variants[0]} / {variants[-1]}: time x{ours['wall_s'] / reference['wall_s']:.3f} wall, "
                  f"x{ours['cpu_s'] / reference['cpu_s']:.3f} CPU; peak memory x{ours['peak_mib'] / reference['peak_mib']:.3f}, "
                  f"process peak x{ours['total_mib'] / reference['total_mib']:.3f}")


if __name__ == "__main__":
    main()
