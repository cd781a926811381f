"""The propagation pipeline: a benchmark folder -> per-frame predictions in the formats the
scorers read (`propagate_benchmark`; `vcorr propagate` parses its arguments and calls it).

For each sequence, frames are streamed: read (PIL) -> resized to the method's input size for
that benchmark (each side floored to a multiple of a ViT's patch: `encoder_input_size`) ->
features (vcorr.features.FeatureExtractor, with the protocol's input normalisation:
`protocol_features`) -> the streaming propagator of the method's protocol (vcorr.propagation),
started from the first frame's labels as the protocol's label path gives them (`LABEL_PATHS`)
-> written as they come (vcorr.propagation.adapters writers). No sequence's features are ever
held in memory at once. Frames are decoded with PIL for every protocol (DINO's script uses
OpenCV: both decode with libjpeg-turbo's default IDCT, identically on the e2e fixtures).

Outputs under `out`:
- DAVIS / YouTube-VOS / VIP: `<sequence>/<frame>.png`, indexed with the DAVIS palette, at the
  annotation resolution. YouTube-VOS: only the frames of the `valid` split (the ones the server
  evaluates); when the benchmark's `all_frames` folder (`valid_all_frames/` beside `valid`) is
  present, every raw frame is propagated through, as HVC does.
- JHMDB: `<action>/<clip>.npy`, float `[2, 15, T]` (x, y) coordinates, as `vcorr score jhmdb` reads.
- `.vcorr-propagate[.shard-I-of-N].json` (`vcorr.evaluation.records`): method, resolved
  settings, the sha256 of every checkpoint read, the vcorr version and the digest of the code
  that made the predictions (`prediction_code_digest`), and the frames every sequence of the run
  must have (what `vcorr export` checks).

Restartable: each sequence is written into a temporary folder (file, for JHMDB) renamed into place
when complete, so complete sequences are skipped on a rerun and partial ones redone. They are
skipped only when the folder's records say they were made the same way: same method and settings,
same weights (by content, wherever the file lies), same vcorr version and prediction code. Anything
else is refused with the difference named; `force=True` (`--force`) deletes what the differing
records describe and propagates every selected sequence anew. The code digest covers every vcorr
module this one reaches (`vcorr.provenance`), so a change anywhere in the code that makes
predictions counts as other code, and an edit of comments or docstrings does not.

Arguments are checked before anything is written (folders, device, checkpoints): a refused run
leaves no output folder or record behind.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vcorr.data.benchmarks import Benchmark
from vcorr.evaluation.methods import Method
from vcorr.evaluation.records import differing_records, record_path, refuse_differing
from vcorr.provenance import code_digest

if TYPE_CHECKING:  # numpy and torch load with the first propagation, not with the workflow's DAG
    import numpy as np


def prediction_code_digest() -> str:
    """The digest of the code that turns frames into predictions: this module and every vcorr
    module it reaches (`vcorr.provenance.code_digest`); the run record's `prediction_code`."""
    return code_digest(__name__)


def weights_digests(method: Method, weights_root: Path) -> list[dict[str, str]]:
    """`{file, sha256}` of each checkpoint the method reads, in encoder order (hashed once per run)."""
    from vcorr.errors import VcorrError
    from vcorr.io import sha256_file

    digests = []
    for path in method.weight_files(weights_root):
        try:
            digests.append({"file": str(path), "sha256": sha256_file(path)})
        except OSError as error:
            raise VcorrError(f"{path}: unreadable checkpoint ({error.strerror or error})") from None
    return digests


def parse_shard(text: str | None) -> tuple[int, int] | None:
    from vcorr.errors import VcorrError

    if text is None:
        return None
    index, _, count = text.partition("/")
    try:
        shard = int(index), int(count)
    except ValueError:
        raise VcorrError(f"--shard {text!r}: expected i/n with integers, e.g. 0/4") from None
    if not 0 <= shard[0] < shard[1]:
        raise VcorrError(f"--shard {text!r}: need 0 <= i < n")
    return shard


