"""How long `snakemake -n all` takes to build the whole evaluation DAG (every method x benchmark).

    python benchmarks/workflow_dag.py [--repeats 5]

Runs the dry run on the project's registries in an empty working directory (a fresh clone: no
data, so every job from download to summary is planned) and prints the median wall-clock time
of the whole command (interpreter start, Snakefile parsing, config validation, DAG), the number
of jobs, and the command that reproduces one measurement. The target is under 3 s. For scale it
also times the same dry run of a one-rule workflow: Snakemake's own start-up, which no
workflow can go below.
"""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def median_seconds(command: list[str], cwd: str, repeats: int) -> tuple[float, str]:
    seconds, output = [], ""
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        if done.returncode != 0:
            sys.exit(f"dry run failed: {shlex.join(command)}\n{done.stdout}{done.stderr}")
        output = done.stdout
    return statistics.median(seconds), output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vcorr-dag-") as workdir:
        command = [
            sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow/Snakefile"),
            "--configfile", str(REPO / "config/config.yaml"), "--dry-run", "--quiet", "rules", "all",
        ]
        seconds, output = median_seconds(command, workdir, args.repeats)
        trivial = Path(workdir) / "Trivial.smk"
        trivial.write_text('rule all:\n    output: "x"\n    shell: "touch {output}"\n')
        baseline, _ = median_seconds(
            [sys.executable, "-m", "snakemake", "-s", str(trivial), "--dry-run", "--quiet", "rules"], workdir, args.repeats)
    total = re.search(r"^total\s+(\d+)", output, re.MULTILINE)
    print(f"snakemake -n all: median {seconds:.2f} s over {args.repeats} runs, {total[1] if total else '?'} jobs "
          f"planned (target < 3 s); a one-rule workflow's dry run takes {baseline:.2f} s on this machine, "
          f"so the evaluation DAG itself costs {seconds - baseline:.2f} s")
    print(f"reproduce one run: cd $(mktemp -d) && time {shlex.join(command)}")


if __name__ == "__main__":
    main()
