"""What vcorr's CUDA paths compute and cost on one GPU, in one call (under 8 minutes on an H100).

    python3 benchmarks/gpu_check.py [--device cuda|cpu] [--quick] [--only NAME]... [--out FILE]
                                    [--budget SECONDS] [--sizes gpu|cpu] [--threads N]

Needs torch, torchvision, numpy, pillow, opencv, scipy, pandas, pyyaml, tqdm, tensorboard and
vcorr itself (this checkout; nothing is installed, no dataset or network is used: every input is
synthetic, every network randomly initialised, which computes what trained weights do). Each check
prints one line, PASS / FAIL / SKIP / ERROR / INFO with what it measured and its tolerance; an
exception fails its own check only. `--out FILE` writes every result as JSON, rewritten after each
check (a run cut short keeps what it measured). Exit status 1 when a check fails or errs.

Checks (`--only` takes a name or a prefix: `train`, `train.hvc`, `throughput`, ...):

- train.<method>.<fp32|fp16|bf16>: the first training step of hvc / moco / stt (the published
  config at a small size, `vcorr.train.loop.prepare` + `train_one_epoch` on the same synthetic
  images) against the CPU's float32 step: loss, then every parameter's gradient. fp32 (TF32 off
  for the comparison): loss within 1e-4 relative, gradients within 1e-3 of each tensor's largest
  entry. fp16 (autocast + GradScaler; a step GradScaler skips for overflow is redone at the
  scale it backs off to, as training does) and bf16 (autocast): loss within 1e-2 / 5e-2
  relative, every gradient finite, the norm of all of them within a factor 2 of the CPU's (a
  scaling error is a factor of thousands). Their cosine to the CPU's is printed, not held to a
  tolerance: from random weights the first step's gradient direction is ill-conditioned (MoCo v2
  at these sizes under CPU bf16 autocast: cosine 0.30 with the loss within 5e-3).
- ddp.collectives, ddp.<method>: a process group of one process started here (NCCL on CUDA,
  gloo on the CPU, tcp://127.0.0.1 on a free port; no torchrun): the collectives vcorr uses,
  then two training steps of each method wrapped in DistributedDataParallel (SyncBatchNorm
  where the config asks for it, on CUDA, as the loop converts it) against the same steps
  unwrapped: the same losses and gradients bit for bit (or, as below, within the run-to-run
  noise of a kernel with no deterministic CUDA implementation), every gradient bucket through
  the backend's all-reduce.
- resume.<method>[.fp16]: `vcorr.train.loop.train` for 4 steps, against 3 steps then a rerun to 4
  (checkpoint, resume mid-epoch): exported weights, model, optimiser and scaler states bit-identical,
  with deterministic algorithms. Where a kernel has no deterministic CUDA implementation (named in
  the line), the runs are repeated without the guarantee and the resumed run may differ from the
  uninterrupted one by no more than two uninterrupted runs differ from each other (times 2).
- propagation.<crw|stt>: both protocols with DAVIS-2017's settings of hvc_release_coco and
  stt_release_r18_s8 on random features, device against CPU: soft labels within 1e-4, output
  ids equal on >= 99.9% of pixels.
- ties.topk: CUDA's `torch.topk`, called as the originals call it (`[1, n, queries]`, over dim
  1, lists of the originals' DAVIS lengths and shorter ones) on rows full of exact ties and
  masked keys, keeps the same keys as vcorr's rule `ties=cuda` (`topk_as_original`): all rows.
- ties.<crw|stt>: propagation on features with exact affinity ties, device against CPU, under
  both tie rules: identical output ids, soft labels within 1e-6.
- features.<fp32|fp16>: HVC's fused features (hvc_release_coco's encoders, HVC's zero-image BN
  step) of two 480x854 frames, on the device (fp16 = `FeatureExtractor(amp=True)`, HVC's
  published fp16 autocast) against the CPU in float32: fp32 within 1e-4, fp16 cosine per
  feature cell >= 0.99 everywhere and >= 0.999 on average.
- throughput.train.<model>: images/s (Spa-then-Temp: clips/s, two frames each) of the loop's step
  on the GPU at the published batch (halved until it fits), inputs already on the GPU, in fp32
  (TF32 convolutions as PyTorch defaults to), fp16 and bf16; peak GPU memory; how many images/s
  one loader process prepares from synthetic JPEGs of the dataset's size; and the projected
  time of the published schedule (config/models.yaml's model: epochs x the dataset's items of
  config/datasets.yaml / throughput) on this one GPU.
- throughput.propagation.<method>: frames/s of features + propagation + output ids at 480x854 over
  a sequence of DAVIS-2017 val's mean length, and the projected time of DAVIS-2017 val.

`--device cpu` runs the same checks at tiny sizes on one thread (a few minutes on 2 cores):
comparisons are then CPU against CPU, bf16 runs as CPU autocast without a verdict, and a check
that needs CUDA says so. `--quick` runs every check's code on the cheapest cases (one training
method, one schedule, two evaluated methods, fewer timed steps and frames): the test suite's run.
`--budget` (default 420 s) skips the checks that would start after it, so a run ends in time
with what it measured. To run on a GPU machine from the repository root:
`PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json`.
"""

from __future__ import annotations

import os

# cuBLAS is deterministic only with a fixed workspace, which must be set before CUDA starts
# (the resume and DDP checks turn deterministic algorithms on).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import argparse
import contextlib
import gc
import io
import itertools
import json
import logging
import math
import platform
import shlex
import socket
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from vcorr.config import load_registry  # noqa: E402
from vcorr.data.datasets import dataset  # noqa: E402
from vcorr.data.index import INDEX_COLUMNS  # noqa: E402
from vcorr.evaluation.methods import load_method  # noqa: E402
from vcorr.features import FeatureExtractor  # noqa: E402
from vcorr.models.config import EncoderConfig, FeatureConfig  # noqa: E402
from vcorr.propagation import propagate, propagate_stream  # noqa: E402
from vcorr.propagation.affinity import topk_as_original  # noqa: E402
from vcorr.propagation.parameters import TIE_RULES  # noqa: E402
from vcorr.propagation.stt_labels import stt_first_frame  # noqa: E402
from vcorr.provenance import git_state  # noqa: E402
from vcorr.train import load_config  # noqa: E402
from vcorr.train.checkpoint import checkpoint_path, load_checkpoint  # noqa: E402
from vcorr.train.data import ResumableSampler  # noqa: E402
from vcorr.train.loop import AMP_DTYPES, make_loader, prepare, train, train_one_epoch  # noqa: E402

