"""Learning curves of the demo's training methods: the validation score against the step, from the
untrained initialisation (step 0), mean and spread over seeds.

    python benchmarks/learning_curve.py [--methods moco hvc stt] [--seeds 0 1 2]
        [--steps 200 | --steps moco=200 hvc=64 ...] [--eval-every 20 | --eval-every hvc=8 ...]
        [--control] [--jobs 2] [--work /tmp/vcorr-learning-curve] [--png curve.png]
        [--set METHOD:KEY=VALUE ...]

Each method is trained as the demo trains it (config/models.yaml `demo_<method>`: its config file
and `set`, config/demo/config.yaml `training.set`), for `--steps` steps instead of the demo's
budget, once per seed (`seed` overridden), with vcorr's validation (`vcorr train --set
eval_every=...`) on the demo's held-out split `demo_davis_train`, through the method that
evaluates the demo model (methods.yaml `demo_<method>`: its own protocol). Spa-then-Temp starts,
as in the demo, from the demo's stage one (`demo_moco` at its demo budget) of the same seed. The
raw-pixel baseline (`demo_pixels`) is scored on the same split once; `--set` changes a method's
config. `--control` adds, per method, a run of the first seed with learning rate 0: no weight
moves, only the BatchNorm running statistics follow the training crops, so the gap between it and
the curve is what the gradient steps learned.

The data are built into `--work` as the workflow builds them (`vcorr data extract` / `index`); every
run is a `vcorr train` process in `--work/runs/<method>-seed<s>/` (`--jobs` at a time, one thread
each), resumed when the script is rerun. Prints one table per method (J&F per validated step:
mean, standard deviation, min and max over seeds; the demo's budget marked) and the step from which
the mean stays above the initialisation and above raw pixels; plots every method to `--png`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from vcorr.config import load_yaml_text  # noqa: E402

VALIDATION = "demo_davis_train"
METRIC = "J&F-Mean"
METHODS = ("moco", "hvc", "stt")


def registry(name: str) -> dict:
    return load_yaml_text((REPO_ROOT / "config" / f"{name}.yaml").read_text())


def run(command: list[str], cwd: Path, log: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "a") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        done = subprocess.run(command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, env=environment)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(command)}; see {log}")


def vcorr(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "vcorr", *arguments]


def prepare_data(work: Path) -> None:
    """The demo set, its training images and clips, and their indexes, as the workflow makes them."""
    for dataset in ("demo", "demo_images", "demo_clips"):
        if not (work / "resources" / "data" / dataset).is_dir():
            run(vcorr("data", "extract", dataset), work, work / "data.log")
        if dataset != "demo" and not (work / "resources" / "index" / f"{dataset}.csv").is_file():
            run(vcorr("data", "index", dataset), work, work / "data.log")


def sets(values: dict) -> list[str]:
    return [item for key, value in values.items() for item in ("--set", f"{key}={json.dumps(value)}")]


def train_command(method: str, seed: int, steps: int, eval_every: int | None, out: Path, workdir: Path,
                  extra: dict) -> list[str]:
    """`vcorr train` for the demo model of `method`, with the demo's settings and these changes."""
    model = registry("models")[f"demo_{method}"]
    demo = load_yaml_text((REPO_ROOT / "config" / "demo" / "config.yaml").read_text())
    values = {**(model.get("set") or {}), **demo["training"]["set"], "seed": seed, "max_steps": steps}
    for key, source in (model.get("weights") or {}).items():  # the stage one of this seed
        values[key] = str(out.parent / f"moco-seed{seed}-demo.pth")
    if eval_every:
        values.update(eval_every=eval_every, eval_benchmark=VALIDATION, eval_method=f"demo_{method}",
                      eval_data_root="resources/data/demo/DAVIS")
    else:
        values["eval_every"] = 0
    values.update(extra)
    dataset = model["data"]["dataset"]
    return vcorr("train", "--method", model["method"], "--config", str(REPO_ROOT / model["config"]),
                 "--data", f"resources/index/{dataset}.csv", "--workdir", str(workdir), "--out", str(out),
                 "--device", "cpu", *sets(values))


