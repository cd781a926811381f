"""Feature extraction + label propagation at DAVIS size: seconds per frame and peak memory.

Runs the real `vcorr propagate` code path (frame read -> resize -> FeatureExtractor.extract ->
streaming propagator -> indexed PNG written) on a synthetic DAVIS-layout sequence of real photos
(scikit-image's bundled images, shifted a few pixels per frame) at 480x854, with the random_r18
method (ResNet-18 stride 8 -> 60x107 features, K = 256) and its DAVIS settings (videowalk: context
20, radius 12, top-k 10, tau 0.05) unless `--set` changes them (e.g. `--set cxt_size=50 --set
topk=15 --set temp=0.1` for HVC's context). Each measurement runs in a fresh child process so its
peak resident memory is its own.

    python benchmarks/extract_and_propagate.py [--frames 30] [--threads 2] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEIGHT, WIDTH = 480, 854


def build_sequence(root: Path, frames: int) -> None:
    """A DAVIS-layout sequence: a real photo panning 3 px per frame, two objects in frame 0."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from vcorr.io import write_index_png

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((WIDTH + 3 * frames, HEIGHT), Image.BILINEAR))
    images = root / "JPEGImages" / "480p" / "bench"
    images.mkdir(parents=True)
    for index in range(frames):
        Image.fromarray(photo[:, 3 * index : 3 * index + WIDTH]).save(images / f"{index:05d}.jpg", quality=90)
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)
    labels[40:300, 250:520] = 1
    labels[300:470, 100:700] = 2
    write_index_png(root / "Annotations" / "480p" / "bench" / "00000.png", labels)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("bench\n")


class FrameClock:
    """Stands in for the tqdm bar: records when each frame's features were handed on."""

    def __init__(self) -> None:
        self.stamps = [time.perf_counter()]

    def update(self, count: int = 1) -> None:
        self.stamps.append(time.perf_counter())


def measure(root: Path, overrides: list[str], threads: int) -> dict:
    """Child process: extraction alone, then the whole per-sequence pipeline, timed per frame."""
    import torch

    from vcorr.data.benchmarks import benchmark
    from vcorr.evaluation.methods import load_method
    from vcorr.evaluation.pipeline import plan_sequences, propagate_sequence, read_frame
    from vcorr.features import FeatureExtractor

    torch.set_num_threads(threads)
    method = load_method("random_r18")
    settings = method.settings_for("davis17", overrides)
    extractor = FeatureExtractor(method.features, device="cpu")
    davis17 = benchmark("davis17")
    plan = plan_sequences(davis17, root)["bench"]

    frame = read_frame(plan.images[0], (HEIGHT, WIDTH))
    extractor.extract(frame)  # warm-up
    start = time.perf_counter()
    repeats = 5
    for _ in range(repeats):
        features = extractor.extract(frame)
    extract_seconds = (time.perf_counter() - start) / repeats
    extract_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    clock = FrameClock()
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        propagate_sequence(plan, davis17, extractor, settings, Path(out), clock)
        total = time.perf_counter() - start
    per_frame = [b - a for a, b in zip(clock.stamps[1:], clock.stamps[2:])]  # frame t's extraction to t+1's
    context = settings.params.get("cxt_size", settings.params.get("precede"))
    full = per_frame[context:] or per_frame[-3:]
    return {
        "features": list(features.shape),
        "settings": settings.as_dict(),
        "extract_seconds_per_frame": extract_seconds,
        "extract_peak_rss_mb": extract_peak_mb,
        "pipeline_seconds_per_frame_all": total / len(plan.frames),
        "pipeline_seconds_per_frame_context_full": sum(full) / len(full),
        "frames_with_full_context": len(per_frame[context:]),
        "per_frame_seconds": [round(seconds, 3) for seconds in per_frame],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=30, help="sequence length (default 30: 10 frames at full context 20)")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads (default 2, the dev machines' cores)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.overrides, args.threads)))
        return 0

    command = "python benchmarks/extract_and_propagate.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "DAVIS"
        build_sequence(root, args.frames)
        child = [sys.executable, __file__, "--child", str(root), "--threads", str(args.threads)]
        for override in args.overrides:
            child += ["--set", override]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        result = json.loads(subprocess.run(child, env=env, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    settings = result["settings"]
    print(f"command: {command}")
    print(f"frames: {args.frames} at {HEIGHT}x{WIDTH}, features {result['features']} (random_r18, ResNet-18 stride 8), "
          f"{args.threads} threads, CPU")
    print(f"protocol: {json.dumps(settings)}")
    print(f"feature extraction:            {result['extract_seconds_per_frame']:.3f} s/frame "
          f"(peak RSS {result['extract_peak_rss_mb']:.0f} MB)")
    print(f"extract + propagate + write:   {result['pipeline_seconds_per_frame_context_full']:.3f} s/frame once the "
          f"context is full ({result['frames_with_full_context']} frames), "
          f"{result['pipeline_seconds_per_frame_all']:.3f} s/frame over the whole sequence")
    print(f"peak memory (RSS, whole run):  {result['peak_rss_mb']:.0f} MB")
    print(f"per frame (s): {result['per_frame_seconds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