METHODS = ("hvc", "moco", "stt")
# --quick: every check's code, on the cases cheapest at the CPU's sizes (the code is the same for
# every method, schedule and evaluated method).
QUICK_METHODS = ("moco",)
# The published config each method's checks start from (the first of its schedules).
METHOD_CONFIGS = {"hvc": "config/train/hvc.yaml", "moco": "config/train/moco_v2.yaml", "stt": "config/train/stt_r18.yaml"}
PRECISIONS = ("fp32", "fp16", "bf16")
# Tolerances against the CPU's float32 step: the loss difference over max(|loss|, 1) (the losses
# are O(1) objectives; HVC's is a difference of terms, near 0 at the start); fp32 gradients
# relative to each tensor's largest entry; AMP gradients by the ratio of their norms (the module
# docstring says why not their direction).
LOSS_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}
GRADIENT_TOLERANCE = 1e-3
NORM_RATIO = (0.5, 2.0)
SOFT_TOLERANCE, IDS_AGREEMENT, TIE_TOLERANCE = 1e-4, 0.999, 1e-6
FEATURE_TOLERANCE, FEATURE_COSINE_MIN, FEATURE_COSINE_MEAN = 1e-4, 0.99, 0.999
# Published schedules projected (config/models.yaml names) and what one item of their data is.
SCHEDULES = ("hvc", "moco_v2", "moco_v2_r18", "stt", "stt_r50")
QUICK_SCHEDULES = ("moco_v2",)
ITEM = {"hvc": ("frames", "images"), "moco": ("frames", "images"), "stt": ("sequences", "clips")}
# Evaluation timed at DAVIS-2017 val's frame size (480p), on its registry counts.
EVALUATED = (("hvc_release_coco", True), ("hvc_release_coco", False), ("crw_release", False),
             ("stt_release_r18_s8", False), ("stt_release_r50_s8", False))
QUICK_EVALUATED = (("hvc_release_coco", True), ("hvc_release_coco", False), ("stt_release_r18_s8", False))
DAVIS_FRAME = (480, 854)


@dataclass(frozen=True)
class Sizes:
    """Problem sizes: what the GPU run measures, and the tiny ones of `--device cpu`."""

    train: dict[str, list[str]]  # --set overrides of each method's published config for the checks
    images: tuple[int, int]  # synthetic training images (H, W) of the checks
    throughput: dict[str, list[str]]  # overrides of the throughput runs by method (the CPU's tiny sizes)
    throughput_images: tuple[int, int]  # synthetic JPEGs for the data rate: COCO / ImageNet-like
    throughput_frames: tuple[int, int]  # ... and YouTube-VOS-like frames (Spa-then-Temp)
    frame: tuple[int, int]  # frames of the features check and the evaluation throughput
    resize: bool  # resize frames to the method's input size (Spa-then-Temp: short side 480) for the throughput
    grid: tuple[int, int]  # feature grid of the propagation checks
    channels: int
    frames: int  # frames of the propagation checks
    topk_lists: tuple[tuple[int, int], ...]  # (list length, k) of ties.topk
    tie_grids: tuple[tuple[int, int], ...]


GPU_SIZES = Sizes(
    train={"hvc": ["image_size=128", "batch_size=8"],
           "moco": ["image_size=96", "batch_size=8", "queue_size=4096"],
           "stt": ["image_size=128", "batch_size=4"]},
    images=(160, 224), throughput={}, throughput_images=(480, 640), throughput_frames=(720, 1280),
    frame=DAVIS_FRAME, resize=True, grid=(60, 107), channels=256, frames=8,
    # STT's DAVIS list: frame 0 + 20 preceding frames of 60x107; HVC's: 1 + 50; and shorter ones.
    topk_lists=((90, 10), (700, 10), (3000, 15), (21 * 60 * 107, 10), (51 * 60 * 107, 15)),
    tie_grids=((12, 10), (30, 40)),
)
CPU_SIZES = Sizes(
    train={"hvc": ["image_size=32", "batch_size=4"],
           "moco": ["arch=resnet18", "image_size=32", "batch_size=4", "queue_size=16", "dim=16"],
           "stt": ["image_size=64", "batch_size=2", "teacher_depth=18"]},
    images=(48, 64),
    throughput={"hvc": ["image_size=32", "batch_size=4"],
                "moco": ["arch=resnet18", "image_size=32", "batch_size=4", "queue_size=16"],
                "stt": ["image_size=64", "batch_size=2", "depth=18", "teacher_depth=18"]},
    throughput_images=(48, 64), throughput_frames=(48, 64),
    frame=(64, 112), resize=False, grid=(8, 14), channels=16, frames=4,
    topk_lists=((90, 10), (700, 10)), tie_grids=((12, 10),),
)
COMMON = ["workers=0", "log_every=1", "checkpoint_every=0"]


# ------------------------------------------------------------------------------------------------
# Results


@dataclass
class Result:
    name: str
    status: str  # PASS, FAIL, SKIP, ERROR, INFO
    summary: str
    measured: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class Check(Exception):
    """A check's own verdict raised from inside it (SKIP with its reason)."""

    def __init__(self, status: str, summary: str):
        super().__init__(summary)
        self.status, self.summary = status, summary


def verdict(ok: bool, summary: str, **measured: Any) -> Result:
    return Result("", "PASS" if ok else "FAIL", summary, measured)