def demo_budget(method: str) -> int:
    return int(registry("models")[f"demo_{method}"]["set"]["max_steps"])


_STAGE_ONE_LOCK = threading.Lock()


def train_one(work: Path, method: str, seed: int, steps: int, eval_every: int, extra: dict, tag: str = "") -> Path:
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    if registry("models")[f"demo_{method}"].get("weights"):
        stage_one = runs / f"moco-seed{seed}-demo.pth"
        with _STAGE_ONE_LOCK:  # one stage one per seed, shared by the runs that start from it
            if not stage_one.is_file():
                run(train_command("moco", seed, demo_budget("moco"), None, stage_one, runs / f"moco-seed{seed}-demo",
                                  {}), work, runs / f"moco-seed{seed}-demo.log")
    name = f"{method}{tag}-seed{seed}"
    out = runs / f"{name}.pth"
    if not out.is_file():
        run(train_command(method, seed, steps, eval_every, out, runs / name, extra), work, runs / f"{name}.log")
    return runs / name / "metrics.csv"


def history(metrics: Path) -> dict[int, float]:
    with open(metrics, newline="") as handle:
        return {int(row["step"]): float(row[f"val/{METRIC}"]) for row in csv.DictReader(handle) if row.get(f"val/{METRIC}")}


def pixel_baseline(work: Path) -> float:
    """demo_pixels (its own protocol) on the validation split: the line to cross."""
    from vcorr.data.benchmarks import benchmark
    from vcorr.evaluation.pipeline import propagate_benchmark
    from vcorr.evaluation.scoring import score_davis

    entry = benchmark(VALIDATION)
    root = work / "resources" / "data" / "demo" / "DAVIS"
    out = work / "pixels"
    propagate_benchmark(VALIDATION, root, "demo_pixels", out / "predictions", device="cpu", force=True)
    return score_davis(root, out / "predictions", out / "scores.json", entry.subset, entry.year, jobs=1,
                       csv_dir=out, verbose=False)[METRIC]


def summarise(curves: dict[int, dict[int, float]]) -> list[tuple[int, float, float, float, float]]:
    """(step, mean, std, min, max) over seeds at every step all seeds validated."""
    steps = sorted(set.intersection(*(set(curve) for curve in curves.values())))
    rows = []
    for step in steps:
        values = [curve[step] for curve in curves.values()]
        rows.append((step, statistics.fmean(values), statistics.pstdev(values), min(values), max(values)))
    return rows


def crossing(rows, level: float) -> int | None:
    """The first step from which the mean stays above `level`, or None."""
    for index, row in enumerate(rows):
        if all(later[1] > level for later in rows[index:]):
            return row[0]
    return None


