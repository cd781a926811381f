"""What a person looks at rather than reads: score charts, training curves, mask overlays, one page.

- `score_chart`: grouped bars of the headline scores (J&F, PCK, mIoU ...), one panel per metric,
  a group per benchmark, a colour per method and a hatch per propagation protocol when the table
  has a `protocol` column (`results/summary.csv` or the cross-protocol table).
- `loss_curves`: one column of panels per training stage from its `metrics.csv`: the loss terms
  against the step, the validation scores (`val/<measure>`, when the stage validated) against the
  step, then one panel per other logged term (lr, accuracies, images/s).
- `overlay_strip`: ground truth beside prediction as coloured overlays on a few frames of a
  sequence (DAVIS palette), as a PNG strip or an animated GIF; `sequence_folders` finds a
  sequence's frames and ground truth from its benchmark's layout.
- `write_report_page`: one self-contained HTML page (images embedded) with the score tables,
  the charts and the overlays, for Snakemake's report or a browser: notices first (synthetic
  data), tables without empty columns in boxes that scroll sideways, with a legend of their units
  and columns, and figures with captions that say what they show (`vcorr.report.captions`).

Charts are drawn by matplotlib's Agg backend (no display needed); every output is written
under a temporary name and renamed into place.
"""

from __future__ import annotations

import base64
import csv
import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from vcorr.errors import VcorrError
from vcorr.io import DAVIS_PALETTE, atomic_file, read_index_png
from vcorr.report.captions import column_notes, units_note
from vcorr.report.cross_protocol_table import CELL_COLUMNS
from vcorr.report.results import HEADLINES, SUMMARY_FIXED, SUMMARY_TAIL, headline_column

# Columns of the score tables that name or locate a result rather than measure it.
IDENTITY_COLUMNS = frozenset({*SUMMARY_FIXED, *SUMMARY_TAIL, *CELL_COLUMNS})
HEADLINE_ORDER = tuple(headline_column(name) for names in HEADLINES.values() for name in names)
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
# Strip layout (pixels): a caption band above each row of tiles, a gap between tiles.
STRIP_CAPTION_PX = 18
STRIP_GAP_PX = 4
OVERLAY_ALPHA = 0.5
_HATCHES = ("", "//", "..", "xx", "\\\\", "++", "--", "oo")
_MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(figure, out_png: Path) -> None:
    plt = _pyplot()
    try:
        with atomic_file(out_png) as temporary:
            figure.savefig(temporary, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(figure)


def _csv_rows(path: str | os.PathLike) -> list[list[str]]:
    """A CSV score table's rows, header first; an error names the file when it is absent or empty."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError:
        raise VcorrError(f"{path}: missing (score table)") from None
    except (UnicodeDecodeError, csv.Error) as error:
        raise VcorrError(f"{path}: not a CSV table ({error})") from None
    if not rows:
        raise VcorrError(f"{path}: empty (no header row)")
    return rows


def read_table(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a CSV score table (summary.csv or the cross-protocol table) as dicts of strings."""
    header, *rows = _csv_rows(path)
    return [dict(zip(header, row)) for row in rows]


def _number(value: Any, where: str, column: str) -> float | None:
    """A score cell as a float; None when empty (server-scored or not measured)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise VcorrError(f"{where}: column '{column}' holds {value!r}, not a number") from None
    return None if math.isnan(number) else number


def metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Measured columns with at least one value: headline metrics in HEADLINES order, then the rest."""
    present = [column for row in rows for column in row if column not in IDENTITY_COLUMNS]
    present = list(dict.fromkeys(present))
    filled = [column for column in present if any(str(row.get(column) or "").strip() for row in rows)]
    known = [name for name in HEADLINE_ORDER if name in filled]
    return known + [name for name in filled if name not in known]


# (benchmark, method, protocol) -> score; protocol is "" when the table has none.
Bars = dict[tuple[str, str, str], float]


def score_bars(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], where: str) -> dict[str, Bars]:
    """The bars of each metric that has at least one value; a cell that is not a number, or a
    second row for the same (benchmark, method, protocol), is an error naming its line."""
    with_protocol = any(str(row.get("protocol") or "").strip() for row in rows)
    bars: dict[str, Bars] = {}
    for metric in metrics:
        values: Bars = {}
        for number, row in enumerate(rows, start=2):
            value = _number(row.get(metric), f"{where}:{number}", metric)
            if value is None:
                continue
            key = (row["benchmark"], row["method"], str(row.get("protocol") or "") if with_protocol else "")
            if key in values:
                raise VcorrError(f"{where}:{number}: a second row for {' / '.join(filter(None, key))} ({metric})")
            values[key] = value
        if values:
            bars[metric] = values
    return bars