class Report:
    """Runs checks one by one, each in its own try, prints a line per check, keeps the JSON."""

    def __init__(self, only: list[str] | None, out: Path | None, header: dict[str, Any], budget: float = math.inf):
        self.only, self.out, self.header, self.budget = only, out, header, budget
        self.results: list[Result] = []
        self.started = time.perf_counter()

    def wanted(self, name: str) -> bool:
        return not self.only or any(name == item or name.startswith(item + ".") for item in self.only)

    def run(self, name: str, check: Callable[..., Result], *args: Any) -> Result | None:
        if not self.wanted(name):
            return None
        started = time.perf_counter()
        try:
            if started - self.started > self.budget:
                raise Check("SKIP", f"skipped: the time budget ({self.budget:.0f} s) is spent")
            result = check(*args)
        except Check as stop:
            result = Result(name, stop.status, stop.summary)
        except Exception as error:  # noqa: BLE001 - one check's failure must not end the others
            trace = traceback.format_exc(limit=-3).strip().splitlines()
            result = Result(name, "ERROR", f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
                            {"traceback": trace})
        finally:
            release_memory()
        result.name, result.seconds = name, time.perf_counter() - started
        self.results.append(result)
        print(f"{result.status:5} {name:34} {result.summary}  [{result.seconds:.1f} s]", flush=True)
        if result.status == "ERROR":
            print("      " + "\n      ".join(result.measured["traceback"]), flush=True)
        self.write()
        return result

    def write(self) -> None:
        if self.out is None:
            return
        summary = {**self.header, "results": [vars(result) for result in self.results],
                   "counts": {status: sum(r.status == status for r in self.results)
                              for status in ("PASS", "FAIL", "ERROR", "SKIP", "INFO")}}
        temporary = self.out.with_name(self.out.name + ".part")
        temporary.write_text(json.dumps(summary, indent=1, default=str))
        temporary.replace(self.out)

    def exit_code(self) -> int:
        return int(any(result.status in ("FAIL", "ERROR") for result in self.results))


def release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------------
# Numerics helpers


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """Float32 convolutions and products without TF32 (PyTorch's CUDA default for convolutions),
    so that comparisons with the CPU measure the code, not TF32's 10-bit mantissa."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def deterministic(strict: bool) -> Iterator[None]:
    """Deterministic algorithms (cuDNN and cuBLAS included); `strict`: an op without a
    deterministic kernel raises instead of warning."""
    saved = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    saved_cudnn = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=not strict)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved_cudnn


def flat_tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor and number inside nested dicts / lists, by its path, as CPU tensors."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj.detach().cpu()}
    if isinstance(obj, (int, float)):
        return {prefix: torch.tensor(obj, dtype=torch.float64)}
    found: dict[str, torch.Tensor] = {}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found.update(flat_tensors(value, f"{prefix}/{key}"))
    return found


def max_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over tensors of the same names (inf when names or shapes
    differ, or where either holds a nan or inf the other does not hold alike)."""
    if first.keys() != second.keys() or not first:
        return math.inf
    worst = 0.0
    for name, value in first.items():
        other = second[name]
        if value.shape != other.shape:
            return math.inf
        if torch.equal(value, other):
            continue
        difference = float((value.double() - other.double()).abs().max())
        worst = max(worst, difference if math.isfinite(difference) else math.inf)
    return worst


