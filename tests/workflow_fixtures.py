"""What the workflow tests share: `snakemake` as a user runs it, dry-run listings read back, a copy
of the checkout, and the tiny configuration's workspace (data served from 127.0.0.1 as the data
CLI's mirror, manual-only archives placed by hand).

The tiny configuration is run once per session (conftest.py `tiny_run`) in a copy of the
checkout, so that a test may edit the copy's code (and put it back) to see what reruns; tests
that change files or outputs work on a fork of that run (`fork_workspace`), never on it.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / ".test"
RUN_TIMEOUT_S = 600
# The trained models' results, asked for beside the tiny configuration's `all`.
TRAINED = ["results/davis17/tiny_hvc.json", "results/davis17/tiny_stt.json", "results/jhmdb/tiny_stt.json",
           "results/vip/tiny_stt.json"]
# The report's figures and page, asked for beside them (the tiny configuration's `all` has no page):
# Snakemake's report of the run holds them.
REPORTED = ["results/report.html", "results/report/training/tiny_moco.png", "results/report/training/tiny_hvc.png",
            "results/report/overlays/davis17/tiny_crw/blackswan.png"]


def snakemake(*args: str, cwd: Path, env: dict | None = None, timeout: float = RUN_TIMEOUT_S,
              checkout: Path = REPO) -> subprocess.CompletedProcess:
    """`snakemake ARGS` with the Snakefile and profiles/default of `checkout`, in the working
    directory `cwd`; stdout and stderr captured together."""
    command = [sys.executable, "-m", "snakemake", "-s", str(checkout / "workflow" / "Snakefile"),
               "--workflow-profile", str(checkout / "profiles" / "default"), *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=cwd, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


def planned_jobs(dry_run_output: str) -> Counter:
    """(rule, benchmark, method, part) of every job a `snakemake -n` lists, with multiplicity."""
    jobs, current = [], None
    for line in dry_run_output.splitlines():
        header = re.fullmatch(r"(?:local)?rule (\S+):", line.strip())
        if header:
            current = {"rule": header[1]}
            jobs.append(current)
        elif current is not None and line.strip().startswith("wildcards:"):
            for item in line.split(":", 1)[1].split(","):
                key, _, value = item.strip().partition("=")
                current[key] = value
    return Counter((job["rule"], job.get("benchmark"), job.get("method"), job.get("part")) for job in jobs)


def rule_counts(dry_run_output: str) -> Counter:
    counts = Counter()
    for (rule, *_wildcards), count in planned_jobs(dry_run_output).items():
        counts[rule] += count
    return counts


def registry(name: str, folder: Path = REPO / "config") -> dict:
    return yaml.safe_load((folder / f"{name}.yaml").read_text())


def files_below(folder: Path) -> dict[str, bytes]:
    """The files of a prediction folder by relative path, bookkeeping (dot files: the run record,
    Snakemake's marker) left out."""
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and not path.name.startswith(".")}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fresh_checkout(destination: Path) -> Path:
    """The checkout's tracked and unignored files, as a clone has them (no results, no resources),
    committed in a git repository of its own (a clone's provenance records its commit)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.split(b"\0")
    destination.mkdir(parents=True)
    for name in filter(None, (item.decode() for item in listed)):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
    identity = {"GIT_AUTHOR_NAME": "vcorr tests", "GIT_AUTHOR_EMAIL": "tests@localhost",
                "GIT_COMMITTER_NAME": "vcorr tests", "GIT_COMMITTER_EMAIL": "tests@localhost"}
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "a copy of the checkout"]):
        subprocess.run(["git", *command], cwd=destination, env={**os.environ, **identity}, check=True,
                       capture_output=True)
    return destination


def load_builder():
    """.test/build_data.py as a module (the tiny configuration's data and checkpoints)."""
    spec = importlib.util.spec_from_file_location("tiny_build_data", TINY / "build_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """`folder` over HTTP on 127.0.0.1 (an ephemeral port), in a daemon thread: (server, base URL)."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


@dataclass(frozen=True)
class TinyWorkspace:
    """A working directory for the tiny configuration: its own copy of the registries, and the
    checkout whose workflow and vcorr it runs."""

    root: Path
    registries: Path
    mirror_url: str
    checkout: Path = REPO

    def config_files(self, **overlay) -> list[str]:
        overlay_file = self.root / "overlay.yaml"
        overlay_file.write_text(yaml.safe_dump({"registries": str(self.registries), **overlay}))
        return ["--configfile", str(self.checkout / ".test/config/config.yaml"), str(overlay_file)]

    def run(self, *args: str, overlay: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
        # Options taking several values (--configfile, --forcerun) end where the next one starts.
        return snakemake(*args, *self.config_files(**(overlay or {})), cwd=self.root,
                         env={"VCORR_MIRROR": self.mirror_url}, checkout=self.checkout, **kwargs)


def make_tiny_workspace(root: Path, mirror: Path, mirror_url: str, checkout: Path = REPO) -> TinyWorkspace:
    """Registries copied (benchmarks.yaml resolved), manual-only archives placed by hand."""
    registries = root / "registries"
    shutil.copytree(checkout / ".test" / "config", registries, symlinks=False)
    (registries / "config.yaml").unlink()
    for dataset, entry in registry("datasets", registries).items():
        if entry.get("manual"):
            shutil.copytree(mirror / dataset, root / "resources" / "downloads" / dataset)
    return TinyWorkspace(root, registries, mirror_url, checkout)


def fork_workspace(workspace: TinyWorkspace, root: Path) -> TinyWorkspace:
    """A copy of a finished workspace (outputs, logs and Snakemake's records, times kept) that
    shares its registries and checkout: the same state, to be changed without touching the first."""
    shutil.copytree(workspace.root, root, ignore=shutil.ignore_patterns("locks", "registries"))
    return replace(workspace, root=root)