def _draw_bars(bars: dict[str, Bars]):
    """A panel per metric: a group per benchmark, a colour per method, a hatch per protocol."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    methods = list(dict.fromkeys(key[1] for values in bars.values() for key in values))
    protocols = list(dict.fromkeys(key[2] for values in bars.values() for key in values))
    colours = {method: plt.get_cmap("tab10")(index % 10) for index, method in enumerate(methods)}
    hatches = {protocol: _HATCHES[index % len(_HATCHES)] for index, protocol in enumerate(protocols)}
    series = [(method, protocol) for method in methods for protocol in protocols]
    columns = min(3, len(bars))
    panel_rows = math.ceil(len(bars) / columns)
    most_groups = max(len({key[0] for key in values}) for values in bars.values())
    panel_width = max(4.0, 1.2 + 0.35 * len(series) * most_groups)
    figure, axes = plt.subplots(panel_rows, columns, figsize=(panel_width * columns, 3.6 * panel_rows), squeeze=False)
    for axis, (metric, values) in zip(axes.flat, bars.items()):
        benchmarks = list(dict.fromkeys(key[0] for key in values))
        drawn = [pair for pair in series if any((benchmark, *pair) in values for benchmark in benchmarks)]
        width = 0.8 / len(drawn)
        for index, (method, protocol) in enumerate(drawn):
            positions = [group + (index - (len(drawn) - 1) / 2) * width for group in range(len(benchmarks))]
            heights = [values.get((benchmark, method, protocol), np.nan) for benchmark in benchmarks]
            container = axis.bar(positions, heights, width, color=colours[method], hatch=hatches[protocol],
                                 edgecolor="black", linewidth=0.5)
            axis.bar_label(container, fmt="%.4g", fontsize=7, padding=1)
        axis.set_xticks(range(len(benchmarks)), benchmarks)
        axis.set_title(metric)
        axis.set_ylabel(metric)
        axis.margins(y=0.15)
        axis.grid(axis="y", alpha=0.3)
        axis.set_axisbelow(True)
    for axis in list(axes.flat)[len(bars):]:
        axis.set_visible(False)
    handles = [Patch(facecolor=colours[method], edgecolor="black", label=method) for method in methods]
    if protocols != [""]:
        handles += [Patch(facecolor="white", edgecolor="black", hatch=hatches[protocol], label=f"protocol: {protocol}")
                    for protocol in protocols]
    figure.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(handles), 6),
                  frameon=False)
    figure.tight_layout()
    return figure


def _draw_message(lines: list[str]):
    figure, axis = _pyplot().subplots(figsize=(6, 1 + 0.3 * len(lines)))
    axis.axis("off")
    axis.text(0.5, 0.5, "\n".join(lines), ha="center", va="center")
    return figure


def score_chart(
    table: str | os.PathLike | Sequence[Mapping[str, Any]],
    out_png: str | os.PathLike,
    metrics: Sequence[str] | None = None,
) -> list[str]:
    """Grouped bar chart of a score table; returns the metrics drawn (one panel each).

    `table` is a CSV path or rows (dicts) with `benchmark`, `method`, optionally `protocol`, and
    one column per metric. Rows without a value for a metric (server-scored benchmarks) have no
    bar in its panel; a table of server-scored results only gives a figure that says so.
    """
    where = str(table) if isinstance(table, (str, os.PathLike)) else "score rows"
    rows = read_table(table) if isinstance(table, (str, os.PathLike)) else [dict(row) for row in table]
    if not rows:
        raise VcorrError(f"{where}: no rows (an empty score table)")
    if not {"benchmark", "method"} <= set(rows[0]):
        raise VcorrError(f"{where}: a score table needs 'benchmark' and 'method' columns (has {', '.join(rows[0])})")
    metrics = list(metrics) if metrics else metric_columns(rows)
    bars = score_bars(rows, metrics, where)
    if bars:
        figure = _draw_bars(bars)
    elif any(str(row.get("status") or "").strip() not in ("", "scored") for row in rows):
        # Only server-scored results (YouTube-VOS, DAVIS test-dev): say so rather than fail the report.
        figure = _draw_message(["No locally scored results"] +
                               sorted({f"{row['benchmark']}: {row['status']}" for row in rows}))
    else:
        raise VcorrError(f"{where}: no scores to chart (no numeric values in {', '.join(metrics) or 'any metric column'})")
    _save_figure(figure, Path(out_png))
    return list(bars)


def _read_metrics(name: str, path: Path) -> dict[str, np.ndarray]:
    """Numeric columns of a training metrics.csv (step first); empty cells are NaN."""
    import pandas as pd

    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise VcorrError(f"{path}: missing (metrics.csv of training stage '{name}')") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise VcorrError(f"{path}: not a metrics CSV ({error})") from None
    if frame.empty:
        raise VcorrError(f"{path}: no rows logged yet (training stage '{name}')")
    numeric = {column: pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float) for column in frame}
    steps = numeric.pop("step", None)
    numeric.pop("epoch", None)
    curves = {column: values for column, values in numeric.items() if np.isfinite(values).any()}
    if not curves:
        raise VcorrError(f"{path}: no numeric column besides step/epoch to plot")
    return {"step": steps if steps is not None else np.arange(len(frame), dtype=float), **curves}


def _is_loss(term: str) -> bool:
    return "loss" in term.lower()


VALIDATION_PREFIX = "val/"  # vcorr.train.loop logs validation scores as val/<measure>


def _panel_order(term: str) -> int:
    """Validation scores first below the loss: the curve that says whether training helps."""
    return 0 if term.startswith(VALIDATION_PREFIX) else 1


def loss_curves(metrics_csvs: Mapping[str, str | os.PathLike], out_png: str | os.PathLike) -> dict[str, list[str]]:
    """Training curves, a column of panels per stage (mapping order); returns the terms per stage.

    The top panel holds the loss terms (every column whose name contains "loss") against the
    step; below it one panel per other term the stage logs, its validation scores first (marked
    points: one per validation, step 0 being the untrained initialisation), then lr (log scale),
    accuracies, images/s; a stage with fewer terms leaves the rest of its column empty.
    """
    if not metrics_csvs:
        raise VcorrError("loss_curves: no training stage given (need NAME -> metrics.csv)")
    stages = {name: _read_metrics(name, Path(path)) for name, path in metrics_csvs.items()}
    others = {name: sorted((term for term in curves if term != "step" and not _is_loss(term)), key=_panel_order)
              for name, curves in stages.items()}
    rows = 1 + max(len(terms) for terms in others.values())
    plt = _pyplot()
    figure, axes = plt.subplots(rows, len(stages), figsize=(5.0 * len(stages), 1.2 + 1.8 * rows),
                                squeeze=False, sharex="col")
    terms: dict[str, list[str]] = {}
    for column, (name, curves) in enumerate(stages.items()):
        steps = curves["step"]
        terms[name] = [term for term in curves if term != "step"]
        losses = [term for term in terms[name] if _is_loss(term)]
        loss_axis = axes[0, column]
        for term in losses:
            finite = np.isfinite(curves[term])
            loss_axis.plot(steps[finite], curves[term][finite], label=term, linewidth=1.2 if term == "loss" else 0.9)
        loss_axis.set_title(f"{name}: loss" if losses else f"{name}: no loss column")
        if losses:
            loss_axis.legend(fontsize=7)
        loss_axis.set_ylabel("loss")
        for row, term in enumerate(others[name], start=1):
            axis = axes[row, column]
            axis.set_ylabel(term)
            finite = np.isfinite(curves[term])
            if term.startswith(VALIDATION_PREFIX):
                axis.plot(steps[finite], curves[term][finite], color="tab:green", marker="o", linewidth=1.2)
                axis.set_title(f"{name}: validation {term[len(VALIDATION_PREFIX):]} (step 0: untrained)", fontsize=9)
            else:
                axis.plot(steps[finite], curves[term][finite], color="tab:orange", linewidth=1.0)
            if term == "lr" and (curves[term][finite] > 0).all():
                axis.set_yscale("log")
        used = 1 + len(others[name])
        for axis in axes[used:, column]:
            axis.set_visible(False)
        for axis in axes[:used, column]:
            axis.grid(alpha=0.3)
        axes[used - 1, column].set_xlabel("step")
        axes[used - 1, column].xaxis.set_tick_params(labelbottom=True)
    figure.tight_layout()
    _save_figure(figure, Path(out_png))
    return terms


def overlay(frame: np.ndarray, ids: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """`frame` ([H, W, 3] uint8) with every non-zero id blended with its DAVIS palette colour and
    outlined in it. Pixels with id 0 (background) are the frame's own, unchanged.
    """
    if frame.shape[:2] != ids.shape:
        raise VcorrError(f"overlay: labels of size {ids.shape} on a frame of size {frame.shape[:2]}")
    palette = np.array(DAVIS_PALETTE, dtype=np.float32).reshape(256, 3)
    blended = frame.astype(np.float32) * (1 - alpha) + palette[ids] * alpha
    # Outline each object in its full colour, so touching objects and thin parts stay readable.
    edge = np.zeros(ids.shape, bool)
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge &= ids > 0
    blended[edge] = palette[ids[edge]]
    # A colour that rounds back to the frame's own value would hide the label: push it one step.
    blended = np.rint(blended).astype(np.int16)
    same = (blended == frame).all(axis=-1) & (ids > 0)
    blended[same] = np.where(frame[same] < 128, frame[same] + 1, frame[same] - 1)
    return np.where((ids > 0)[..., None], blended, frame).astype(np.uint8)


@dataclass(frozen=True)
class OverlayFrame:
    stem: str
    truth: np.ndarray  # [H, W, 3] uint8: the frame with the ground truth overlaid
    prediction: np.ndarray  # the frame with the prediction overlaid


def _frame_files(frames_dir: Path) -> dict[str, Path]:
    if not frames_dir.is_dir():
        raise VcorrError(f"{frames_dir}: missing (frames folder)")
    return {path.stem: path for path in sorted(frames_dir.iterdir()) if path.suffix.lower() in FRAME_SUFFIXES}


def _read_frame(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise VcorrError(f"{path}: unreadable frame ({error})") from None


def _fit(frame: np.ndarray, ids: list[np.ndarray], height: int | None) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frame and label maps scaled to `height` (labels by nearest neighbour, so ids stay ids)."""
    if height is None or frame.shape[0] <= height:
        return frame, ids
    size = (max(1, round(frame.shape[1] * height / frame.shape[0])), height)
    scaled = np.array(Image.fromarray(frame).resize(size, Image.Resampling.BILINEAR))
    return scaled, [np.array(Image.fromarray(labels).resize(size, Image.Resampling.NEAREST)) for labels in ids]


