#!/usr/bin/env python
"""`vcorr score davis` against the official davis2017-evaluation, timed side by side in one run.

Cases, all over the DAVIS-2017 val masks of ../shared/testdata/davis-osvos (1,999 frames, 61
objects): `noise` (the worst case for the F measure: the masks with a quarter of their pixels
replaced by random object ids, so every object of every frame has boundary pixels everywhere;
written into a temporary folder, deterministic from --seed) and the stored perturbed results
(`shift`, `morph`). Every command runs in a fresh process, as a user runs it; the results folders
are read through temporary folders of links (both tools write their CSVs there).

With --official PATH (a checkout of davisvideochallenge/davis2017-evaluation; it needs numpy,
scipy, scikit-image, opencv, pandas and pillow) the official tool scores every case in the same
run: this script runs itself with --run-official, which does what the official
`evaluation_method.py` does (DAVISEvaluation(..., 'semi-supervised', 'val').evaluate and the
global means) but writes every value at full precision, so the two are compared exactly, and
passes codalab=True because the fixture has no JPEGImages (the tool only lists them).
Without it, the stored official answers of shift and morph are the reference.

CPU time (user, system) counts every process of a command, its workers included: this script
adopts orphaned descendants (PR_SET_CHILD_SUBREAPER) and reaps them. Memory: the peak of the
whole process tree (the command and its workers), sampled from /proc every 20 ms.

    python benchmarks/score_davis.py [--official /tmp/davis2017-evaluation] [--jobs N] [--repeat 3]
        [--cases noise shift morph] [--testdata ../shared/testdata/davis-osvos] [--seed 0]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
NOISE_FRACTION = 0.25
PR_SET_CHILD_SUBREAPER = 36
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Run:
    wall: float
    user: float
    system: float
    peak_rss: int


def _tree_rss_bytes(root_pid: int) -> int:
    """Summed resident memory of `root_pid` and all its descendants, from /proc.

    Follows each thread's `children` list rather than scanning every process of the machine: the
    sampler runs beside the command it measures and must cost next to nothing.
    """
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * _PAGE_SIZE
            for thread in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{thread}/children") as handle:
                    stack.extend(int(child) for child in handle.read().split())
        except (OSError, ValueError):  # the process ended meanwhile
            continue
    return total


def _reap_orphans() -> None:
    """Wait for descendants that outlived the command (a forkserver and its workers)."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def run_command(command: list[str]) -> Run:
    """Wall seconds (until the command exits), CPU seconds of all its processes, sampled peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_bytes(process.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, errors = process.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    _reap_orphans()
    if process.returncode != 0:
        sys.exit(f"command failed ({process.returncode}): {shlex.join(command)}\n{errors.decode()[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Run(wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, peak)


def _sequences(davis_root: Path) -> list[str]:
    return (davis_root / "ImageSets" / "2017" / "val.txt").read_text().split()


def write_noise_results(davis_root: Path, destination: Path, seed: int) -> None:
    """Every annotation with NOISE_FRACTION of its pixels set to random ids 0..n (n: the objects)."""
    sys.path.insert(0, str(REPO_ROOT))
    from vcorr.io import read_index_png, write_index_png

    rng = np.random.default_rng(seed)
    for name in _sequences(davis_root):
        annotations = sorted((davis_root / "Annotations" / "480p" / name).glob("*.png"))
        first = read_index_png(annotations[0])
        n_objects = int(first[first != 255].max())
        for path in annotations:
            ids = read_index_png(path)
            ids[ids == 255] = 0
            noisy = rng.random(ids.shape) < NOISE_FRACTION
            ids[noisy] = rng.integers(0, n_objects + 1, size=int(noisy.sum()), dtype=np.uint8)
            write_index_png(destination / name / path.name, ids)


def linked_results(case_dir: Path, destination: Path) -> Path:
    destination.mkdir()
    for sequence in case_dir.iterdir():
        (destination / sequence.name).symlink_to(sequence.resolve())
    return destination


def run_official(official: Path, davis_root: Path, results: Path, out: Path) -> None:
    """The official tool's numbers at full precision, computed as its evaluation_method.py does."""
    sys.path.insert(0, str(official))
    from davis2017.evaluation import DAVISEvaluation

    metrics = DAVISEvaluation(str(davis_root), "semi-supervised", "val", codalab=True).evaluate(str(results))
    j, f = metrics["J"], metrics["F"]
    measures = {
        "J-Mean": np.mean(j["M"]), "J-Recall": np.mean(j["R"]), "J-Decay": np.mean(j["D"]),
        "F-Mean": np.mean(f["M"]), "F-Recall": np.mean(f["R"]), "F-Decay": np.mean(f["D"]),
    }  # fmt: skip
    scores = {
        "global": {"J&F-Mean": float((np.mean(j["M"]) + np.mean(f["M"])) / 2.0),
                   **{key: float(value) for key, value in measures.items()}},
        "per_object": {name: {"J-Mean": float(j["M_per_object"][name]), "F-Mean": float(f["M_per_object"][name])}
                       for name in j["M_per_object"]},
    }  # fmt: skip
    out.write_text(json.dumps(scores))


