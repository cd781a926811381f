"""The rounding scale of vcorr's propagation, which sets `vcorr.propagation.fidelity.Tolerance`.

Runs `vcorr propagate` on the e2e fixtures (../shared/testdata/e2e) with margins recorded, once per
variant, each in its own process: `base` (1 thread), `threads2` (2 threads), `avx2` (ATen, MKL and
oneDNN, which runs the convolutions, forced to their AVX2 kernels: on an AVX-512 machine, the other
machine class), `float64` (the
encoders in float64: the float32 encoder's own error). Against `base` it prints, per case and
variant, the largest difference of one affinity (the same key selected at the same place of the
same query), and of one soft label value at queries no top-k flip can reach (the perturbation
bound of both runs 0 at the largest affinity difference seen).

    python benchmarks/rounding_scale.py [--cases stt-jhmdb-a,stt-vip-a,...] [--variants ...]
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

E2E = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "e2e"
JHMDB_CLIP = "swing_baseball/HowtoswingaBaseballbat_swing_baseball_f_nm_np1_le_bad_0"
# case -> benchmark, data folder, method, weights fixture, --sequences
CASES = {
    "hvc-box-a": ("davis17", "davis", "hvc_release_coco", "hvc-box-a", None),
    "stt-box-b": ("davis17", "davis", "stt_release_r18_s8", "stt-box-b", None),
    "stt-vip-a": ("vip", "VIP_Fine", "stt_release_r18_s8", "stt-box-b", None),
    "stt-jhmdb-a": ("jhmdb", "JHMDB", "stt_release_r18_s8", "stt-box-b", [JHMDB_CLIP]),
}
VARIANTS = {
    "base": ({}, 1, False),
    "threads2": ({}, 2, False),
    "avx2": ({"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, 1, False),
    "float64": ({}, 1, True),
}


def record(case: str, variant: str, path: Path) -> None:
    """One run (in this process): the recorder of every sequence saved to `path`."""
    from vcorr.evaluation.pipeline import propagate_benchmark

    benchmark, data, method, weights, sequences = CASES[case]
    torch.set_num_threads(VARIANTS[variant][1])
    if VARIANTS[variant][2]:
        _encoders_in_float64()
    margins: dict = {}
    with tempfile.TemporaryDirectory() as out:
        propagate_benchmark(benchmark, E2E / case / data, method, out, sequences=sequences, device="cpu",
                            weights_root=E2E / weights / "weights", margins=margins)
    torch.save(margins, path)


def _encoders_in_float64() -> None:
    import vcorr.features as features

    build, normalise = features.FeatureExtractor.__init__, features.normalise_frames

    def init(self, *args, **kwargs):
        build(self, *args, **kwargs)
        self.networks = [network.double() for network in self.networks]

    features.FeatureExtractor.__init__ = init
    features.normalise_frames = lambda frames, input: normalise(frames, input).double()


def affinity_difference(a, b) -> float:
    worst = 0.0
    for t, chains in a.selections.items():
        for one, other in zip(chains, b.selections[t]):
            same = (one.frames == other.frames) & (one.positions == other.positions)
            same &= torch.isfinite(one.similarity) & torch.isfinite(other.similarity)
            if bool(same.any()):
                worst = max(worst, float((one.similarity - other.similarity).abs()[same].max()))
    return worst


def label_difference(a, b, affinity: float) -> float:
    from vcorr.propagation.fidelity import perturbation_bounds

    reach_a = perturbation_bounds(a, affinity).carried
    reach_b = perturbation_bounds(b, affinity).carried
    worst = 0.0
    for t, (one, other) in enumerate(zip(a.soft, b.soft)):
        calm = (reach_a[t] == 0) & (reach_b[t] == 0)
        if bool(calm.any()):
            worst = max(worst, float((one - other).abs().amax(0)[calm].max()))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--record", nargs=3, metavar=("CASE", "VARIANT", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.record:
        record(args.record[0], args.record[1], Path(args.record[2]))
        return 0
    if not E2E.is_dir():
        sys.exit(f"{E2E} absent (the e2e fixtures of ../shared/testdata)")
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory() as folder:
        for case in args.cases.split(","):
            runs = {}
            for variant in ["base", *[v for v in variants if v != "base"]]:
                path = Path(folder) / f"{case}-{variant}.pt"
                env = {**os.environ, **VARIANTS[variant][0]}
                subprocess.run([sys.executable, __file__, "--record", case, variant, str(path)], env=env, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                runs[variant] = torch.load(path, weights_only=False)
            for variant in variants:
                if variant == "base":
                    continue
                affinity = max(affinity_difference(runs["base"][s], runs[variant][s]) for s in runs["base"])
                label = max(label_difference(runs["base"][s], runs[variant][s], affinity) for s in runs["base"])
                print(f"{case:12s} base vs {variant:8s}: affinity {affinity:.2e} (cosine), soft label {label:.2e} "
                      f"(where no flip reaches)", flush=True)
    print("command:", shlex.join([sys.executable, *sys.argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