def _choose(stems: list[str], frames: int | Sequence[str], where: str) -> list[str]:
    if isinstance(frames, int):
        if frames < 1:
            raise VcorrError(f"overlay: frames must be at least 1 (got {frames})")
        picks = np.unique(np.linspace(0, len(stems) - 1, min(frames, len(stems))).round().astype(int))
        return [stems[index] for index in picks]
    missing = [stem for stem in frames if stem not in stems]
    if missing:
        raise VcorrError(f"{where}: no frame, ground truth and prediction for {', '.join(missing)}")
    return list(frames)


def overlay_frames(
    frames_dir: str | os.PathLike,
    truth_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    frames: int | Sequence[str] = 4,
    height: int | None = 240,
) -> list[OverlayFrame]:
    """Ground-truth and predicted overlays of a sequence's frames that have both label maps.

    `frames` is how many to take, evenly spaced from first to last, or the frame names (file
    stems). Frames taller than `height` pixels are scaled down first.
    """
    frames_dir, truth_dir, pred_dir = Path(frames_dir), Path(truth_dir), Path(pred_dir)
    images = _frame_files(frames_dir)
    for folder, what in ((truth_dir, "ground-truth folder"), (pred_dir, "prediction folder")):
        if not folder.is_dir():
            raise VcorrError(f"{folder}: missing ({what})")
    common = [stem for stem in images if (truth_dir / f"{stem}.png").is_file() and (pred_dir / f"{stem}.png").is_file()]
    if not common:
        raise VcorrError(f"{frames_dir}: no frame has both a ground truth in {truth_dir} and a prediction in {pred_dir}")
    result = []
    for stem in _choose(common, frames, str(frames_dir)):
        frame = _read_frame(images[stem])
        maps = [read_index_png(truth_dir / f"{stem}.png"), read_index_png(pred_dir / f"{stem}.png")]
        for folder, labels in zip((truth_dir, pred_dir), maps):
            if labels.shape != frame.shape[:2]:
                raise VcorrError(f"{folder / f'{stem}.png'}: {labels.shape[1]}x{labels.shape[0]} labels for a "
                                 f"{frame.shape[1]}x{frame.shape[0]} frame ({images[stem]})")
        frame, (truth, prediction) = _fit(frame, maps, height)
        result.append(OverlayFrame(stem, overlay(frame, truth), overlay(frame, prediction)))
    return result


