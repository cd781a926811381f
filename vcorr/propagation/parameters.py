"""The parameters of each propagation protocol: the one table that method configs, `--set`
overrides, the workflow's DAG check and the JSON schema of methods.yaml follow (tests tie the
schema and the propagators' signatures to it). Free of torch: the workflow reads it at DAG time.

| protocol | parameter              | meaning (../shared/reference/propagation*.md)                  |
|----------|------------------------|----------------------------------------------------------------|
| crw      | cxt_size               | context frames besides the first (HVC/videowalk `-c`)            |
|          | radius                 | spatial radius of the key window, in feature cells               |
|          | topk                   | keys kept per query                                              |
|          | temp                   | softmax temperature                                              |
| stt      | precede                | preceding frames in the context                                  |
|          | topk, temp             | as above                                                         |
|          | nrange                 | side of the square key window, in feature cells                  |
|          | with_first_neighbor    | whether the first frame's keys are windowed too (default true)   |
| dino     | n_last_frames          | preceding predicted frames kept besides the first (DINO's queue) |
|          | size_mask_neighborhood | half-side of the square key window, in patches (0: no window)    |
|          | topk                   | keys kept per query, jointly over the context, ties kept         |
|          | temp                   | affinity exp(cos / temp) (default 0.1, hard-coded in DINO)       |

A bool is not accepted where a number is expected (YAML `yes` would otherwise pass as 1).
Numbers must be positive, except those of `ZERO_ALLOWED` (0 means "off").
"""

from __future__ import annotations

from typing import Any

PROTOCOL_PARAMS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "crw": {"cxt_size": int, "radius": (int, float), "topk": int, "temp": (int, float)},
    "stt": {"precede": int, "topk": int, "temp": (int, float), "nrange": int, "with_first_neighbor": bool},
    "dino": {"n_last_frames": int, "size_mask_neighborhood": int, "topk": int, "temp": (int, float)},
}
PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {
    "crw": {},
    "stt": {"with_first_neighbor": True},
    "dino": {"temp": 0.1},
}
ZERO_ALLOWED: dict[str, set[str]] = {"dino": {"size_mask_neighborhood"}}

# The encoder's input size when a benchmark's settings name none (`size` absent; `size: null` is
# the native size): DINO's read_frame, 480 on the short side and the long side scaled and floored
# to a multiple of 64 (vcorr.evaluation.methods.BenchmarkSettings.input_size).
PROTOCOL_SIZES: dict[str, dict[str, int]] = {"dino": {"short_side": 480, "long_side_floor": 64}}

# Input normalisations a protocol replaces with its own: DINO's script normalises every RGB model
# with std 0.228 for red (vcorr.models.preprocess `dino_rgb`); Lab input is kept.
PROTOCOL_INPUTS: dict[str, dict[str, str]] = {"dino": {"imagenet_rgb": "dino_rgb"}}

# Benchmark tasks (config/benchmarks.yaml `task`) each protocol defines. DINO's script segments
# videos (DAVIS; the DINO-based papers run it on VIP too); no DINO-based code propagates JHMDB's
# keypoints with it: they evaluate JHMDB with videowalk's code, which is protocol crw.
PROTOCOL_TASKS: dict[str, tuple[str, ...]] = {
    "crw": ("vos", "vip", "jhmdb"),
    "stt": ("vos", "vip", "jhmdb"),
    "dino": ("vos", "vip"),
}

# Whose torch.topk choice among exact affinity ties propagation reproduces: the originals run on
# the CPU ("cpu", as ../shared/testdata's references were made) or on a GPU ("cuda");
# vcorr.propagation.affinity. DINO keeps every key tied with the k-th value, so no rule applies.
TIE_RULES = ("cpu", "cuda")
