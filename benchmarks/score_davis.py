#!/usr/bin/env python
"""Wall time and peak memory of `vcorr score davis` on ../shared/testdata/davis-osvos.

Every case (results/<case>) is scored in a fresh `vcorr` process, as a user runs it, and checked
against the official tool's answer stored beside it. The results folders are not written to: each
is scored through a temporary folder of links to its sequences (the scorer writes its CSVs there).

Memory: the peak of the whole process tree (the command and its workers), sampled from /proc every
10 ms, and the largest single process (getrusage RUSAGE_CHILDREN, exact).

    python benchmarks/score_davis.py [--testdata ../shared/testdata/davis-osvos] [--jobs N] [--repeat 3]
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
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _tree_rss_bytes(root_pid: int) -> int:
    """Summed resident memory of `root_pid` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, parent = int(entry), int(fields[1])
        children.setdefault(parent, []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_case(command: list[str]) -> tuple[float, int, float]:
    """Wall seconds, sampled peak tree RSS (bytes) and CPU seconds (all processes) of one command."""
    cpu_before = _children_cpu_seconds()
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, done = 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss_bytes(process.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    returncode = process.wait()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if returncode != 0:
        sys.exit(f"command failed ({returncode}): {shlex.join(command)}")
    return seconds, peak, _children_cpu_seconds() - cpu_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testdata", type=Path, default=REPO_ROOT.parent / "shared" / "testdata" / "davis-osvos")
    parser.add_argument("--jobs", type=int, default=None, help="passed to vcorr score davis (default: its own)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best wall time is reported")
    args = parser.parse_args()
    if not args.testdata.is_dir():
        sys.exit(f"{args.testdata}: test data not found")

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (timings under load are indicative)")
    for case_dir in sorted((args.testdata / "results").iterdir()):
        official = json.loads((args.testdata / "official" / f"{case_dir.name}.json").read_text())
        with tempfile.TemporaryDirectory() as temporary:
            results = Path(temporary) / "results"
            results.mkdir()
            for sequence in case_dir.iterdir():
                (results / sequence.name).symlink_to(sequence.resolve())
            out = Path(temporary) / "scores.json"
            command = [sys.executable, "-m", "vcorr", "score", "davis", "--davis-root", str(args.testdata),
                       "--results", str(results), "--out", str(out)]
            if args.jobs:
                command += ["--jobs", str(args.jobs)]
            runs = [run_case(command) for _ in range(args.repeat)]
            scores = json.loads(out.read_text())
        deviation = max(
            [abs(scores["global"][key] - value) for key, value in official["global"].items()]
            + [abs(scores["per_object"][name][key] - value)
               for name, measures in official["per_object"].items() for key, value in measures.items()]
        )
        frames = sum(len(sequence["frames"]) + 2 for sequence in scores["per_frame"].values())
        print(f"case {case_dir.name}: {frames} annotation frames, {len(scores['per_object'])} objects")
        print(f"  wall: best {min(r[0] for r in runs):.2f} s of {[round(r[0], 2) for r in runs]}"
              f" (official tool: {official.get('official_seconds', float('nan')):.1f} s on one core)")
        print(f"  CPU time (user + sys, all processes): best {min(r[2] for r in runs):.2f} s")
        print(f"  peak RSS, process tree (sampled): {max(r[1] for r in runs) / 2**20:.0f} MiB")
        print(f"  max |vcorr - official| over global and per-object values: {deviation:.3g}")
        print(f"  command: {shlex.join(command)}")
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS of the largest single process: {largest:.0f} MiB")


if __name__ == "__main__":
    main()