def sequence_folders(benchmark: str, root: str | os.PathLike, sequence: str) -> tuple[Path, Path]:
    """(frames folder, ground-truth folder) of one sequence of a mask benchmark, from its layout."""
    from vcorr.data.layouts import benchmark_frames

    frames = benchmark_frames(benchmark, Path(root), with_sizes=False)
    frames = frames[frames["sequence"] == sequence]
    if frames.empty:
        raise VcorrError(f"{root}: no sequence '{sequence}' in {benchmark}")
    labels = [Path(path) for path in frames["annotation"] if path]
    if not labels or labels[0].suffix != ".png":
        raise VcorrError(f"{benchmark}: sequence '{sequence}' has no label masks to overlay (its labels: "
                         f"{labels[0].name if labels else 'none'})")
    return Path(frames["image"].iloc[0]).parent, labels[0].parent


def _canvas(tiles: list[list[np.ndarray]], captions: list[list[str]]) -> Image.Image:
    """Tiles in a grid (rows of equal-size tiles), each with its caption in the band above it."""
    height, width = tiles[0][0].shape[:2]
    columns = max(len(row) for row in tiles)
    canvas = Image.new("RGB", (columns * width + (columns - 1) * STRIP_GAP_PX,
                               len(tiles) * (STRIP_CAPTION_PX + height) + (len(tiles) - 1) * STRIP_GAP_PX), "white")
    for row, (tile_row, caption_row) in enumerate(zip(tiles, captions)):
        top = row * (STRIP_CAPTION_PX + height + STRIP_GAP_PX)
        for column, (tile, caption) in enumerate(zip(tile_row, caption_row)):
            left = column * (width + STRIP_GAP_PX)
            band = Image.new("RGB", (width, STRIP_CAPTION_PX), "white")  # clips a caption wider than its tile
            ImageDraw.Draw(band).text((2, 3), caption, fill="black")
            canvas.paste(band, (left, top))
            canvas.paste(Image.fromarray(tile), (left, top + STRIP_CAPTION_PX))
    return canvas


