"""The training loop every method shares: `train` sets a run up (or resumes it from the work dir's
checkpoint), runs `train_one_epoch` per epoch, and exports the encoder when training completes.

One step: `loss, terms = method.training_step(model, batch)` (under autocast when AMP is on);
`optimizer.zero_grad()`; backward (through the GradScaler for fp16); `optimizer.step()`;
`scheduler.step()`. Everything the original does inside forward (HVC's EMA update, MoCo's
momentum update and enqueue) stays in the model's forward.

Work dir: `checkpoint.pt` (rolling, see `vcorr.train.checkpoint`), `config.yaml` (the resolved
config), `metrics.csv` and `tensorboard/` (loss terms, lr, images/s every `log_every` steps; on
resume both are cut back to the checkpoint's step, TensorBoard rebuilt from the CSV so no step
shows twice), `train.lock` (held while a run trains: a second run on the same work dir is refused
with the holder's pid and host). Only rank 0 writes.

Divergence: a non-finite loss or loss term on any rank stops every rank before its backward pass
(`TrainingDiverged`, one line naming the step, the term and the last good checkpoint; `vcorr
train` exits 2), and a checkpoint is never written from weights or optimiser state that hold a
non-finite value. Gradient overflow under fp16 AMP (a finite loss whose step the GradScaler
skips) is not divergence and is left to the scaler.

Provenance: checkpoints and exports record the training code's digest (`training_code`, one
entry per code that trained a part of the run: a resume by other code appends, with a warning).

Validation (`validate`, built above this layer: `vcorr.evaluation.validation.Validator`): on rank
0, at step 0, every `eval_every` steps and at the last step, the model is exported in its
method's format to `<workdir>/validation/model.pth` and `validate(export, step, device)` scores
it; the scores are logged beside the loss (`val/<measure>`) and the best one's export is kept as
`<workdir>/best.pth`. It never runs the training model (it reads the export) and runs on forked
RNGs, so the weights trained are bit-identical with and without it. The history and the best
score travel in the checkpoint. `select: best` exports the best validated weights to `--out`
instead of the last; the export's provenance says which (`selection`, `validation`).

Datasets are built once per epoch: `build_dataset(cfg, index, epoch_seed=epoch)`, where a method
combines the epoch with `cfg.seed` and the item index to seed each item's random choices.

Preemption: SIGTERM or SIGUSR1 (what Slurm sends before a time limit or preemption) makes every
rank stop at the next step boundary; the checkpoint is written and `TrainingInterrupted` is raised
(`vcorr train` exits with 128 + the signal number: 143 for SIGTERM, 138 for SIGUSR1). Rerunning
the same command resumes where it stopped, with the same result as a run never interrupted.
"""

from __future__ import annotations

import contextlib
import csv
import math
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from vcorr import __version__
from vcorr.data.index import read_index
from vcorr.device import resolve_device
from vcorr.errors import VcorrError
from vcorr.io import atomic_file
from vcorr.provenance import git_state
from vcorr.train import distributed, method_module, training_code_digest
from vcorr.train.checkpoint import (check_resumable, checkpoint_path, hold_workdir, load_checkpoint, rng_state,
                                    save_checkpoint, set_rng_state)
from vcorr.train.config import TrainConfig
from vcorr.train.data import ResumableSampler, check_images

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
VALIDATION_DIR = "validation"
BEST_EXPORT = "best.pth"


class Validate(Protocol):
    """Scores an exported model (vcorr.evaluation.validation.Validator is one)."""

    metric: str  # the key of the returned scores that ranks checkpoints (higher is better)
    identity: dict[str, Any]  # what the scores measure: a history under another identity restarts

    def __call__(self, export: Path, step: int, device: str) -> dict[str, float]: ...


class TrainingDiverged(VcorrError):
    """A loss term, or the state about to be saved, is not finite; nothing was saved from it."""


