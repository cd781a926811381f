"""The report's pictures: score charts, training curves, mask overlays, the HTML page, in a browser.

The browser test renders the page in Debian's chromium (headless): installed when missing and
we are root with apt-get (CI: `.ci/run` as root on Debian), skipped otherwise.
"""

from __future__ import annotations

import base64
import csv
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from vcorr.cli import main
from vcorr.errors import VcorrError
from vcorr.io import write_index_png
from vcorr.report.captions import overlay_caption, synthetic_data_notice, training_caption
from vcorr.report.results import SUMMARY_FIXED, SUMMARY_TAIL
from vcorr.report.figures import (
    STRIP_CAPTION_PX,
    STRIP_GAP_PX,
    loss_curves,
    overlay,
    overlay_frames,
    overlay_strip,
    score_bars,
    score_chart,
    sequence_folders,
    write_report_page,
)

HEIGHT, WIDTH, FRAMES = 40, 56, 6
# The prediction differs from the ground truth here: object 1 predicted as object 2.
WRONG = (slice(10, 20), slice(8, 20))


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def summary_csv(path: Path) -> Path:
    """summary.csv as `vcorr report summary` writes it: 2 methods x 2 scored benchmarks, 1 server row."""
    metrics = ["J&F-Mean (%)", "J-Mean (%)", "F-Mean (%)", "PCK@0.1 (%)", "PCK@0.2 (%)"]
    rows = []
    for method, offset in (("crw", 0.0), ("hvc", 5.0)):
        rows.append({"benchmark": "davis17", "method": method, "status": "scored", "J&F-Mean (%)": 61.25 + offset,
                     "J-Mean (%)": 59.5 + offset, "F-Mean (%)": 63.0 + offset, "result": f"results/davis17/{method}.json"})
        rows.append({"benchmark": "jhmdb", "method": method, "status": "scored", "PCK@0.1 (%)": 45.5 + offset,
                     "PCK@0.2 (%)": 70.125 + offset, "result": f"results/jhmdb/{method}.json"})
        rows.append({"benchmark": "ytvos18", "method": method, "status": "awaiting server evaluation",
                     "archive": f"results/ytvos18/{method}.zip", "upload_to": "https://example.org/upload",
                     "result": f"results/ytvos18/{method}.json"})
    return write_csv(path, [*SUMMARY_FIXED, *metrics, *SUMMARY_TAIL], rows)


def cross_protocol_csv(path: Path) -> Path:
    """The cross-protocol table: each method under each propagation protocol; hvc+stt not run on vip."""
    rows = [{"method": method, "protocol": protocol, "settings": "own" if protocol == method else "stt_r18",
             "benchmark": benchmark, metric: value + gain + extra}
            for method, gain in (("crw", 0.0), ("hvc", 4.0)) for protocol, extra in (("crw", 0.0), ("stt", 1.5))
            for benchmark, metric, value in (("davis17", "J&F-Mean (%)", 60.0), ("vip", "mIoU (%)", 30.0))
            if (method, protocol, benchmark) != ("hvc", "stt", "vip")]
    return write_csv(path, ["method", "protocol", "settings", "benchmark", "J&F-Mean (%)", "mIoU (%)"], rows)