def overlay_strip(
    frames_dir: str | os.PathLike,
    truth_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    out: str | os.PathLike,
    frames: int | Sequence[str] = 4,
    height: int | None = 240,
    frame_ms: int = 600,
) -> list[str]:
    """Ground truth beside prediction on a few frames; returns the frame names shown.

    `out` ending in .gif: an animated GIF, one animation frame per chosen frame, ground truth
    left and prediction right. Otherwise a PNG strip: a column per chosen frame, the ground
    truth row above the prediction row (each tile under a caption band of STRIP_CAPTION_PX,
    tiles STRIP_GAP_PX apart).
    """
    out = Path(out)
    chosen = overlay_frames(frames_dir, truth_dir, pred_dir, frames, height)
    if out.suffix.lower() == ".gif":
        pictures = [_canvas([[item.truth, item.prediction]], [[f"truth {item.stem}", f"prediction {item.stem}"]])
                    for item in chosen]
        # One palette for the whole animation, error-diffused: no banding, no colours flickering.
        stack = Image.new("RGB", (pictures[0].width, pictures[0].height * len(pictures)))
        for index, picture in enumerate(pictures):
            stack.paste(picture, (0, index * picture.height))
        palette = stack.quantize(256, method=Image.Quantize.MEDIANCUT)
        pictures = [picture.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG) for picture in pictures]
        with atomic_file(out) as temporary:
            pictures[0].save(temporary, format="GIF", save_all=True, append_images=pictures[1:], duration=frame_ms,
                             loop=0, disposal=1)
    else:
        canvas = _canvas([[item.truth for item in chosen], [item.prediction for item in chosen]],
                         [[f"truth {item.stem}" for item in chosen], [f"prediction {item.stem}" for item in chosen]])
        with atomic_file(out) as temporary:
            canvas.save(temporary, format="PNG")
    return [item.stem for item in chosen]


def _format_cell(value: str) -> str:
    """A number shortened to 4 significant digits (the full value in the tooltip); text escaped."""
    try:
        number = float(value)
    except ValueError:
        return f"<td>{html.escape(value)}</td>"
    if not value.strip() or math.isnan(number) or value.strip().isdigit():
        return f"<td>{html.escape(value)}</td>"
    return f'<td class="number" title="{html.escape(value)}">{number:.4g}</td>'