class TrainingInterrupted(Exception):
    """A stop signal arrived; the checkpoint holds the run up to the step it stopped after."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        name = signal.Signals(signum).name
        super().__init__(f"{name} received: stopped after step {step}, checkpoint {checkpoint}; "
                         "rerun the same command to resume")
        self.exit_code = 128 + signum


@dataclass
class Position:
    """Where a run is: `step_in_epoch` batches of `epoch` done, `global_step` steps in all."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


@dataclass
class Validation:
    """The scores so far: `history` `[{step, scores}]` and the `best` `{step, score}` (of `metric`)."""

    identity: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None

    def state(self) -> dict[str, Any]:
        return {"identity": self.identity, "history": self.history, "best": self.best}


@dataclass
class Run:
    """A prepared run: what `train_one_epoch` needs, set up for this rank."""

    method: str
    module: ModuleType
    config: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    index: Any  # the index table
    index_path: str
    model: nn.Module  # DDP-wrapped when world size > 1
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    sampler: ResumableSampler
    steps_per_epoch: int
    last_step: int  # the run is complete when global_step reaches it
    position: Position
    workdir: Path
    git: dict[str, Any] = field(default_factory=dict)
    training_code: list[str] = field(default_factory=list)  # digests of the code that trained it, oldest first
    saved_step: int | None = None  # global step of the work dir's checkpoint, None before the first
    validate: Validate | None = None
    validation: Validation | None = None

    @property
    def unwrapped(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    @property
    def checkpoint(self) -> Path:
        return checkpoint_path(self.workdir)


class StopRequest:
    """Records SIGTERM / SIGUSR1 instead of dying, so the loop can checkpoint first."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def _record(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class MetricsLog:
    """metrics.csv and TensorBoard scalars in the work dir (rank 0). On resume the CSV is cut back
    to the checkpoint's step (an interrupted run's later rows are logged again as the steps are
    redone) and TensorBoard is rebuilt from it: event files are append-only, so a resumed run
    would otherwise show those steps twice."""

    def __init__(self, workdir: Path, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.path = workdir / "metrics.csv"
        self.fields: list[str] = []
        rows: list[dict[str, Any]] = []
        if self.path.exists():
            with open(self.path, newline="") as handle:
                reader = csv.DictReader(handle)
                self.fields = list(reader.fieldnames or [])
                rows = [row for row in reader if int(row["step"]) <= resume_step]
            self._rewrite(rows)
        board = workdir / "tensorboard"
        shutil.rmtree(board, ignore_errors=True)
        self.tensorboard = SummaryWriter(str(board))
        for row in rows:
            self._add_scalars(row)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        with atomic_file(self.path) as temporary:
            with open(temporary, "w", newline="") as handle:
                writer = csv.DictWriter(handle, self.fields, restval="")
                writer.writeheader()
                writer.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        new = [key for key in row if key not in self.fields]
        if new:  # a first row, or a term the method did not report before: widen the table
            rows = []
            if self.path.exists():
                with open(self.path, newline="") as handle:
                    rows = list(csv.DictReader(handle))
            self.fields += new
            self._rewrite(rows)
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, self.fields, restval="").writerow(row)
        self._add_scalars(row)
        self.tensorboard.flush()

    def _add_scalars(self, row: dict[str, Any]) -> None:
        for key, value in row.items():
            if key not in ("epoch", "step") and value != "":
                self.tensorboard.add_scalar(key, float(value), int(row["step"]))

    def close(self) -> None:
        self.tensorboard.close()


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    if config.amp == "off":
        return None
    if device.type != "cuda":
        if distributed.is_main():
            print(f"warning: amp: '{config.amp}' needs CUDA; training in float32 on {device}", file=sys.stderr)
        return None
    return AMP_DTYPES[config.amp]


def _resume_state(path: Path, method: str, config: TrainConfig, restart: bool) -> dict[str, Any] | None:
    try:
        state = load_checkpoint(path)
    except VcorrError:
        if restart:
            return None
        raise
    if state is None:
        return None
    if restart and state.get("method") == method:
        return None
    check_resumable(state, path, method, config.as_dict(), type(config).RUNTIME_KEYS)
    return state


def prepare(method: str, config: TrainConfig, index_path: str | Path, workdir: str | Path, *,
            device: str = "auto", restart: bool = False, validate: Validate | None = None,
            init_out: str | Path | None = None) -> tuple[Run, dict[str, Any] | None]:
    """Set a run up on this rank (joining the torchrun process group if there is one); return it
    with the checkpoint it resumes from (None for a fresh start). `init_out`: the model as built,
    before any step (or the checkpoint loaded), exported there (rank 0)."""
    module = method_module(method)
    if not isinstance(config, module.Config):
        raise VcorrError(f"config of type {type(config).__name__} is not method '{method}''s Config")
    torch_device = resolve_device(device)
    distributed.init_distributed(torch_device)
    world = distributed.world_size()
    if config.batch_size % world:
        raise VcorrError(f"batch_size {config.batch_size} is not divisible by the {world} processes")
    _seed_everything(distributed.rank_seed(config.seed))
    amp_dtype = _amp_dtype(config, torch_device)

    workdir = Path(workdir)
    state = _resume_state(checkpoint_path(workdir), method, config, restart)
    index = read_index(Path(index_path))
    check_images(index, index_path)

    position = Position()
    if state is not None:
        position = Position(state["epoch"], state["step_in_epoch"], state["global_step"])
    length = len(module.build_dataset(config, index, epoch_seed=position.epoch))
    if length == 0:
        raise VcorrError(f"{index_path}: method '{method}' finds no training items in this index")
    if state is not None and state["items"] != length:
        raise VcorrError(f"{checkpoint_path(workdir)}: trained on {state['items']} items per epoch ({state['index']}), "
                         f"but {index_path} gives {length}: use the same index, or --restart")
    sampler = ResumableSampler(length, batch_size=config.batch_size // world, shuffle=config.shuffle,
                               seed=config.seed, rank=distributed.rank(), world_size=world,
                               drop_last=config.drop_last)
    steps_per_epoch = sampler.batches_per_epoch()
    if steps_per_epoch == 0:
        raise VcorrError(f"{index_path}: {length} training items give no whole batch of {sampler.batch_size} per process "
                         f"(drop_last: true drops partial batches): use a smaller batch_size or more images")
    total_steps = steps_per_epoch * config.epochs
    last_step = min(total_steps, config.max_steps or total_steps)

    model = module.build_model(config, total_steps)
    if config.sync_bn and world > 1:
        if torch_device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif distributed.is_main():
            # torch's SyncBatchNorm runs on CUDA only; each rank keeps its own batch statistics.
            print(f"warning: sync_bn: SyncBatchNorm needs CUDA; on {torch_device} each of the {world} processes "
                  "normalises with its own batch statistics", file=sys.stderr)
    code = training_code_digest(method)
    if init_out is not None and distributed.is_main():
        meta = {**base_meta(method, config, index_path), "steps": 0, "training_code": [code], "selection": "init"}
        write_export(module, model, config, meta, Path(init_out))
    model.to(torch_device)
    optimizer, scheduler = module.build_optimizer(config, model, steps_per_epoch)
    scaler = torch.amp.GradScaler(torch_device.type, enabled=amp_dtype == torch.float16)
    if state is not None:
        model.load_state_dict(state["model"])
        if hasattr(model, "load_train_state"):
            model.load_train_state(state["train_state"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][distributed.rank()])
        elif distributed.is_main():
            print(f"warning: {checkpoint_path(workdir)} was written by {len(state['rng'])} processes, not "
                  f"{world}: the global RNGs restart from the seed and the rest of the epoch is split over "
                  "ranks differently (resume is exact only with the same number of processes)", file=sys.stderr)
    if world > 1:
        ids = [torch_device.index] if torch_device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    history = list(state.get("training_code") or []) if state is not None else []
    if history and history[-1] != code and distributed.is_main():
        print(f"warning: {checkpoint_path(workdir)} was trained by other training code ({history[-1][:12]}...); "
              f"continuing with this code ({code[:12]}...): both are recorded in the export", file=sys.stderr)
    run = Run(method, module, config, torch_device, amp_dtype, index, str(index_path), model, optimizer, scheduler,
              scaler, sampler, steps_per_epoch, last_step, position, workdir, git_state(),
              training_code=history if history[-1:] == [code] else [*history, code],
              saved_step=state["global_step"] if state is not None else None,
              validate=validate, validation=_resume_validation(validate, state, workdir))
    return run, state


def _resume_validation(validate: Validate | None, state: dict[str, Any] | None, workdir: Path) -> Validation | None:
    """The checkpoint's validation history when it measured what `validate` measures."""
    if validate is None:
        return None
    saved = (state or {}).get("validation")
    if saved and saved["identity"] != validate.identity:
        if distributed.is_main():
            print(f"warning: {checkpoint_path(workdir)} was validated on {saved['identity']}, this run validates on "
                  f"{validate.identity}: the validation history and best score restart", file=sys.stderr)
        saved = None
    if not saved:
        return Validation(validate.identity)
    return Validation(saved["identity"], list(saved["history"]), saved["best"])