def select_sequences(all_sequences: list[str], wanted: list[str] | None, shard: tuple[int, int] | None) -> list[str]:
    """`--sequences` then `--shard`; the shards of one list partition it (round robin, balanced)."""
    from vcorr.errors import VcorrError

    selected = all_sequences
    if wanted:
        unknown = [name for name in wanted if name not in all_sequences]
        if unknown:
            raise VcorrError(f"--sequences: not in the benchmark: {', '.join(unknown)}")
        selected = [name for name in all_sequences if name in set(wanted)]
    if shard:
        selected = selected[shard[0] :: shard[1]]
    return selected


@dataclass
class SequencePlan:
    """Everything needed to propagate one sequence and know when its output is complete."""

    name: str
    images: list[Path]  # frames walked through, in temporal order
    frames: list[str]  # their stems
    annotations: dict[str, Path]  # frame stem -> label file (JHMDB: the clip's .mat under every frame)
    written: list[str]  # frame stems whose predictions are written
    label_size: tuple[int, int]  # (H, W) of the annotations = of the written outputs


def plan_sequences(benchmark: Benchmark, root: Path, skip_missing: bool = False) -> dict[str, SequencePlan]:
    from vcorr.data.layouts import benchmark_frames

    table = benchmark_frames(benchmark.name, root, skip_missing=skip_missing)
    plans = {}
    for name, rows in table.groupby("sequence", sort=False):
        frames = list(rows["frame"])
        annotations = {frame: Path(path) for frame, path in zip(rows["frame"], rows["annotation"]) if path}
        first = rows.iloc[0]
        plan = SequencePlan(
            name=name,
            images=[Path(path) for path in rows["image"]],
            frames=frames,
            annotations=annotations,
            written=frames,
            label_size=(int(first["height"]), int(first["width"])),
        )
        if benchmark.all_frames:
            _walk_all_frames(plan, Path(root) / benchmark.all_frames)
        plans[name] = plan
    return plans


def plan_run(benchmark: Benchmark, root: Path, wanted: list[str] | None) -> tuple[dict[str, SequencePlan], list[str]]:
    """Plans of the sequences on disk, and the benchmark's whole list. With `sequences` given, only
    the selected sequences need their files; the rest of the list may be absent."""
    from vcorr.data.layouts import missing_sequences, sequence_names
    from vcorr.errors import VcorrError

    if not wanted:
        plans = plan_sequences(benchmark, root)
        return plans, list(plans)
    listed = sequence_names(benchmark.name, root)
    unknown = [name for name in wanted if name not in listed]
    if unknown:
        raise VcorrError(f"--sequences: not in the benchmark: {', '.join(unknown)}")
    missing = missing_sequences(benchmark.name, root)
    for name in wanted:
        if name in missing:
            raise VcorrError(f"{missing[name][0]}: missing (needed by sequence '{name}')")
    return plan_sequences(benchmark, root, skip_missing=True), listed


def _walk_all_frames(plan: SequencePlan, all_frames: Path) -> None:
    """Walk every raw frame of `<all_frames>/JPEGImages/<sequence>` when present (YouTube-VOS's
    `valid_all_frames/` beside `valid/`); only the root's frames are written."""
    all_frames_dir = Path(os.path.normpath(all_frames)) / "JPEGImages" / plan.name
    images = sorted(all_frames_dir.glob("*.jpg"))
    if not images:
        return
    stems = [image.stem for image in images]
    absent = [frame for frame in plan.written if frame not in set(stems)]
    if absent:
        from vcorr.errors import VcorrError

        raise VcorrError(f"{all_frames_dir}: lacks frame(s) {', '.join(absent[:5])} of the valid split")
    start = stems.index(plan.written[0])  # nothing before the first valid frame is evaluated
    plan.images, plan.frames = images[start:], stems[start:]


def resolved_record(
    benchmark: str, data_root: Path, method, settings, plans, selected, all_sequences,
    wanted: list[str] | None, shard: tuple[int, int] | None, weights: list[dict[str, str]],
) -> dict:
    from vcorr import __version__

    frames_source = {name: str(plans[name].images[0].parent) for name in selected[:1]}
    return {
        "vcorr_version": __version__,
        "prediction_code": prediction_code_digest(),
        "benchmark": benchmark,
        "data_root": str(data_root),
        "method": method.as_dict(),
        "settings": settings.as_dict(),
        "weights": weights,
        "frames_source_example": frames_source,
        "selection": {"sequences": wanted, "shard": list(shard) if shard else None},
        "sequences": {name: plans[name].written for name in selected},
        "benchmark_sequences": all_sequences,
    }