def table_html(path: str | os.PathLike) -> str:
    """A CSV score table as an HTML <table> (header row, one row per CSV row) in a box that scrolls
    sideways when wider than the page, columns empty in every row left out, and a legend of the
    columns that need a word (units, `settings` ...)."""
    header, *rows = _csv_rows(path)
    shown = [index for index, _ in enumerate(header) if any(index < len(row) and row[index].strip() for row in rows)]
    head = "".join(f"<th>{html.escape(header[index])}</th>" for index in shown)
    body = "\n".join("<tr>" + "".join(_format_cell(row[index] if index < len(row) else "") for index in shown) + "</tr>"
                     for row in rows)
    columns = [header[index] for index in shown]
    legend = [units_note()] if any(name in HEADLINE_ORDER for name in columns) else []
    legend += [f"<code>{html.escape(name)}</code>: {html.escape(note)}" for name, note in column_notes(columns).items()]
    legend_html = "".join(f"<li>{item}</li>" for item in legend)
    return (f'<div class="table-box">\n<table data-source="{html.escape(Path(path).name)}">\n<thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody>\n</table>\n</div>" + (f'\n<ul class="legend">{legend_html}</ul>' if legend else ""))


def _captions(paths: Sequence[Path]) -> list[str]:
    """Each image's path below the group's common folder, so that images of one name in
    different folders (one sequence for two methods) are told apart: the caption of an image
    given none."""
    common = Path(os.path.commonpath([path.parent for path in paths])) if paths else Path()
    return [path.relative_to(common).as_posix() if path.is_relative_to(common) else path.name for path in paths]


def _image_html(path: Path, caption: str) -> str:
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise VcorrError(f"{path}: not an image the report page can embed ({', '.join(_MIME)})")
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except FileNotFoundError:
        raise VcorrError(f"{path}: missing (image for the report page)") from None
    name, caption = html.escape(path.name), html.escape(caption)
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{caption}" data-source="{name}">'
            f"<figcaption>{caption}</figcaption></figure>")


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
.notice { background: #fff4d6; border-left: 4px solid #e0a800; padding: 0.5em 0.8em; max-width: 70em; }
.table-box { max-width: 100%; overflow-x: auto; margin: 0.5em 0 0.3em; }
table { border-collapse: collapse; font-size: 0.9em; }
ul.legend { font-size: 0.85em; color: #444; max-width: 70em; margin: 0 0 1.5em; padding-left: 1.2em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; }
th { background: #eee; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; max-width: 100%; }
img { max-width: 100%; border: 1px solid #ddd; } figcaption { font-size: 0.85em; color: #555; max-width: 60em; }
"""
# Marks <body> once every image has loaded (data-images-loaded="N/total"; data-images-broken when
# one failed), so a headless browser's DOM dump tells whether the figures render.
_LOAD_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (image) { return image.complete && image.naturalWidth > 0; });
  document.body.setAttribute("data-images-loaded", loaded.length + "/" + images.length);
  if (loaded.length < images.length) document.body.setAttribute("data-images-broken", "true");
});
"""


def write_report_page(
    out_html: str | os.PathLike,
    tables: Mapping[str, str | os.PathLike] | None = None,
    images: Mapping[str, str | os.PathLike | Sequence[str | os.PathLike]] | None = None,
    title: str = "vcorr report",
    notes: Sequence[str] = (),
    captions: Mapping[str | os.PathLike, str] | None = None,
) -> None:
    """One self-contained HTML page: `notes` first (paragraphs a reader must see before the
    scores, such as that the data are synthetic), then a section per table (heading -> CSV) and per
    image group (heading -> one image or several), in the mappings' order, images embedded as
    base64 with their caption from `captions` (image path -> text; else the path)."""
    tables, images = tables or {}, images or {}
    described = {Path(path): text for path, text in (captions or {}).items()}
    if not tables and not images:
        raise VcorrError(f"{out_html}: nothing to put on the report page (no tables, no images)")
    sections = [f'<p class="notice">{html.escape(note)}</p>' for note in notes]
    sections += [f"<h2>{html.escape(heading)}</h2>\n{table_html(path)}" for heading, path in tables.items()]
    for heading, paths in images.items():
        group = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(path) for path in paths]
        figures = "\n".join(_image_html(path, described.get(path, caption)) for path, caption in zip(group, _captions(group)))
        sections.append(f'<h2>{html.escape(heading)}</h2>\n<div class="figures">\n{figures}\n</div>')
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_STYLE}</style>\n<script>{_LOAD_CHECK}</script>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n" + "\n".join(sections) + "\n</body>\n</html>\n")
    with atomic_file(out_html) as temporary:
        temporary.write_text(page, encoding="utf-8")