def metrics_csv(path: Path, columns: list[str], steps: int = 30) -> Path:
    rows = []
    for step in range(10, 10 * steps + 1, 10):
        row = {"epoch": step // 100, "step": step, "lr": 0.01 * 0.99 ** step}
        for column in columns:
            row[column] = (5.0 if column == "loss" else 2.0) / (1 + step / 50) if "loss" in column else step / 3
        rows.append(row)
    return write_csv(path, ["epoch", "step", "lr", *columns], rows)


@pytest.fixture
def sequence(tmp_path) -> dict[str, Path]:
    """A DAVIS-layout sequence: frames, ground truth with two objects, a prediction wrong in WRONG."""
    root = tmp_path / "DAVIS"
    frames = root / "JPEGImages" / "480p" / "bear"
    truth = root / "Annotations" / "480p" / "bear"
    prediction = tmp_path / "predictions" / "bear"
    frames.mkdir(parents=True)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("bear\n")
    generator = np.random.default_rng(0)
    for index in range(FRAMES):
        image = generator.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        Image.fromarray(image).save(frames / f"{index:05d}.jpg", quality=90)
        labels = np.zeros((HEIGHT, WIDTH), np.uint8)
        labels[5 + index:25 + index, 5:25] = 1
        labels[25:35, 30:50] = 2
        write_index_png(truth / f"{index:05d}.png", labels)
        predicted = labels.copy()
        predicted[WRONG] = 2
        write_index_png(prediction / f"{index:05d}.png", predicted)
    return {"root": root, "frames": frames, "truth": truth, "pred": prediction}


def read_labels(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def assert_png(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.verify()
    image = Image.open(path)
    assert image.format == "PNG"
    return image


def test_score_chart_draws_a_panel_per_headline_metric_and_skips_server_rows(tmp_path):
    out = tmp_path / "scores.png"
    drawn = score_chart(summary_csv(tmp_path / "summary.csv"), out)
    assert drawn == ["J&F-Mean (%)", "J-Mean (%)", "F-Mean (%)", "PCK@0.1 (%)", "PCK@0.2 (%)"]
    assert assert_png(out).size[0] > assert_png(out).size[1]  # 3 panels a row, 2 rows


def test_score_chart_reads_the_cross_protocol_table_and_rows(tmp_path):
    table = cross_protocol_csv(tmp_path / "cross.csv")
    assert score_chart(table, tmp_path / "cross.png") == ["J&F-Mean (%)", "mIoU (%)"]
    assert_png(tmp_path / "cross.png")
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert score_chart(rows, tmp_path / "rows.png", metrics=["mIoU (%)"]) == ["mIoU (%)"]
    assert score_bars(rows, ["J&F-Mean (%)", "mIoU (%)", "PCK@0.1 (%)"], "cross.csv") == {
        "J&F-Mean (%)": {("davis17", "crw", "crw"): 60.0, ("davis17", "crw", "stt"): 61.5,
                     ("davis17", "hvc", "crw"): 64.0, ("davis17", "hvc", "stt"): 65.5},
        "mIoU (%)": {("vip", "crw", "crw"): 30.0, ("vip", "crw", "stt"): 31.5, ("vip", "hvc", "crw"): 34.0},
    }


def test_score_chart_refuses_bad_tables_and_writes_nothing(tmp_path):
    bad = write_csv(tmp_path / "bad.csv", ["benchmark", "method", "mIoU (%)"],
                    [{"benchmark": "vip", "method": "crw", "mIoU (%)": "n/a"}])
    with pytest.raises(VcorrError, match=r"bad\.csv:2: column 'mIoU \(%\)' holds 'n/a'"):
        score_chart(bad, tmp_path / "out.png")
    twice = write_csv(tmp_path / "twice.csv", ["benchmark", "method", "mIoU (%)"],
                      [{"benchmark": "vip", "method": "crw", "mIoU (%)": 1}, {"benchmark": "vip", "method": "crw", "mIoU (%)": 2}])
    with pytest.raises(VcorrError, match=r"twice\.csv:3: a second row for vip / crw"):
        score_chart(twice, tmp_path / "out.png")
    unscored = write_csv(tmp_path / "unscored.csv", ["benchmark", "method", "status", "J&F-Mean (%)"],
                         [{"benchmark": "davis17", "method": "crw", "status": "scored"}])
    with pytest.raises(VcorrError, match="no scores to chart"):
        score_chart(unscored, tmp_path / "out.png")
    with pytest.raises(VcorrError, match="no rows"):
        score_chart(write_csv(tmp_path / "empty.csv", ["benchmark", "method"], []), tmp_path / "out.png")
    with pytest.raises(VcorrError, match="missing"):
        score_chart(tmp_path / "absent.csv", tmp_path / "out.png")
    assert sorted(path.name for path in tmp_path.iterdir() if path.suffix == ".png") == []


def test_score_chart_of_server_scored_results_only_says_so(tmp_path):
    rows = [{"benchmark": "ytvos18", "method": "crw", "status": "awaiting server evaluation", "archive": "a.zip"}]
    assert score_chart(rows, tmp_path / "pending.png") == []
    assert_png(tmp_path / "pending.png")


def test_loss_curves_panel_per_stage_and_term(tmp_path):
    stages = {"stage1 (MoCo)": metrics_csv(tmp_path / "m1.csv", ["loss", "acc1"]),
              "stage2 (HVC)": metrics_csv(tmp_path / "m2.csv", ["loss", "loss_spatial", "images_per_s", "flow"])}
    out = tmp_path / "losses.png"
    terms = loss_curves(stages, out)
    assert terms == {"stage1 (MoCo)": ["lr", "loss", "acc1"],
                     "stage2 (HVC)": ["lr", "loss", "loss_spatial", "images_per_s", "flow"]}
    wide, narrow = assert_png(out).size, None
    loss_curves({"only": stages["stage1 (MoCo)"]}, tmp_path / "one.png")
    narrow = assert_png(tmp_path / "one.png").size
    assert wide[0] > 1.6 * narrow[0]  # a column of panels per stage
    assert wide[1] > narrow[1]  # stage 2 logs one term more than stage 1: a row more


def test_loss_curves_draw_the_validation_score_against_the_step(tmp_path):
    """Validation rows (`val/<measure>` every few steps, the loss columns empty) become a marked
    green curve; a stage without them has none."""
    plain = metrics_csv(tmp_path / "plain.csv", ["loss"])
    rows = list(csv.DictReader(open(plain, newline="")))
    rows += [{"epoch": 0, "step": step, "val/J&F-Mean": 0.5 + step / 1000} for step in (0, 100, 200, 300)]
    validated = write_csv(tmp_path / "validated.csv", ["epoch", "step", "lr", "loss", "val/J&F-Mean"], rows)
    green = np.array((44, 160, 44))  # matplotlib's tab:green

    def green_pixels(path: Path) -> int:
        image = np.asarray(assert_png(path).convert("RGB")).astype(int)
        return int((np.abs(image - green).sum(axis=-1) < 30).sum())

    terms = loss_curves({"HVC": validated}, tmp_path / "validated.png")
    assert "val/J&F-Mean" in terms["HVC"]
    loss_curves({"HVC": plain}, tmp_path / "plain.png")
    assert green_pixels(tmp_path / "validated.png") > 200 and green_pixels(tmp_path / "plain.png") == 0


def test_loss_curves_refuse_missing_or_termless_metrics(tmp_path):
    with pytest.raises(VcorrError, match=r"absent\.csv: missing \(metrics.csv of training stage 'a'\)"):
        loss_curves({"a": tmp_path / "absent.csv"}, tmp_path / "out.png")
    steps_only = write_csv(tmp_path / "steps.csv", ["epoch", "step"], [{"epoch": 0, "step": 1}])
    with pytest.raises(VcorrError, match="no numeric column besides step/epoch"):
        loss_curves({"a": steps_only}, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()


def test_overlay_changes_exactly_the_labelled_pixels():
    frame = np.full((4, 5, 3), 200, np.uint8)
    frame[0, 0] = (128, 0, 0)  # the colour of id 1: blending would leave it unchanged
    ids = np.zeros((4, 5), np.uint8)
    ids[0, 0] = ids[1, 1:3] = 1
    ids[3, 4] = 7
    changed = (overlay(frame, ids) != frame).any(axis=-1)
    np.testing.assert_array_equal(changed, ids > 0)


def test_overlay_outlines_objects_in_their_colour_and_tints_the_inside():
    frame = np.full((7, 7, 3), 200, np.uint8)
    ids = np.zeros((7, 7), np.uint8)
    ids[1:6, 1:6] = 2  # the DAVIS colour of id 2 is (0, 128, 0)
    shown = overlay(frame, ids, alpha=0.5)
    np.testing.assert_array_equal(shown[1, 1:6], [[0, 128, 0]] * 5)  # the outline
    np.testing.assert_array_equal(shown[2:5, 2:5], np.full((3, 3, 3), (100, 164, 100)))  # half frame, half colour
    np.testing.assert_array_equal(shown[0], frame[0])


def test_overlay_frames_show_truth_and_prediction_where_they_are(sequence):
    shown = overlay_frames(sequence["frames"], sequence["truth"], sequence["pred"], frames=3)
    assert [item.stem for item in shown] == ["00000", "00002", "00005"]
    for item in shown:
        raw = np.array(Image.open(sequence["frames"] / f"{item.stem}.jpg").convert("RGB"))
        truth = read_labels(sequence["truth"] / f"{item.stem}.png")
        predicted = read_labels(sequence["pred"] / f"{item.stem}.png")
        np.testing.assert_array_equal((item.truth != raw).any(axis=-1), truth > 0)
        np.testing.assert_array_equal((item.prediction != raw).any(axis=-1), predicted > 0)
        differs = (item.truth != item.prediction).any(axis=-1)
        wrong = truth != predicted
        assert wrong[WRONG].all() and differs[wrong].all()
        # Elsewhere only an outline may move, and only next to where the labels differ.
        assert not differs[~ndimage.binary_dilation(wrong)].any()


def test_overlay_strip_png_places_truth_above_prediction(sequence, tmp_path):
    out = tmp_path / "strip.png"
    names = overlay_strip(sequence["frames"], sequence["truth"], sequence["pred"], out, frames=["00001", "00004"])
    assert names == ["00001", "00004"]
    strip = np.array(assert_png(out).convert("RGB"))
    assert strip.shape == (2 * (STRIP_CAPTION_PX + HEIGHT) + STRIP_GAP_PX, 2 * WIDTH + STRIP_GAP_PX, 3)
    tiles = overlay_frames(sequence["frames"], sequence["truth"], sequence["pred"], frames=names)
    for column, item in enumerate(tiles):
        left = column * (WIDTH + STRIP_GAP_PX)
        for row, tile in enumerate((item.truth, item.prediction)):
            top = row * (STRIP_CAPTION_PX + HEIGHT + STRIP_GAP_PX) + STRIP_CAPTION_PX
            np.testing.assert_array_equal(strip[top:top + HEIGHT, left:left + WIDTH], tile)


def test_overlay_gif_has_a_frame_per_chosen_frame(sequence, tmp_path):
    out = tmp_path / "bear.gif"
    assert overlay_strip(sequence["frames"], sequence["truth"], sequence["pred"], out, frames=4, frame_ms=250) \
        == ["00000", "00002", "00003", "00005"]
    with Image.open(out) as gif:
        assert gif.format == "GIF" and gif.is_animated and gif.n_frames == 4
        assert gif.size == (2 * WIDTH + STRIP_GAP_PX, STRIP_CAPTION_PX + HEIGHT)
        assert gif.info["duration"] == 250
        pictures = []
        for index in range(gif.n_frames):
            gif.seek(index)
            pictures.append(np.array(gif.convert("RGB")))
    assert not np.array_equal(pictures[0], pictures[1])


def test_overlay_scales_tall_frames_and_refuses_mismatched_labels(sequence, tmp_path):
    small = overlay_frames(sequence["frames"], sequence["truth"], sequence["pred"], frames=1, height=20)
    assert small[0].truth.shape == (20, 28, 3)
    write_index_png(sequence["pred"] / "00003.png", np.zeros((HEIGHT // 2, WIDTH), np.uint8))
    with pytest.raises(VcorrError, match=r"00003\.png: 56x20 labels for a 56x40 frame"):
        overlay_strip(sequence["frames"], sequence["truth"], sequence["pred"], tmp_path / "x.png", frames=["00003"])
    with pytest.raises(VcorrError, match="no ground truth and prediction|no frame, ground truth and prediction for 00099"):
        overlay_frames(sequence["frames"], sequence["truth"], sequence["pred"], frames=["00099"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VcorrError, match="no frame has both a ground truth"):
        overlay_frames(sequence["frames"], sequence["truth"], empty)
    assert not (tmp_path / "x.png").exists()


def test_sequence_folders_come_from_the_benchmark_layout(sequence):
    assert sequence_folders("davis17", sequence["root"], "bear") == (sequence["frames"], sequence["truth"])
    with pytest.raises(VcorrError, match="no sequence 'cat' in davis17"):
        sequence_folders("davis17", sequence["root"], "cat")


@pytest.fixture
def report_inputs(sequence, tmp_path) -> dict:
    figures = tmp_path / "figures"
    summary = summary_csv(tmp_path / "summary.csv")
    cross = cross_protocol_csv(tmp_path / "cross_protocol.csv")
    score_chart(summary, figures / "scores.png")
    score_chart(cross, figures / "protocols.png")
    loss_curves({"stage1": metrics_csv(tmp_path / "m1.csv", ["loss"]),
                 "stage2": metrics_csv(tmp_path / "m2.csv", ["loss", "loss_temporal"])}, figures / "losses.png")
    overlay_strip(sequence["frames"], sequence["truth"], sequence["pred"], figures / "bear.png", frames=3)
    overlay_strip(sequence["frames"], sequence["truth"], sequence["pred"], figures / "bear.gif", frames=3)
    return {
        "tables": {"Scores": summary, "Across propagation protocols": cross},
        "images": {"Scores per method": [figures / "scores.png", figures / "protocols.png"],
                   "Training loss": figures / "losses.png",
                   "Mask overlays": [figures / "bear.png", figures / "bear.gif"]},
    }


def test_report_page_holds_tables_and_embedded_images(report_inputs, tmp_path):
    out = tmp_path / "report" / "index.html"
    write_report_page(out, **report_inputs, title="tiny report")
    page = out.read_text()
    assert page.count("<table") == 2
    assert [heading for heading in re.findall(r"<h2>(.*?)</h2>", page)] == [
        "Scores", "Across propagation protocols", "Scores per method", "Training loss", "Mask overlays"]
    assert re.search(r"<tr><td>davis17</td><td>hvc</td><td>scored</td><td[^>]*>66\.25</td>", page)
    assert "<td>awaiting server evaluation</td>" in page and "https://example.org/upload" in page
    assert page.count("<tr>") == 1 + 6 + 1 + 7  # header and rows of both tables
    sources = re.findall(r'<img src="data:(image/\w+);base64,([^"]+)" alt="([^"]+)"', page)
    assert [(mime, name) for mime, _, name in sources] == [
        ("image/png", "scores.png"), ("image/png", "protocols.png"), ("image/png", "losses.png"),
        ("image/png", "bear.png"), ("image/gif", "bear.gif")]
    assert base64.b64decode(sources[-1][1]) == (tmp_path / "figures" / "bear.gif").read_bytes()


def test_report_page_says_what_a_newcomer_needs_to_read_it_right(report_inputs, tmp_path):
    out = tmp_path / "page.html"
    chart = report_inputs["images"]["Scores per method"][0]
    write_report_page(out, **report_inputs, notes=["Synthetic data: these are not DAVIS."],
                      captions={chart: "Headline scores, in %, per method."})
    page = out.read_text()
    # The notice comes before any score.
    assert page.index('<p class="notice">Synthetic data: these are not DAVIS.</p>') < page.index("<table")
    tables = re.findall(r'<div class="table-box">\n(<table.*?</table>)\n</div>\n<ul class="legend">(.*?)</ul>', page, re.S)
    assert len(tables) == 2  # each table in its sideways-scrolling box, with its legend
    assert ".table-box { max-width: 100%; overflow-x: auto;" in page
    summary_header = re.findall(r"<th>(.*?)</th>", tables[0][0])
    # `note` is empty in every summary row: no column; `archive` holds the server rows' archives.
    assert "note" not in summary_header and "archive" in summary_header and "status" in summary_header
    assert all(row.count("<td") == len(summary_header) for row in re.findall(r"<tr><td.*?</tr>", tables[0][0]))
    assert "Every score is in %" in tables[0][1] and "<code>archive</code>" in tables[0][1]
    assert "<code>settings</code>: whose propagation settings" in tables[1][1]
    assert "<code>settings</code>" not in tables[0][1]  # explained where the column is
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert captions[0] == "Headline scores, in %, per method." and captions[1] == "protocols.png"


def test_captions_say_what_is_shown_from_the_registries():
    benchmarks = {"demo_davis": {"dataset": "demo"}, "demo_vip": {"dataset": "demo"}, "davis17": {"dataset": "davis17"}}
    datasets = {"demo": {"title": "Demo videos of synthetic motion", "built_by": "demo"}, "davis17": {"title": "DAVIS"}}
    (notice,) = synthetic_data_notice(["davis17", "demo_davis", "demo_vip"], benchmarks, datasets)
    assert notice.startswith("Synthetic data: demo_davis, demo_vip are not published benchmarks")
    assert "Demo videos of synthetic motion" in notice and "davis17," not in notice
    assert synthetic_data_notice(["davis17"], benchmarks, datasets) == []
    moco = training_caption("demo_moco", {"method": "moco", "description": "MoCo on demo images"},
                            {"queue_size": 64, "batch_size": 16})
    assert moco.startswith("Training of demo_moco (MoCo on demo images)") and "first 4 steps fill it" in moco
    assert "queue" not in training_caption("demo_hvc", {"method": "hvc"}, {"batch_size": 8})
    assert "demo_stt on demo_davis, sequence coffee-2" in overlay_caption("demo_davis", "demo_stt", "coffee-2")


def test_images_of_one_name_in_different_folders_get_different_captions(report_inputs, tmp_path):
    overlay = report_inputs["images"]["Mask overlays"][0]
    group = []
    for method in ("stt", "pixels"):
        path = tmp_path / "overlays" / "davis" / method / "coffee.png"
        path.parent.mkdir(parents=True)
        path.write_bytes(overlay.read_bytes())
        group.append(path)
    out = tmp_path / "page.html"
    write_report_page(out, images={"Overlays": group})
    assert re.findall(r"<figcaption>(.*?)</figcaption>", out.read_text()) == ["stt/coffee.png", "pixels/coffee.png"]


def test_report_page_refuses_missing_inputs_and_writes_nothing(report_inputs, tmp_path):
    out = tmp_path / "index.html"
    with pytest.raises(VcorrError, match=r"absent\.png: missing \(image for the report page\)"):
        write_report_page(out, tables=report_inputs["tables"], images={"Charts": tmp_path / "absent.png"})
    with pytest.raises(VcorrError, match="nothing to put on the report page"):
        write_report_page(out)
    assert not out.exists()


def test_cli_figures_and_page(sequence, tmp_path, capsys):
    summary = summary_csv(tmp_path / "summary.csv")
    m1 = metrics_csv(tmp_path / "m1.csv", ["loss"])
    assert main(["report", "figures", "scores", str(summary), "--out", str(tmp_path / "s.png")]) == 0
    assert main(["report", "figures", "losses", f"stage1={m1}", "--out", str(tmp_path / "l.png")]) == 0
    assert main(["report", "figures", "overlay", "--frames", str(sequence["frames"]), "--truth", str(sequence["truth"]),
                 "--pred", str(sequence["pred"]), "--frame", "00001", "--frame", "00003",
                 "--out", str(tmp_path / "o.gif")]) == 0
    assert Image.open(tmp_path / "o.gif").n_frames == 2
    assert main(["report", "figures", "overlay", "--benchmark", "davis17", "--root", str(sequence["root"]),
                 "--sequence", "bear", "--pred", str(sequence["pred"]), "--count", "3", "--out", str(tmp_path / "b.png")]) == 0
    printed = capsys.readouterr().out
    assert "b.png: 3 frames (00000, 00002, 00005)" in printed
    assert main(["report", "figures", "overlay", "--benchmark", "davis17", "--frames", str(sequence["frames"]),
                 "--pred", str(sequence["pred"]), "--out", str(tmp_path / "c.png")]) == 2
    assert "give either --frames and --truth, or --benchmark, --root and --sequence" in capsys.readouterr().err
    assert main(["report", "page", "--table", f"Scores={summary}", "--images", f"Charts={tmp_path / 's.png'},"
                 f"{tmp_path / 'l.png'}", "--images", f"Overlays={tmp_path / 'o.gif'}", "--out",
                 str(tmp_path / "page.html")]) == 0
    assert (tmp_path / "page.html").read_text().count("<img") == 3
    output = printed + capsys.readouterr().out
    assert "s.png: J&F-Mean (%), J-Mean (%), F-Mean (%), PCK@0.1 (%), PCK@0.2 (%)" in output and "o.gif: 2 frames (00001, 00003)" in output
    assert main(["report", "figures", "losses", str(m1), "--out", str(tmp_path / "bad.png")]) == 2
    assert "expected STAGE=metrics.csv" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()


def chromium_binary() -> str:
    """Debian's chromium (`.ci/run` installs it as root on Debian); the test skips without it."""
    found = shutil.which("chromium")
    if not found:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run does it as root)")
    return found


def headless(chromium: str, profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--virtual-time-budget=10000", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr[-3000:]}"
    return done


def test_report_page_renders_in_headless_chromium(report_inputs, tmp_path):
    chromium = chromium_binary()
    page = tmp_path / "site" / "report.html"
    write_report_page(page, **report_inputs, title="tiny report")
    dom = headless(chromium, tmp_path / "profile", "--dump-dom", page.as_uri()).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert body == '<body data-images-loaded="5/5">', dom[:2000]  # every image decoded, none broken
    assert dom.count("<table") == 2 and "<td>awaiting server evaluation</td>" in dom
    screenshot = tmp_path / "report.png"
    headless(chromium, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1280,3400", page.as_uri())
    shot = np.array(assert_png(screenshot).convert("RGB"))
    assert shot.shape == (3400, 1280, 3)
    # The score chart's first method is drawn in matplotlib's tab:blue, the overlays outline object 1
    # in DAVIS's (128, 0, 0): each is seen only if its image renders.
    assert (shot == (31, 119, 180)).all(axis=-1).sum() > 500, "the score chart is not visible in the screenshot"
    assert (shot == (128, 0, 0)).all(axis=-1).sum() > 100, "the mask overlays are not visible in the screenshot"
    if os.environ.get("VCORR_KEEP_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["VCORR_KEEP_SCREENSHOT"])