def delete_recorded(out: Path, task: str, records: list[dict]) -> None:
    """--force: the predictions and records of runs made otherwise (so none is reused later)."""
    for existing in records:
        for sequence in existing["sequences"]:
            target = output_path(out, task, sequence)
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        Path(existing["_path"]).unlink(missing_ok=True)


def output_path(out: Path, task: str, sequence: str) -> Path:
    return out / f"{sequence}.npy" if task == "jhmdb" else out / sequence


def remove_partial_outputs(out: Path, task: str, sequence: str) -> None:
    """Temporary leftovers of an interrupted run on this sequence (atomic_dir / atomic_file names)."""
    target = output_path(out, task, sequence)
    for leftover in target.parent.glob(f".{target.name}.*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()


def read_frame(path: Path, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB `[H, W, 3]` at the encoder's input size (bilinear, as the seeds' cv2 resizes)."""
    import cv2
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from vcorr.errors import VcorrError

    try:
        with Image.open(path) as image:
            frame = np.array(image.convert("RGB"))
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise VcorrError(f"{path}: unreadable frame ({error})") from None
    if frame.shape[:2] != tuple(size):
        frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return frame


@dataclass(frozen=True)
class PropagationSummary:
    selected: list[str]  # sequences of this run
    skipped: list[str]  # already complete from an earlier run
    propagated: list[str]


def propagate_benchmark(
    benchmark: str,
    data_root: str | Path,
    method: Method | str | Path,
    out: str | Path,
    *,
    sequences: list[str] | None = None,
    shard: tuple[int, int] | None = None,
    device: str = "auto",
    amp: bool = False,
    weights_root: str | Path = Path("resources/data"),
    overrides: Sequence[str] = (),
    force: bool = False,
    margins: dict | None = None,
    progress=None,
) -> PropagationSummary:
    """Propagate the first-frame labels of every (selected) sequence of `benchmark` found under
    `data_root` with `method` (a Method, a methods.yaml name or a method YAML file) into `out`.

    `sequences` keeps only these, `shard=(i, n)` then every n-th from the i-th; `overrides` are
    `KEY=VALUE` protocol parameters or `size` for this benchmark; checkpoints are resolved
    against `weights_root`. Complete sequences of an earlier identical run are skipped; an earlier
    run made otherwise is refused, or with `force` deleted and redone (with every selected sequence).
    `margins`: a dict that receives, per propagated sequence, the `MarginRecorder` of its run
    (vcorr.propagation.margins: every decision's margin, for `vcorr.evaluation.fidelity`).
    `progress`: a tqdm bar to advance by every frame of the run instead of printing a line and a
    bar per sequence (training's validation shows one line).
    """
    from tqdm import tqdm

    from vcorr.data.benchmarks import benchmark as benchmark_entry
    from vcorr.evaluation.methods import load_method
    from vcorr.io import check_writable, require_folder, write_json

    entry = benchmark_entry(benchmark)
    if not isinstance(method, Method):
        method = load_method(method)
    data_root, out, weights_root = Path(data_root), Path(out), Path(weights_root)
    require_folder(data_root, "--data-root")
    check_writable(out, "--out", folder=True)
    settings = method.settings_for(entry.settings_name, list(overrides))
    method.check_weights(weights_root)

    plans, all_sequences = plan_run(entry, data_root, sequences)
    selected = select_sequences(all_sequences, sequences, shard)
    record = resolved_record(
        benchmark, data_root, method, settings, plans, selected, all_sequences, sequences, shard,
        weights_digests(method, weights_root),
    )
    differing = differing_records(out, record)
    if differing and not force:
        refuse_differing(out, record, differing)
    todo = [name for name in selected if force or not output_path(out, entry.task, name).exists()]
    skipped = [name for name in selected if name not in set(todo)]
    extractor = None
    if todo:
        from vcorr.features import FeatureExtractor

        # The device and every checkpoint are checked here, before anything is written.
        extractor = FeatureExtractor(
            protocol_features(method.features, settings.protocol), weights_root, device=device, amp=amp,
            zero_image_bn_update=settings.options["zero_image_bn_update"],
        )  # fmt: skip
        if amp and not extractor.amp:
            print(f"vcorr propagate: warning: --amp ignored on {extractor.device} (float16 autocast runs on CUDA "
                  "only); computing in float32", file=sys.stderr)

    delete_recorded(out, entry.task, differing)
    out.mkdir(parents=True, exist_ok=True)
    write_json(record_path(out, shard), record)
    say = print if progress is None else (lambda *_args: None)
    say(
        f"vcorr propagate: {benchmark} with {method.name} ({settings.protocol} "
        f"{json.dumps(settings.params)}, size {settings.size}); {len(selected)} sequence(s) selected, "
        f"{len(skipped)} already complete{f', {len(differing)} earlier run(s) made otherwise deleted (--force)' if differing else ''}"
    )
    if progress is not None:
        progress.reset(total=sum(len(plans[name].frames) for name in todo))
    start, frames = time.perf_counter(), 0
    for number, name in enumerate(todo, start=1):
        plan = plans[name]
        remove_partial_outputs(out, entry.task, name)
        observer = None
        if margins is not None:
            from vcorr.propagation.margins import MarginRecorder

            observer = margins[name] = MarginRecorder()
        if progress is not None:
            progress.set_postfix_str(name, refresh=False)
            propagate_sequence(plan, entry, extractor, settings, out, progress, observer)
        else:
            with tqdm(total=len(plan.frames), desc=f"[{number}/{len(todo)}] {name}", unit="frame", leave=True) as bar:
                propagate_sequence(plan, entry, extractor, settings, out, bar, observer)
        frames += len(plan.frames)
    seconds = time.perf_counter() - start
    rate = f", {frames / seconds:.1f} frames/s" if todo and seconds > 0 else ""
    say(f"vcorr propagate: done: {len(todo)} sequence(s) propagated ({frames} frames in {seconds:.1f} s{rate}), "
          f"{len(skipped)} already complete -> {out}")
    return PropagationSummary(selected, skipped, todo)


def protocol_features(features, protocol: str):
    """The method's features with the input normalisation its protocol applies (protocol dino
    normalises RGB with DINO's constants: vcorr.propagation.parameters.PROTOCOL_INPUTS)."""
    import dataclasses

    from vcorr.propagation.parameters import PROTOCOL_INPUTS

    replaced = PROTOCOL_INPUTS.get(protocol, {}).get(features.input, features.input)
    return dataclasses.replace(features, input=replaced)


def initial_labels(plan: SequencePlan, benchmark: Benchmark) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """First frame's id map as read, and (YouTube-VOS) `{t: ids of the objects first annotated at t}`.

    Labels are at the annotation resolution; each protocol's label path (`LABEL_PATHS`) takes
    them from there. Outputs come back at this resolution, which is what the scorers compare.
    """
    from vcorr.errors import VcorrError
    from vcorr.io import read_index_png
    from vcorr.propagation.adapters import late_objects

    first = plan.annotations.get(plan.frames[0])
    if first is None:
        raise VcorrError(f"sequence {plan.name}: its first frame {plan.frames[0]} has no annotation")
    label0 = read_index_png(first)
    if not benchmark.late_objects:
        return label0, {}
    later = (
        (index, read_index_png(plan.annotations[frame]))
        for index, frame in enumerate(plan.frames[1:], start=1)
        if frame in plan.annotations
    )
    return label0, late_objects(label0, later)


def encoder_input_size(plan: SequencePlan, extractor, settings) -> tuple[int, int]:
    """The (H, W) the encoder sees: the settings' size rule, each side floored to a multiple of
    the encoder's patch (ViTs; 1 for CNNs), so that the patch grid covers the whole frame."""
    return settings.input_size(*plan.label_size, multiple=extractor.input_multiple)


def crw_labels(plan: SequencePlan, benchmark: Benchmark, label0, settings, extractor) -> tuple:
    """HVC / videowalk: labels at the frame size (CRWPropagator resizes them); VIP's ids outside
    its 20 classes (void 255) count as background."""
    from vcorr.propagation.adapters import vip_labels

    return (vip_labels(label0) if benchmark.task == "vip" else label0), settings.params


def stt_labels(plan: SequencePlan, benchmark: Benchmark, label0, settings, extractor) -> tuple:
    """Spa-then-Temp: labels resized with the frames (vcorr.propagation.stt_labels); VIP's ids as
    read (its vip_dataset_rgb propagates the annotation as it is)."""
    from vcorr.propagation.stt_labels import stt_first_frame

    first = stt_first_frame(label0, encoder_input_size(plan, extractor, settings), plan.label_size)
    return first.labels, {**settings.params, "output_size": first.output_size}


def dino_labels(plan: SequencePlan, benchmark: Benchmark, label0, settings, extractor) -> tuple:
    """DINO: the annotation as read (VIP too: the DINO-based VIP scripts read its ids as they are),
    taken to the feature grid by the propagator, the soft labels upsampled by the encoder's stride."""
    return label0, {**settings.params, "stride": extractor.stride}


# Each protocol's first-frame label path for id maps: (plan, benchmark, ids as read, settings,
# extractor) -> (what the propagator starts from, its keyword arguments).
LABEL_PATHS = {"crw": crw_labels, "stt": stt_labels, "dino": dino_labels}


def feature_stream(plan: SequencePlan, extractor, settings, progress) -> Iterator:
    """Features of each frame in turn, computed only when the propagator asks for them."""
    size = encoder_input_size(plan, extractor, settings)
    for image in plan.images:
        features = extractor.extract(read_frame(image, size))
        # Counted before the yield: the consumer never resumes the generator after the last frame.
        progress.update()
        yield features


def propagate_sequence(
    plan: SequencePlan, benchmark: Benchmark, extractor, settings, out: Path, progress, observer=None
) -> None:
    from vcorr.io import atomic_dir
    from vcorr.propagation import propagate_stream
    from vcorr.propagation.adapters import IndexPngWriter

    if benchmark.task == "jhmdb":
        propagate_keypoints(plan, extractor, settings, out, progress, observer)
        return

    label0, late = initial_labels(plan, benchmark)
    label0, params = LABEL_PATHS[settings.protocol](plan, benchmark, label0, settings, extractor)
    written = set(plan.written)
    with atomic_dir(output_path(out, benchmark.task, plan.name)) as folder:
        writer = IndexPngWriter(folder)
        stream = propagate_stream(
            feature_stream(plan, extractor, settings, progress), label0, settings.protocol, late=late or None,
            observer=observer, ties=settings.options["ties"], **params,
        )
        for frame, result in zip(plan.frames, stream):
            if frame in written:
                writer.write(frame, result.ids)


def propagate_keypoints(plan: SequencePlan, extractor, settings, out: Path, progress, observer=None) -> None:
    """JHMDB: frame-0 joint heat maps (original resolution) propagated, read out as `[2, 15, T]`
    coordinates at the original resolution, which `vcorr score jhmdb` compares with the joints."""
    import numpy as np

    from vcorr.metrics.pck import heatmaps_to_coords
    from vcorr.propagation import propagate_stream
    from vcorr.propagation.adapters import KeypointWriter, jhmdb_first_heatmaps, keypoint_coords
    from vcorr.propagation.stt_labels import stt_first_frame

    mat = plan.annotations[plan.frames[0]]
    params, first = settings.params, None
    if settings.protocol == "stt":
        # Spa-then-Temp's label path: float64 maps resized with the frames, frame 0 read back from
        # the round trip (vcorr.propagation.stt_labels).
        heatmaps = jhmdb_first_heatmaps(mat, plan.label_size, dtype=np.float64)
        first = stt_first_frame(heatmaps, encoder_input_size(plan, extractor, settings), plan.label_size)
        heatmaps, params = first.labels, {**params, "output_size": first.output_size}
    else:
        heatmaps = jhmdb_first_heatmaps(mat, plan.label_size)
    writer = KeypointWriter()
    stream = propagate_stream(
        feature_stream(plan, extractor, settings, progress), heatmaps, settings.protocol,
        observer=observer, ties=settings.options["ties"], **params,
    )
    for t, result in enumerate(stream):
        if t == 0 and first is not None:
            writer.add(heatmaps_to_coords(first.output.cpu().numpy()[None])[..., 0])
        else:
            writer.add(keypoint_coords(result.soft, settings.protocol, plan.label_size))
    writer.save(output_path(out, "jhmdb", plan.name))