def non_finite_entries(states: dict[str, dict[str, Any]]) -> list[str]:
    """`<part>.<key>` of every floating-point tensor in `states` (nested state dicts) holding a NaN
    or an infinity."""
    found = []

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                found.append(prefix)
        elif isinstance(value, dict):
            for key, item in value.items():
                visit(f"{prefix}.{key}", item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                visit(f"{prefix}.{index}", item)

    for part, state in states.items():
        visit(part, state)
    return found


def last_good_checkpoint(run: Run) -> str:
    if run.saved_step is None:
        return "none (no checkpoint was written before)"
    return f"{run.checkpoint} (step {run.saved_step})"


def save(run: Run) -> None:
    """The rolling checkpoint (every rank takes part: RNG states are gathered to rank 0). State
    holding a non-finite value is never written: `TrainingDiverged` instead."""
    rng = distributed.gather_objects(rng_state())
    if not distributed.is_main():
        return
    model = run.unwrapped
    broken = non_finite_entries({"model": model.state_dict(), "optimizer": run.optimizer.state_dict()})
    if broken:
        raise TrainingDiverged(f"training diverged by step {run.position.global_step}: {broken[0]} is not finite "
                               f"({len(broken)} tensor(s)), so no checkpoint was written; last good checkpoint: "
                               f"{last_good_checkpoint(run)}")
    position = run.position
    epoch, step_in_epoch = position.epoch, position.step_in_epoch
    if step_in_epoch == run.steps_per_epoch:
        epoch, step_in_epoch = epoch + 1, 0
    save_checkpoint(run.checkpoint, {
        "method": run.method,
        "config": run.config.as_dict(),
        "model": model.state_dict(),
        "train_state": model.train_state() if hasattr(model, "train_state") else None,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "scaler": run.scaler.state_dict(),
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "global_step": position.global_step,
        "steps_per_epoch": run.steps_per_epoch,
        "items": run.sampler.length,
        "index": run.index_path,
        "world_size": distributed.world_size(),
        "rng": rng,
        "git_commit": run.git.get("commit"),
        "git_dirty": run.git.get("dirty"),
        "training_code": run.training_code,
        "validation": run.validation.state() if run.validation is not None else None,
        "vcorr_version": __version__,
        "torch_version": torch.__version__,
    })
    run.saved_step = position.global_step


def _ignore_stop_signals(worker: int) -> None:
    # Slurm signals every process of the job step: a loader worker must not die of the SIGTERM
    # meant for the training process, which stops the workers itself after checkpointing.
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def make_loader(run: Run) -> DataLoader:
    """This epoch's loader, starting at the batch after the last one done."""
    config, position = run.config, run.position
    dataset = run.module.build_dataset(config, run.index, epoch_seed=position.epoch)
    run.sampler.set_epoch(position.epoch, skip_batches=position.step_in_epoch)
    # The loader's own generator (not the global one) seeds its workers, so creating a loader
    # mid-epoch on resume does not shift the global RNG stream.
    generator = torch.Generator().manual_seed(config.seed + position.epoch)
    return DataLoader(dataset, batch_size=run.sampler.batch_size, sampler=run.sampler, num_workers=config.workers,
                      pin_memory=run.device.type == "cuda", drop_last=config.drop_last, generator=generator,
                      worker_init_fn=_ignore_stop_signals)


def stop_if_diverged(run: Run, terms: dict[str, Any]) -> dict[str, float]:
    """Before the backward pass: every rank stops when a term is not finite on any rank. Returns
    the terms as floats (what the step hooks log)."""
    values = {name: float(value.detach()) if isinstance(value, torch.Tensor) else float(value) for name, value in terms.items()}
    bad = next((name for name, value in values.items() if not math.isfinite(value)), None)
    if not distributed.any_rank(bad is not None, run.device):
        return values
    rank, name = next((rank, name) for rank, name in enumerate(distributed.gather_objects(bad)) if name is not None)
    where = f" on rank {rank}" if distributed.world_size() > 1 else ""
    shown = f" ({values[name]})" if rank == distributed.rank() else ""
    raise TrainingDiverged(f"training diverged at step {run.position.global_step + 1}: {name} is not finite{shown}{where}; "
                           f"nothing was saved after the last good checkpoint: {last_good_checkpoint(run)}")


def train_one_epoch(run: Run, loader: DataLoader, after_step: Callable[[dict[str, float], int], None]) -> bool:
    """Steps over `loader` until it ends or the run reaches its last step (then returns True);
    `after_step(values, images)` runs after each step with the loss and its terms as floats
    (logging, checkpoints, signals)."""
    training_step = run.module.training_step
    run.model.train()
    batches = iter(loader)
    try:
        for batch in batches:
            batch = tuple(tensor.to(run.device, non_blocking=True) for tensor in batch)
            with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
                loss, terms = training_step(run.model, batch)
            values = stop_if_diverged(run, {"loss": loss, **terms})
            run.optimizer.zero_grad(set_to_none=True)
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            if run.scheduler is not None:
                run.scheduler.step()
            run.position.step_in_epoch += 1
            run.position.global_step += 1
            after_step(values, len(batch[0]))
            if run.position.global_step >= run.last_step:
                return True
        return False
    finally:
        # Stop the workers now, even when an exception keeps the iterator referenced: they ignore
        # SIGTERM (see `_ignore_stop_signals`), so one left to multiprocessing's exit handler,
        # which terminates workers with SIGTERM, would never end.
        if hasattr(batches, "_shutdown_workers"):
            batches._shutdown_workers()


class _StepHooks:
    """Logging, progress, checkpoint cadence and stop signals between steps."""

    def __init__(self, run: Run, stop: StopRequest, log: MetricsLog | None, progress: tqdm | None):
        self.run, self.stop, self.log, self.progress = run, stop, log, progress
        self.window_terms: dict[str, float] = {}
        self.window_steps = 0
        self.window_images = 0
        self.window_start = time.perf_counter()
        self.images = 0
        self.last_terms: dict[str, float] = {}

    def __call__(self, values: dict[str, float], images: int) -> None:
        run, position, config = self.run, self.run.position, self.run.config
        for key, value in values.items():
            self.window_terms[key] = self.window_terms.get(key, 0.0) + value
        self.window_steps += 1
        self.window_images += images * distributed.world_size()
        end_of_epoch = position.step_in_epoch == run.steps_per_epoch
        last = position.global_step >= run.last_step
        if (config.log_every and position.global_step % config.log_every == 0) or end_of_epoch or last:
            self._log_window()
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{values['loss']:.4g}", epoch=position.epoch, refresh=False)
        if validation_due(run):
            started = time.perf_counter()
            validate_now(run, self.log)
            self.window_start += time.perf_counter() - started  # images/s counts training time only
        if (config.checkpoint_every and position.global_step % config.checkpoint_every == 0) or end_of_epoch or last:
            save(run)
        if distributed.any_rank(self.stop.signum is not None, run.device):
            save(run)
            signum = int(distributed.gather_objects(self.stop.signum or 0)[0]) or signal.SIGTERM
            raise TrainingInterrupted(signum, position.global_step, run.checkpoint)

    def _log_window(self) -> None:
        keys = sorted(self.window_terms)
        means = torch.tensor([self.window_terms[key] / self.window_steps for key in keys], dtype=torch.float64)
        means = distributed.all_reduce_mean(means.to(self.run.device)).cpu().tolist()
        seconds = time.perf_counter() - self.window_start
        self.images += self.window_images
        row = {"epoch": self.run.position.epoch, "step": self.run.position.global_step,
               "lr": self.run.optimizer.param_groups[0]["lr"],
               "images_per_s": self.window_images / seconds if seconds > 0 else math.nan,
               **dict(zip(keys, means))}
        self.last_terms = dict(zip(keys, means))
        if self.log is not None:
            self.log.write(row)
        self.window_terms, self.window_steps, self.window_images = {}, 0, 0
        self.window_start = time.perf_counter()


def _write_config(run: Run) -> None:
    with atomic_file(run.workdir / "config.yaml") as temporary:
        config = {key: list(value) if isinstance(value, tuple) else value for key, value in run.config.as_dict().items()}
        temporary.write_text(yaml.safe_dump(config, sort_keys=False))


def base_meta(method: str, config: TrainConfig, index_path: str | Path) -> dict[str, Any]:
    """The provenance every export of a run records (`vcorr.train.export_provenance` reads it)."""
    return {"method": method, "config": config.as_dict(), "epochs": config.epochs, "index": str(index_path),
            "vcorr_version": __version__}


def write_export(module: ModuleType, model: nn.Module, config: TrainConfig, meta: dict[str, Any], out: Path) -> None:
    """The method's export of `model` to `out`, atomically."""
    exported = module.export(model, config, meta)
    with atomic_file(out) as temporary:
        torch.save(exported, temporary)


def export_meta(run: Run, **extra: Any) -> dict[str, Any]:
    return {**base_meta(run.method, run.config, run.index_path), "steps": run.position.global_step,
            "git_commit": run.git.get("commit"), "training_code": run.training_code, **extra}


def export(run: Run, out: Path) -> None:
    """`--out` once training completes: the last weights, or with `select: best` the best
    validated export (`<workdir>/best.pth`)."""
    if run.config.select == "best":
        if run.validation is None or run.validation.best is None:
            raise VcorrError(f"select: best: no validated export in {run.workdir} to select")
        with atomic_file(out) as temporary:
            shutil.copyfile(run.workdir / BEST_EXPORT, temporary)
        return
    last = run.validation.history[-1] if run.validation and run.validation.history else None
    validated = {"validation": _validation_record(run, last)} if last and last["step"] == run.position.global_step else {}
    write_export(run.module, run.unwrapped, run.config, export_meta(run, selection="last", **validated), out)


def _validation_record(run: Run, entry: dict[str, Any]) -> dict[str, Any]:
    """What an export records of its validation: what was measured, at which step, the scores."""
    return {**run.validation.identity, "step": entry["step"], "scores": entry["scores"]}


def validation_due(run: Run) -> bool:
    """Validation runs at step 0, every `eval_every` steps and at the last step, once per step."""
    if run.validate is None:
        return False
    step = run.position.global_step
    if run.validation.history and run.validation.history[-1]["step"] >= step:
        return False  # done before the checkpoint this run resumed from
    return step % run.config.eval_every == 0 or step == run.last_step


def validate_now(run: Run, log: MetricsLog | None) -> None:
    """Score the current weights (rank 0; the other ranks wait), log them, keep the best export."""
    if distributed.is_main():
        step, validation = run.position.global_step, run.validation
        folder = run.workdir / VALIDATION_DIR
        folder.mkdir(parents=True, exist_ok=True)
        export_file = folder / "model.pth"
        # The RNGs are forked so that nothing validation draws (a random init before weights
        # load, a worker seed) shifts the training run's streams.
        saved = rng_state()
        try:
            with torch.no_grad():
                write_export(run.module, run.unwrapped, run.config, export_meta(run), export_file)
                scores = run.validate(export_file, step, str(run.device))
        finally:
            set_rng_state(saved)
        entry = {"step": step, "scores": scores}
        validation.history.append(entry)
        score = scores[run.validate.metric]
        best = validation.best
        if math.isfinite(score) and (best is None or score > best["score"]):
            validation.best = {"step": step, "score": score}
            meta = export_meta(run, selection="best", validation=_validation_record(run, entry))
            write_export(run.module, run.unwrapped, run.config, meta, run.workdir / BEST_EXPORT)
        if log is not None:
            log.write({"epoch": run.position.epoch, "step": step, **{f"val/{key}": value for key, value in scores.items()}})
        shown = ", ".join(f"{key} {value:.4g}" for key, value in scores.items())
        tqdm.write(f"validation at step {step} ({validation.identity['benchmark']}): {shown}; best "
                   f"{run.validate.metric} {validation.best['score']:.4g} at step {validation.best['step']}"
                   if validation.best else f"validation at step {step}: {shown}", file=sys.stderr)
    distributed.barrier()


def train(method: str, config: TrainConfig, index_path: str | Path, workdir: str | Path, out: str | Path, *,
          device: str = "auto", restart: bool = False, validate: Validate | None = None,
          init_out: str | Path | None = None) -> dict[str, Any]:
    """Train (or resume) `method` on the images of an index; export to `out` once complete.

    `validate` scores the model while it trains (see the module doc; `config.eval_every` sets the
    cadence); `init_out` receives the untrained initialisation in the same export format.

    Returns a summary: steps, epochs, seconds, images/s, the last logged terms, whether it resumed.
    Raises `TrainingInterrupted` after checkpointing when SIGTERM / SIGUSR1 arrives, and
    `TrainingDiverged` (nothing saved) when a loss term or the state to save is not finite.
    """
    out = Path(out)
    if config.eval_every and validate is None:
        raise VcorrError(f"eval_every: {config.eval_every}, but no validation was given to run (train(validate=...))")
    try:
        with StopRequest() as stop, contextlib.ExitStack() as held:
            run, state = prepare(method, config, index_path, workdir, device=device, restart=restart,
                                 validate=validate if config.eval_every else None, init_out=init_out)
            main = distributed.is_main()
            start_step = run.position.global_step
            log = progress = None
            if main:
                held.enter_context(hold_workdir(run.workdir))
                _write_config(run)
                log = MetricsLog(run.workdir, start_step)
                progress = tqdm(total=run.last_step, initial=start_step, desc=f"train {method}", unit="step",
                                file=sys.stderr, dynamic_ncols=True)
            hooks = _StepHooks(run, stop, log, progress)
            started = time.perf_counter()
            try:
                if validation_due(run):
                    validate_now(run, log)
                while run.position.global_step < run.last_step:
                    if train_one_epoch(run, make_loader(run), hooks):
                        break
                    run.position.epoch += 1
                    run.position.step_in_epoch = 0
            finally:
                if progress is not None:
                    progress.close()
                if log is not None:
                    log.close()
            seconds = time.perf_counter() - started
            if main:
                export(run, out)
            distributed.barrier()
    except VcorrError as error:
        message = str(error)
        # An error in a DataLoader worker comes back wrapped with the worker's traceback: keep the
        # message the dataset raised.
        if message.startswith("Caught VcorrError") and "VcorrError: " in message:
            raise VcorrError(message.rsplit("VcorrError: ", 1)[1].strip()) from None
        raise
    finally:
        distributed.shutdown()
    steps = run.position.global_step - start_step
    return {
        "method": method, "steps": run.position.global_step, "steps_this_run": steps,
        "epochs": run.position.global_step / run.steps_per_epoch, "seconds": seconds,
        "images_per_s": hooks.images / seconds if seconds > 0 and steps else 0.0,
        "terms": hooks.last_terms, "resumed_from": start_step if state is not None else None, "out": str(out),
        "main": main, "validation": run.validation.state() if run.validation is not None else None,
    }