def plot(results: dict[str, list], controls: dict[str, dict[int, float]], pixels: float, budgets: dict[str, int],
         png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), squeeze=False)
    for axis, (method, rows) in zip(axes[0], results.items()):
        steps = [row[0] for row in rows]
        mean = [row[1] for row in rows]
        axis.fill_between(steps, [row[3] for row in rows], [row[4] for row in rows], alpha=0.25, label="min-max over seeds")
        axis.plot(steps, mean, marker="o", markersize=3, label="mean over seeds")
        if method in controls:
            control = sorted(controls[method].items())
            axis.plot([step for step, _ in control], [value for _, value in control], color="tab:purple",
                      linestyle="--", linewidth=1, label="learning rate 0 (BatchNorm statistics only)")
        axis.axhline(rows[0][1], color="tab:gray", linestyle=":", label="initialisation (step 0)")
        axis.axhline(pixels, color="tab:red", linestyle="--", label="raw pixels (demo_pixels)")
        axis.axvline(budgets[method], color="tab:green", linestyle="-.", label="the demo's budget")
        axis.set_title(f"demo_{method} on {VALIDATION}")
        axis.set_xlabel("training step")
        axis.set_ylabel(METRIC)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(png, dpi=100)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", nargs="+", default=["200"], metavar="N|METHOD=N",
                        help="training steps per run, for all methods or per method (default 200)")
    parser.add_argument("--eval-every", nargs="+", default=["20"], metavar="N|METHOD=N",
                        help="validation cadence in steps, for all methods or per method (default 20)")
    parser.add_argument("--control", action="store_true", help="also a learning-rate-0 run per method (first seed)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one thread each (default 2)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vcorr-learning-curve"))
    parser.add_argument("--png", type=Path, help="plot (default <work>/learning_curve.png)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="METHOD:KEY=VALUE")
    args = parser.parse_args(argv)

    def per_method(values: list[str], what: str) -> dict[str, int]:
        found = {method: int(values[0]) for method in args.methods} if values[0].isdigit() else {}
        for value in values if not found else values[1:]:
            method, _, number = value.partition("=")
            if method not in args.methods or not number.isdigit():
                parser.error(f"{what} {value!r}: expected N or METHOD=N for METHOD in {', '.join(args.methods)}")
            found[method] = int(number)
        missing = sorted(set(args.methods) - set(found))
        if missing:
            parser.error(f"{what}: no value for {', '.join(missing)}")
        return found

    steps, eval_every = per_method(args.steps, "--steps"), per_method(args.eval_every, "--eval-every")
    extra: dict[str, dict] = {method: {} for method in args.methods}
    for item in args.overrides:
        method, _, assignment = item.partition(":")
        key, _, value = assignment.partition("=")
        if method not in extra or not key:
            parser.error(f"--set {item!r}: expected METHOD:KEY=VALUE with METHOD one of {', '.join(args.methods)}")
        extra[method][key] = load_yaml_text(value)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prepare_data(work)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {(method, seed): pool.submit(train_one, work, method, seed, steps[method], eval_every[method],
                                               extra[method])
                   for method in args.methods for seed in args.seeds}
        if args.control:
            futures.update({(method, "lr0"): pool.submit(train_one, work, method, args.seeds[0], steps[method],
                                                         eval_every[method], {**extra[method], "lr": 0}, "-lr0")
                            for method in args.methods})
        metrics = {key: future.result() for key, future in futures.items()}
    pixels = pixel_baseline(work)
    budgets = {method: demo_budget(method) for method in args.methods}
    results, controls = {}, {}
    print(f"\n{METRIC} on {VALIDATION} (validation, each method's own protocol) over seeds {args.seeds}; "
          f"raw pixels: {pixels:.3f}")
    for method in args.methods:
        rows = summarise({seed: history(metrics[method, seed]) for seed in args.seeds})
        results[method] = rows
        changes = f" (with {', '.join(f'{k}={v}' for k, v in extra[method].items())})" if extra[method] else ""
        print(f"\ndemo_{method}{changes}: step  mean   std    min    max")
        for step, mean, std, low, high in rows:
            mark = "  <- the demo's budget" if step == budgets[method] else ""
            print(f"  {step:>{len('demo_' + method) + 5}}  {mean:.3f}  {std:.3f}  {low:.3f}  {high:.3f}{mark}")
        above_init, above_pixels = crossing(rows, rows[0][1]), crossing(rows, pixels)
        print(f"  mean above its initialisation ({rows[0][1]:.3f}) from step {above_init}, above raw pixels "
              f"from step {above_pixels} (None: not within {steps[method]} steps)")
        if args.control:
            control = history(metrics[method, "lr0"])
            controls[method] = control
            print(f"  learning rate 0 (seed {args.seeds[0]}; BatchNorm statistics only): "
                  + ", ".join(f"{step}: {value:.3f}" for step, value in sorted(control.items())))
    png = args.png or work / "learning_curve.png"
    plot(results, controls, pixels, budgets, png)
    minutes = (time.perf_counter() - started) / 60
    print(f"\n{len(futures)} runs in {minutes:.1f} min; plot {png}")
    print(f"command: python benchmarks/learning_curve.py {shlex.join(sys.argv[1:] if argv is None else argv)}")
    return 0 if all(math.isfinite(row[1]) for rows in results.values() for row in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