def relative_gradient_error(gradients: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> tuple[float, str]:
    """max over tensors of max |g - g_ref| / max |g_ref|, and the tensor where it is largest."""
    worst, where = 0.0, ""
    for name, value in reference.items():
        scale = float(value.abs().max())
        error = float((gradients[name] - value).abs().max()) / scale if scale > 0 else float(gradients[name].abs().max())
        if error > worst or not where:
            worst, where = error, name
    return worst, where


def norm_ratio_and_cosine(gradients: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> tuple[float, float]:
    """|g| / |g_ref| and the cosine of g and g_ref, all tensors as one vector."""
    first = torch.cat([gradients[name].double().flatten() for name in reference])
    second = torch.cat([value.double().flatten() for value in reference.values()])
    return float(first.norm() / second.norm()), float(F.cosine_similarity(first, second, dim=0))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# Synthetic inputs


def texture(height: int, width: int, generator: np.random.Generator) -> np.ndarray:
    """A smooth random RGB image (uint8 [H, W, 3]): upsampled noise, so crops and features vary."""
    coarse = generator.integers(0, 256, (max(height // 16, 2), max(width // 16, 2), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def synthetic_index(folder: Path, sequences: int, size: tuple[int, int], distinct: int = 4) -> Path:
    """`sequences` two-frame sequences (HVC and MoCo take every frame as an image, Spa-then-Temp
    each sequence as a clip) over `distinct` JPEG files, and their index CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(0)
    files = []
    for number in range(distinct):
        path = folder / f"{number:06d}.jpg"
        Image.fromarray(texture(*size, generator)).save(path, quality=90)
        files.append(path)
    rows = [["train", f"seq{sequence:04d}", f"{frame:05d}", str(files[(2 * sequence + frame) % distinct]), "",
             size[0], size[1], pd.NA] for sequence in range(sequences) for frame in range(2)]
    index = folder / "index.csv"
    pd.DataFrame(rows, columns=INDEX_COLUMNS).to_csv(index, index=False)
    return index


def moving_frames(count: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """A slowly panning textured scene with two objects moving across it (uint8 RGB frames), with
    sensor-like noise: without it, whole-pixel motion makes regions pixel-identical across frames,
    hence exact affinity ties, which real video almost never has and which take the tie rule's
    slower path."""
    generator = np.random.default_rng(seed)
    height, width = size
    scene = texture(height + 2 * count + 8, width + 4 * count + 8, generator)
    objects = [texture(height // 3, width // 5, generator) for _ in range(2)]
    frames = []
    for t in range(count):
        frame = scene[t: t + height, 2 * t: 2 * t + width].copy()
        for number, patch in enumerate(objects):
            top, left = height // 4 + number * height // 3, (width // 8 + 3 * t * (number + 1)) % (width - patch.shape[1])
            frame[top: top + patch.shape[0], left: left + patch.shape[1]] = patch
        noise = generator.integers(-3, 4, frame.shape)
        frames.append(np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return frames


def object_labels(size: tuple[int, int]) -> np.ndarray:
    """The first frame's ids of `moving_frames`' two objects (uint8 [H, W])."""
    height, width = size
    labels = np.zeros(size, np.uint8)
    for number in range(2):
        top, left = height // 4 + number * height // 3, width // 8
        labels[top: top + height // 3, left: left + width // 5] = number + 1
    return labels


# ------------------------------------------------------------------------------------------------
# Training: one prepared run, its first steps


@dataclass
class StepResult:
    losses: list[float]
    terms: dict[str, float]
    gradients: dict[str, torch.Tensor]
    note: str = ""


def method_config(method: str, overrides: list[str]):
    return load_config(method, REPO_ROOT / METHOD_CONFIGS[method], [*COMMON, *overrides])


def prepared(method: str, overrides: list[str], index: Path, workdir: Path, device: torch.device, precision: str,
             init_scale: float | None = None):
    """`prepare` of the loop for `method` with `precision` (GradScaler starting at `init_scale`,
    if given). The loop trains in float32 on the CPU: there bf16 is set as CPU autocast, so that
    this check's code runs."""
    amp = [] if precision == "fp32" or device.type != "cuda" else [f"amp={precision}"]
    run, _ = prepare(method, method_config(method, [*overrides, *amp]), index, workdir, device=str(device))
    if precision != "fp32" and device.type != "cuda":
        run.amp_dtype = AMP_DTYPES[precision]
    if init_scale is not None:
        run.scaler = torch.amp.GradScaler(device.type, init_scale=init_scale)
    return run


def run_steps(run, steps: int, wrap: Callable | None = None) -> StepResult:
    """`steps` steps of the loop from the run's own loader; the last step's gradients."""
    if wrap is not None:
        run.model = wrap(run.model)
    run.last_step = run.position.global_step + steps
    losses, terms = [], {}

    def after_step(values, images):
        losses.append(values["loss"])
        terms.update({name: value for name, value in values.items() if name != "loss"})

    while run.position.global_step < run.last_step:
        if train_one_epoch(run, make_loader(run), after_step):
            break
        run.position.epoch += 1
        run.position.step_in_epoch = 0
    gradients = {name: parameter.grad.detach().float().cpu() for name, parameter in run.unwrapped.named_parameters()
                 if parameter.grad is not None}
    return StepResult(losses, terms, gradients)


def first_step(method: str, sizes: Sizes, index: Path, device: torch.device, precision: str) -> StepResult:
    """The loss and gradients of the first step of `method` in `precision`."""
    with tempfile.TemporaryDirectory() as work, ieee_fp32():
        def attempt(scale: float | None) -> tuple[StepResult, float | None]:
            run = prepared(method, sizes.train[method], index, Path(work), device, precision, scale)
            result = run_steps(run, 1)
            return result, run.scaler.get_scale() if run.scaler.is_enabled() else None

        return until_finite(attempt)


def until_finite(attempt: Callable[[float | None], tuple[StepResult, float | None]], tries: int = 12) -> StepResult:
    """The first attempt whose gradients are all finite. GradScaler skips an fp16 step whose scaled
    gradients overflow and halves its scale, as it does in training, so the step is redone from
    the start at the scale it backed off to. `attempt(initial scale or None)` returns the step and
    the scaler's scale after it (None without a scaler)."""
    scale, skipped = None, []
    for _ in range(tries):
        result, after = attempt(scale)
        if all(bool(torch.isfinite(value).all()) for value in result.gradients.values()):
            if skipped:
                result.note = f"; GradScaler skipped step 1 at scale {', '.join(skipped)}, compared at {scale:g}"
            return result
        if after is None:
            raise Check("FAIL", f"non-finite gradients (loss {result.losses[0]:g})")
        skipped.append(f"{2 * after:g}")
        scale = after
    raise Check("FAIL", f"GradScaler skipped step 1 at every scale down to {scale:g}")


def check_train(method: str, precision: str, sizes: Sizes, index: Path, device: torch.device,
                references: dict[str, Any]) -> Result:
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise Check("SKIP", "skipped: this GPU has no bf16")
    if precision == "fp16" and device.type != "cuda":
        raise Check("SKIP", "skipped: needs CUDA (float16 autocast and GradScaler; CPU float16 kernels are slow and not CUDA's)")
    if method not in references:
        references[method] = first_step(method, sizes, index, torch.device("cpu"), "fp32")
    reference = references[method]
    # On the CPU the device's float32 step is the reference step itself.
    same = device.type == "cpu" and precision == "fp32"
    result = reference if same else first_step(method, sizes, index, device, precision)
    loss_error = abs(result.losses[0] - reference.losses[0]) / max(abs(reference.losses[0]), 1.0)
    measured = {"loss": result.losses[0], "cpu_loss": reference.losses[0], "loss_error": loss_error,
                "terms": result.terms, "cpu_terms": reference.terms}
    summary = (f"loss {result.losses[0]:.6g} vs CPU {reference.losses[0]:.6g}: diff / max(|loss|, 1) {loss_error:.1e} "
               f"(tol {LOSS_TOLERANCE[precision]:g})")
    ok = loss_error <= LOSS_TOLERANCE[precision] and result.gradients.keys() == reference.gradients.keys()
    if precision == "fp32":
        error, tensor = relative_gradient_error(result.gradients, reference.gradients)
        measured.update(gradient_rel=error, worst_tensor=tensor)
        summary += f"; gradients rel {error:.1e} at {tensor} (tol {GRADIENT_TOLERANCE:g})"
        ok = ok and error <= GRADIENT_TOLERANCE
    else:
        ratio, similarity = norm_ratio_and_cosine(result.gradients, reference.gradients)
        measured.update(gradient_norm_ratio=ratio, gradient_cosine=similarity)
        summary += (f"; gradient norm / CPU's {ratio:.3f} (tol {NORM_RATIO[0]:g}-{NORM_RATIO[1]:g}), "
                    f"cosine {similarity:.3f}")
        ok = ok and NORM_RATIO[0] <= ratio <= NORM_RATIO[1]
    summary += result.note + f" ({len(result.gradients)} tensors)"
    if precision != "fp32" and device.type == "cpu":
        # The loop trains in float32 on the CPU; CPU autocast (its own op list and kernels) ran
        # this check's code, its numbers say nothing about a GPU's.
        return Result("", "SKIP", f"skipped: needs CUDA for a verdict; CPU autocast ran: {summary}", measured)
    return verdict(ok, summary, **measured)


# ------------------------------------------------------------------------------------------------
# DDP with one process


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[str]:
    """A process group of this process alone (NCCL on CUDA, gloo on the CPU), torchrun-free."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1, **kwargs)
    try:
        yield backend
    finally:
        dist.destroy_process_group()


def check_collectives(device: torch.device) -> Result:
    with process_group(device) as backend:
        values = torch.arange(6, dtype=torch.float32, device=device)
        summed = values.clone()
        dist.all_reduce(summed)
        parts = [torch.empty_like(values)]
        dist.all_gather(parts, values)
        broadcast = values.clone()
        dist.broadcast(broadcast, src=0)
        objects: list[Any] = [None]
        dist.all_gather_object(objects, {"rank": dist.get_rank()})
        dist.barrier()
        ok = torch.equal(summed, values) and torch.equal(parts[0], values) and torch.equal(broadcast, values)
        ok = ok and objects == [{"rank": 0}]
    return verdict(ok, f"{backend}: all_reduce, all_gather, broadcast, all_gather_object, barrier on {device}")


def compare_runs(produce: Callable[[], dict[str, torch.Tensor]], other: Callable[[], dict[str, torch.Tensor]]) -> dict[str, Any]:
    """`produce()` against `other()` under deterministic algorithms. If an op refuses
    (no deterministic kernel), both run again allowing it, with `produce()` twice for the
    run-to-run noise they are held to."""
    try:
        with deterministic(strict=True):
            reference, candidate = produce(), other()
        return {"difference": max_difference(reference, candidate), "noise": 0.0, "nondeterministic": None,
                "tensors": len(reference)}
    except RuntimeError as error:
        if "deterministic" not in str(error):
            raise
        refused = str(error).splitlines()[0]
    with deterministic(strict=False):
        reference, candidate, again = produce(), other(), produce()
    return {"difference": max_difference(reference, candidate), "noise": max_difference(reference, again),
            "nondeterministic": refused, "tensors": len(reference)}


def comparison_verdict(comparison: dict[str, Any], what: str) -> Result:
    difference, noise = comparison["difference"], comparison["noise"]
    if comparison["nondeterministic"] is None:
        return verdict(difference == 0, f"{what}: max difference {difference:.3g} over {comparison['tensors']} tensors "
                       "(tol 0, deterministic algorithms)", **comparison)
    return verdict(difference <= 2 * noise,
                   f"{what}: max difference {difference:.3g} vs {noise:.3g} between two identical runs (tol 2x that); "
                   f"not bit-exact here: {comparison['nondeterministic']}", **comparison)


def check_ddp(method: str, sizes: Sizes, index: Path, device: torch.device) -> Result:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    from torch.nn.parallel import DistributedDataParallel

    buckets: list[int] = []

    def all_reduce_counted(state, bucket):
        buckets.append(bucket.buffer().numel())
        return default_hooks.allreduce_hook(state, bucket)

    def wrap(model):
        if method_config(method, sizes.train[method]).sync_bn and device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # as the loop does under DDP
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        wrapped.register_comm_hook(None, all_reduce_counted)
        return wrapped

    def steps(wrapper) -> Callable[[], dict[str, torch.Tensor]]:
        def produce() -> dict[str, torch.Tensor]:
            with tempfile.TemporaryDirectory() as work, ieee_fp32():
                run = prepared(method, sizes.train[method], index, Path(work), device, "fp32")
                result = run_steps(run, 2, wrapper)
            return {"loss": torch.tensor(result.losses), **result.gradients}
        return produce

    with process_group(device) as backend:
        comparison = compare_runs(steps(None), steps(wrap))
    comparison["all_reduced_buckets"] = len(buckets)
    result = comparison_verdict(comparison, f"{backend} DDP (world 1) vs unwrapped, 2 steps, losses and gradients")
    if not buckets:
        return Result("", "FAIL", result.summary + "; no gradient went through the all-reduce", comparison)
    result.summary += f"; {len(buckets)} buckets all-reduced ({sum(buckets):,} values)"
    return result


# ------------------------------------------------------------------------------------------------
# Checkpoint and resume


def check_resume(method: str, precision: str, sizes: Sizes, index: Path, device: torch.device) -> Result:
    if precision != "fp32" and device.type != "cuda":
        raise Check("SKIP", f"skipped: needs CUDA (the loop trains in float32 on the CPU: amp {precision} is ignored)")
    amp = [] if precision == "fp32" else [f"amp={precision}"]

    def run_to(work: Path, *stops: int) -> dict[str, torch.Tensor]:
        for stop in stops:
            config = method_config(method, [*sizes.train[method], *amp, f"max_steps={stop}"])
            with contextlib.redirect_stderr(io.StringIO()), ieee_fp32():  # tqdm bars, warnings
                train(method, config, index, work, work / "out.pth", device=str(device))
        state = load_checkpoint(checkpoint_path(work))
        kept = {key: state[key] for key in ("model", "optimizer", "scaler", "train_state", "global_step")}
        return flat_tensors({"export": torch.load(work / "out.pth", map_location="cpu", weights_only=False),
                             "checkpoint": kept, "step": torch.tensor(state["global_step"])})

    def fresh(*stops: int) -> Callable[[], dict[str, torch.Tensor]]:
        def produce() -> dict[str, torch.Tensor]:
            with tempfile.TemporaryDirectory() as work:
                return run_to(Path(work), *stops)
        return produce

    comparison = compare_runs(fresh(4), fresh(3, 4))
    return comparison_verdict(comparison, "4 steps vs 3 + resume to 4: export, model, optimiser, scaler")


# ------------------------------------------------------------------------------------------------
# Propagation


def random_features(frames: int, channels: int, grid: tuple[int, int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(frames, channels, max(grid[0] // 4, 2), max(grid[1] // 4, 2), generator=generator)
    smooth = F.interpolate(coarse, size=grid, mode="bilinear", align_corners=False)
    return smooth + 0.3 * torch.randn(frames, channels, *grid, generator=generator)


def davis_settings(method: str):
    return load_method(method).settings_for("davis17")


def protocol_inputs(protocol: str, grid: tuple[int, int]) -> tuple[np.ndarray, dict[str, Any], str]:
    """First-frame ids at the input size (stride 8) and DAVIS-2017's parameters of the protocol's
    published method."""
    method = {"crw": "hvc_release_coco", "stt": "stt_release_r18_s8"}[protocol]
    size = (grid[0] * 8, grid[1] * 8)
    return object_labels(size), dict(davis_settings(method).params), method


def propagated(features: torch.Tensor, label0, protocol: str, params: dict[str, Any]):
    result = propagate(features, label0, protocol, **params)
    return result.soft.cpu(), result.ids.cpu()


def check_propagation(protocol: str, sizes: Sizes, device: torch.device) -> Result:
    label0, params, method = protocol_inputs(protocol, sizes.grid)
    features = random_features(sizes.frames, sizes.channels, sizes.grid, seed=1)
    with ieee_fp32():
        soft, ids = propagated(features.to(device), label0, protocol, params)
    cpu_soft, cpu_ids = propagated(features, label0, protocol, params)
    difference = float((soft - cpu_soft).abs().max())
    agreement = float((ids == cpu_ids).double().mean())
    return verdict(difference <= SOFT_TOLERANCE and agreement >= IDS_AGREEMENT,
                   f"{method}'s DAVIS settings, {sizes.frames} frames of {sizes.grid[0]}x{sizes.grid[1]}x{sizes.channels}: "
                   f"soft labels max diff {difference:.1e} (tol {SOFT_TOLERANCE:g}), ids agree on {agreement:.5%} "
                   f"(tol >= {IDS_AGREEMENT:.1%})", soft_difference=difference, ids_agreement=agreement, params=params)


def tied_rows(length: int, queries: int, generator: torch.Generator) -> torch.Tensor:
    """`[queries, length]` affinities as the originals list them: most keys outside the window
    (-inf), the rest on a few levels, so that the k-th value is tied in most rows."""
    levels = torch.randint(0, 6, (queries, length), generator=generator).float() / 4
    inside = torch.rand(queries, length, generator=generator) < max(0.05, 60 / length)
    return torch.where(inside, levels, torch.full_like(levels, float("-inf")))


def check_topk(sizes: Sizes, device: torch.device) -> Result:
    generator = torch.Generator().manual_seed(0)
    temperature, queries = 0.07, 32
    rows, decided, agree = 0, 0, 0
    for length, k in sizes.topk_lists:
        scores = tied_rows(length, queries, generator).to(device)
        ours = topk_as_original(scores, k, temperature, "cuda").sort(1).values
        if device.type != "cuda":
            continue
        affinity = (scores / temperature).t().contiguous()[None]  # the originals' [1, n, queries]
        theirs = affinity.topk(k, dim=1).indices[0].t().sort(1).values
        kth = (scores / temperature).topk(k, dim=1).values[:, -1:]
        decided += int(((scores / temperature) >= kth).sum(1).gt(k).sum())  # rows where the rule chooses
        agree += int((ours == theirs).all(1).sum())
        rows += queries
    if device.type != "cuda":
        raise Check("SKIP", "skipped: needs CUDA (vcorr's rule ran on the CPU rows)")
    return verdict(agree == rows, f"torch.topk on {torch.cuda.get_device_name(device)} keeps vcorr's ties=cuda choice on "
                   f"{agree}/{rows} rows ({decided} with ties at the k-th value), lists of "
                   f"{', '.join(str(length) for length, _ in sizes.topk_lists)}", rows=rows, agree=agree, decided=decided)


def codebook_features(frames: int, grid: tuple[int, int], seed: int) -> torch.Tensor:
    """Features with exact affinity ties: each cell one of a few unit vectors with four entries of
    0.5 (every dot product exact in any order); frame 1 repeats frame 0, frame 2 its upper half."""
    generator = torch.Generator().manual_seed(seed)
    supports = torch.tensor(list(itertools.combinations(range(8), 4)))
    codebook = torch.zeros(10, 8).scatter_(1, supports[torch.randperm(len(supports), generator=generator)[:10]], 0.5)
    ids = torch.randint(0, len(codebook), (frames, *grid), generator=generator)
    ids[1] = ids[0]
    ids[2, : grid[0] // 2] = ids[1, : grid[0] // 2]
    return codebook[ids].permute(0, 3, 1, 2).contiguous()


def check_tie_propagation(protocol: str, sizes: Sizes, device: torch.device) -> Result:
    params = {"crw": dict(cxt_size=3, radius=2.5, topk=6, temp=0.1, num_channels=5),
              "stt": dict(precede=2, topk=6, temp=0.07, nrange=4)}[protocol]
    worst, same, cases = 0.0, 0, 0
    for (height, width), ties, seed in itertools.product(sizes.tie_grids, TIE_RULES, range(2)):
        features = codebook_features(6, (height, width), seed)
        label0 = (np.arange(height * width).reshape(height, width) % 5).astype(np.uint8)
        soft, ids = propagated(features.to(device), label0, protocol, {**params, "ties": ties})
        cpu_soft, cpu_ids = propagated(features, label0, protocol, {**params, "ties": ties})
        worst = max(worst, float((soft - cpu_soft).abs().max()))
        same += int(torch.equal(ids, cpu_ids))
        cases += 1
    return verdict(worst <= TIE_TOLERANCE and same == cases,
                   f"exact ties, rules {'/'.join(TIE_RULES)}, grids {sizes.tie_grids}: ids identical in {same}/{cases} "
                   f"cases, soft max diff {worst:.1e} (tol {TIE_TOLERANCE:g})", soft_difference=worst, identical=same,
                   cases=cases)


# ------------------------------------------------------------------------------------------------
# Features


def random_weights(method: str) -> FeatureConfig:
    """The method's encoders, fusion and input, randomly initialised (no checkpoint is needed:
    the computation is the same)."""
    features = load_method(method).features
    encoders = tuple(EncoderConfig(encoder.arch, None, seed=number) for number, encoder in enumerate(features.encoders))
    return FeatureConfig(encoders, features.fusion, features.input)


def extractor(method: str, device: torch.device, amp: bool) -> FeatureExtractor:
    options = davis_settings(method).options
    return FeatureExtractor(random_weights(method), device=device, amp=amp,
                            zero_image_bn_update=bool(options.get("zero_image_bn_update")))


def check_features(precision: str, sizes: Sizes, device: torch.device, references: dict[str, torch.Tensor]) -> Result:
    frames = np.stack(moving_frames(2, sizes.frame))
    if "features" not in references:
        references["features"] = extractor("hvc_release_coco", torch.device("cpu"), amp=False).extract_batch(frames)
    reference = references["features"]
    if device.type == "cpu":
        # FeatureExtractor(amp=True) is float32 on the CPU: the device's features are the reference's.
        if precision == "fp16":
            raise Check("SKIP", "skipped: needs CUDA (FeatureExtractor(amp=True) computes float32 on the CPU)")
        features = reference
    else:
        with ieee_fp32():
            features = extractor("hvc_release_coco", device, amp=precision == "fp16").extract_batch(frames).float().cpu()
    difference = float((features - reference).abs().max())
    similarity = F.cosine_similarity(features, reference, dim=1)
    low, mean = float(similarity.min()), float(similarity.mean())
    shape = "x".join(map(str, features.shape[1:]))
    if precision == "fp32":
        return verdict(difference <= FEATURE_TOLERANCE, f"fused HVC features {shape} of 2 frames {sizes.frame}: "
                       f"max diff {difference:.1e} (tol {FEATURE_TOLERANCE:g})", difference=difference)
    return verdict(low >= FEATURE_COSINE_MIN and mean >= FEATURE_COSINE_MEAN and math.isfinite(difference),
                   f"fp16 autocast features {shape}: cosine to the CPU's float32 per cell min {low:.5f} "
                   f"(tol {FEATURE_COSINE_MIN:g}), mean {mean:.6f} (tol {FEATURE_COSINE_MEAN:g}), max diff {difference:.1e}",
                   difference=difference, cosine_min=low, cosine_mean=mean)


# ------------------------------------------------------------------------------------------------
# Throughput and projections


def gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB"


def duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def schedule(model: str) -> tuple[str, list[str], dict[str, Any]]:
    """config/models.yaml's `model`: its method, its --set overrides, its data."""
    entry = load_registry("models")[model]
    overrides = [f"{key}={json.dumps(value)}" for key, value in (entry.get("set") or {}).items()]
    return entry["method"], overrides, entry


def timed_steps(run, batch: tuple[torch.Tensor, ...], warmup: int, timed: int) -> tuple[float, float]:
    """Seconds per step over `timed` steps of the loop after `warmup`, and the peak memory."""
    device = run.device
    marks: list[float] = []

    def after_step(values, images):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        marks.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run.last_step = run.position.global_step + warmup + timed
    train_one_epoch(run, [batch] * (warmup + timed), after_step)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else math.nan
    return (marks[-1] - marks[warmup - 1]) / timed, peak


def throughput_config(model: str, sizes: Sizes, device: torch.device, precision: str, batch_size: int | None = None):
    """The schedule's config for a throughput run: the published one at `batch_size`, in
    `precision` (CUDA), no loader workers (the batch is built once)."""
    method, overrides, entry = schedule(model)
    amp = [f"amp={'off' if precision == 'fp32' else precision}"] if device.type == "cuda" else []
    size = [f"batch_size={batch_size}"] if batch_size else []
    return load_config(method, REPO_ROOT / entry["config"], [*overrides, *COMMON, *amp, *size, *sizes.throughput.get(method, [])])


def check_train_throughput(model: str, sizes: Sizes, device: torch.device, folders: dict[str, Path],
                           steps: tuple[int, int], precisions: tuple[str, ...]) -> Result:
    method, overrides, entry = schedule(model)
    published = load_config(method, REPO_ROOT / entry["config"], overrides)
    key, unit = ITEM[method]
    index = folders["clips" if key == "sequences" else "images"]
    with tempfile.TemporaryDirectory() as work:
        run, _ = prepare(method, throughput_config(model, sizes, device, "fp32"), index, work, device="cpu")
        started = time.perf_counter()
        inputs = next(iter(make_loader(run)))
        loader = len(inputs[0]) / (time.perf_counter() - started)
        run = None
    measured: dict[str, Any] = {"unit": unit, "published_batch": published.batch_size, "loader_per_s": loader,
                                "precisions": {}}
    lines = []
    for precision in precisions:
        if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        batch_size = len(inputs[0])
        while True:
            fits = True
            try:
                with tempfile.TemporaryDirectory() as work:
                    run, _ = prepare(method, throughput_config(model, sizes, device, precision, batch_size), index, work,
                                     device=str(device))
                    seconds, peak = timed_steps(run, tuple(tensor[:batch_size].to(device) for tensor in inputs), *steps)
            except torch.cuda.OutOfMemoryError:
                if batch_size == 1:
                    raise
                fits = False
            run = None
            release_memory()  # here, not in `except`: its traceback would keep the step's tensors alive
            if fits:
                break
            batch_size //= 2
        rate = batch_size / seconds
        measured["precisions"][precision] = {"batch": batch_size, "per_s": rate, "peak_bytes": peak}
        memory = f", peak {gib(peak)}" if device.type == "cuda" else ""
        lines.append(f"{precision} {rate:.1f} {unit}/s at batch {batch_size}{memory}")
        release_memory()
    data = entry["data"]
    items = dataset(data["dataset"]).index[data["split"]]["expect"][key]
    sampler = ResumableSampler(items, batch_size=published.batch_size, shuffle=False, seed=0, drop_last=published.drop_last)
    per_epoch = min(items, sampler.batches_per_epoch() * published.batch_size)
    own = "fp32" if published.amp == "off" else published.amp
    projections = {precision: published.epochs * per_epoch / record["per_s"]
                   for precision, record in measured["precisions"].items()}
    measured.update(items=items, per_epoch=per_epoch, epochs=published.epochs, projected_s=projections)
    needed = math.ceil(measured["precisions"][own]["per_s"] / loader)
    caveat = "" if device.type == "cuda" else " (tiny CPU sizes: not a projection)"
    others = ", ".join(f"{precision} {duration(seconds)}" for precision, seconds in projections.items() if precision != own)
    summary = (f"{'; '.join(lines)}. Published {model} ({data['dataset']}, {published.epochs} epochs x {per_epoch:,} "
               f"{unit}, {own}): {duration(projections[own])} on this device{caveat}"
               + (f" ({others})" if others else "")
               + f". One loader process: {loader:.0f} {unit}/s (the GPU needs {needed})")
    return Result("", "INFO", summary, measured)


def check_eval_throughput(method: str, amp: bool, sizes: Sizes, device: torch.device, quick: bool) -> Result:
    if amp and device.type != "cuda":
        raise Check("SKIP", "skipped: needs CUDA (fp16 autocast)")
    settings = davis_settings(method)
    davis = dataset("davis17").index["val"]["expect"]
    length = 4 if quick else round(davis["frames"] / davis["sequences"])
    frames = moving_frames(length, sizes.frame)
    labels = object_labels(sizes.frame)
    size = settings.input_size(*sizes.frame) if sizes.resize else sizes.frame
    if size != sizes.frame:
        frames = [np.asarray(Image.fromarray(frame).resize(size[::-1], Image.BILINEAR)) for frame in frames]
    encoder = extractor(method, device, amp)

    def sequence(count: int) -> None:
        label0, params = labels, dict(settings.params)
        if settings.protocol == "stt":
            first = stt_first_frame(labels, size, sizes.frame)
            label0, params = first.labels, {**params, "output_size": first.output_size}
        stream = propagate_stream((encoder.extract(frame) for frame in frames[:count]), label0, settings.protocol,
                                  ties=settings.options["ties"], **params)
        for result in stream:
            result.ids.cpu()  # the output map, as the pipeline writes every frame's
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sequence(min(3, length))  # warm-up: kernels, cuDNN plans
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    sequence(length)
    rate = length / (time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else math.nan
    projected = davis["frames"] / rate
    memory = f", peak {gib(peak)}" if device.type == "cuda" else ""
    caveat = "" if device.type == "cuda" else " (tiny CPU frames: not a projection)"
    return Result("", "INFO", f"{rate:.1f} frames/s at {size[0]}x{size[1]} ({settings.protocol}, {length} frames, "
                  f"{'fp16' if amp else 'fp32'} features{memory}): DAVIS-2017 val ({davis['frames']:,} frames, "
                  f"{davis['sequences']} sequences) {duration(projected)}{caveat}",
                  {"frames_per_s": rate, "peak_bytes": peak, "davis17_val_s": projected, "frames": length})


# ------------------------------------------------------------------------------------------------


def machine(device: torch.device) -> dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "host": platform.node(),
            "vcorr_commit": git_state().get("commit")}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(device=properties.name, capability=f"{properties.major}.{properties.minor}",
                    memory=gib(properties.total_memory), multiprocessors=properties.multi_processor_count)
    else:
        info["device"] = f"cpu ({platform.processor() or platform.machine()})"
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: cuda when present)")
    parser.add_argument("--quick", action="store_true", help="fewer timed steps and frames (the test suite's run)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run the checks named NAME or NAME.* (repeatable)")
    parser.add_argument("--out", type=Path, help="write every result as JSON to this file")
    parser.add_argument("--sizes", choices=("gpu", "cpu"), help="problem sizes (default: gpu with CUDA, cpu on the CPU)")
    parser.add_argument("--budget", type=float, default=420, help="seconds after which the remaining checks are "
                        "skipped (default 420: the whole run ends well inside 8 minutes)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: PyTorch's with CUDA, 1 on the CPU: "
                        "tiny sizes gain nothing from more)")
    args = parser.parse_args(argv)
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        device = torch.device("cuda", torch.cuda.current_device())
    sizes = GPU_SIZES if (args.sizes or ("gpu" if device.type == "cuda" else "cpu")) == "gpu" else CPU_SIZES
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    logging.getLogger("vcorr.train.stt").setLevel(logging.ERROR)  # "random teacher": every check uses one
    # After a step GradScaler skipped, the scheduler steps without an optimizer step, as in training.
    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()` before `optimizer.step()`")

    header = {"command": shlex.join([Path(sys.executable).name, *sys.argv]), "machine": machine(device)}
    print("command:", header["command"])
    print("machine:", ", ".join(f"{key} {value}" for key, value in header["machine"].items()), flush=True)
    report = Report(args.only, args.out, header, args.budget)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as scratch:
        folder = Path(scratch)
        index = synthetic_index(folder / "train", 8, sizes.images)
        references: dict[str, Any] = {}  # CPU results several checks compare with
        methods = QUICK_METHODS if args.quick else METHODS
        for method, precision in itertools.product(methods, PRECISIONS):
            report.run(f"train.{method}.{precision}", check_train, method, precision, sizes, index, device, references)
        report.run("ddp.collectives", check_collectives, device)
        for method in methods:
            report.run(f"ddp.{method}", check_ddp, method, sizes, index, device)
        for method in methods:
            report.run(f"resume.{method}", check_resume, method, "fp32", sizes, index, device)
        # fp16 with GradScaler, whose state the checkpoint carries (HVC's video schedule trains so).
        report.run(f"resume.{methods[0]}.fp16", check_resume, methods[0], "fp16", sizes, index, device)
        for protocol in ("crw", "stt"):
            report.run(f"propagation.{protocol}", check_propagation, protocol, sizes, device)
        report.run("ties.topk", check_topk, sizes, device)
        for protocol in ("crw", "stt"):
            report.run(f"ties.{protocol}", check_tie_propagation, protocol, sizes, device)
        for precision in ("fp32", "fp16"):
            report.run(f"features.{precision}", check_features, precision, sizes, device, references)

        folders: dict[str, Path] = {}
        schedules = QUICK_SCHEDULES if args.quick else SCHEDULES
        if any(report.wanted(f"throughput.train.{model}") for model in schedules):
            largest = max(throughput_config(model, sizes, device, "fp32").batch_size for model in schedules)
            folders = {"images": synthetic_index(folder / "images", largest, sizes.throughput_images),
                       "clips": synthetic_index(folder / "clips", largest, sizes.throughput_frames)}
        steps = (1, 2) if args.quick else (2, 5)
        precisions = PRECISIONS if device.type == "cuda" else ("fp32",)  # the loop trains in float32 on the CPU
        for model in schedules:
            report.run(f"throughput.train.{model}", check_train_throughput, model, sizes, device, folders, steps, precisions)
        for method, amp in QUICK_EVALUATED if args.quick else EVALUATED:
            suffix = ".fp16" if amp else ""
            report.run(f"throughput.propagation.{method}{suffix}", check_eval_throughput, method, amp, sizes, device,
                       args.quick)
    counts = {status: sum(result.status == status for result in report.results)
              for status in ("PASS", "FAIL", "ERROR", "SKIP", "INFO")}
    print(f"done in {time.perf_counter() - report.started:.0f} s: " + ", ".join(f"{count} {status}" for status, count in counts.items()),
          flush=True)
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main())