def largest_difference(ours: dict, reference: dict) -> float:
    """Max |vcorr - reference| over the global values and the per-object J-Mean and F-Mean."""
    if list(ours["per_object"]) != list(reference["per_object"]):
        return float("inf")
    return max(
        [abs(ours["global"][key] - value) for key, value in reference["global"].items()]
        + [abs(ours["per_object"][name][key] - value)
           for name, measures in reference["per_object"].items() for key, value in measures.items()]
    )  # fmt: skip


def describe(label: str, runs: list[Run]) -> Run:
    best = min(runs, key=lambda run: run.wall)
    walls = ", ".join(f"{run.wall:.2f}" for run in runs)
    print(f"  {label}: wall {best.wall:.2f} s (best of [{walls}]), user {best.user:.2f} s, "
          f"system {best.system:.2f} s ({100 * best.system / best.wall:.0f}% of wall), "
          f"peak RSS {max(run.peak_rss for run in runs) / 2**20:.0f} MiB")
    return best


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown CPU")
    return f"{model}, {len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testdata", type=Path, default=REPO_ROOT.parent / "shared" / "testdata" / "davis-osvos")
    parser.add_argument("--official", type=Path, help="checkout of davis2017-evaluation, timed in the same run")
    parser.add_argument("--jobs", type=int, default=None, help="passed to vcorr score davis (default: its own)")
    parser.add_argument("--repeat", type=int, default=3, help="vcorr runs per case; the best wall time is reported")
    parser.add_argument("--cases", nargs="+", default=["noise", "shift", "morph"])
    parser.add_argument("--seed", type=int, default=0, help="of the noise case")
    parser.add_argument("--run-official", nargs=3, type=Path, metavar=("ROOT", "RESULTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_official:
        run_official(args.official, *args.run_official)
        return
    if not args.testdata.is_dir():
        sys.exit(f"{args.testdata}: test data not found")
    if args.official and not (args.official / "davis2017" / "evaluation.py").is_file():
        sys.exit(f"{args.official}: not a davis2017-evaluation checkout")
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {machine()}")
    for case in args.cases:
        with tempfile.TemporaryDirectory() as temporary:
            temporary = Path(temporary)
            reference_file = args.testdata / "official" / f"{case}.json"
            if case == "noise":
                write_noise_results(args.testdata, temporary / "noise", args.seed)
                results = temporary / "noise"
            else:
                results = linked_results(args.testdata / "results" / case, temporary / case)
            ours_file = temporary / "scores.json"
            command = [sys.executable, "-m", "vcorr", "score", "davis", "--davis-root", str(args.testdata),
                       "--results", str(results), "--out", str(ours_file)]
            if args.jobs:
                command += ["--jobs", str(args.jobs)]
            print(f"case {case}:")
            print(f"  vcorr command: {shlex.join(command)}")
            best = describe("vcorr", [run_command(command) for _ in range(args.repeat)])
            ours = json.loads(ours_file.read_text())
            if args.official:
                official_file = temporary / "official.json"
                official_command = [sys.executable, str(Path(__file__).resolve()), "--official", str(args.official),
                                    "--run-official", str(args.testdata), str(results), str(official_file)]
                print(f"  official command: {shlex.join(official_command)}")
                official = describe("official", [run_command(official_command)])
                print(f"  official / vcorr wall time: {official.wall / best.wall:.1f}x")
                reference, source = json.loads(official_file.read_text()), "the official tool in this run"
            elif reference_file.is_file():
                reference, source = json.loads(reference_file.read_text()), f"{reference_file.name} (stored)"
            else:
                print("  no reference scores (pass --official)")
                continue
            difference = largest_difference(ours, reference)
            verdict = "identical" if difference == 0 else f"DIFFER by up to {difference:.3g}"
            print(f"  scores vs {source}: {verdict} (global and per-object J-Mean, F-Mean; "
                  f"vcorr J&F-Mean {ours['global']['J&F-Mean']:.6f})")


if __name__ == "__main__":
    main()
