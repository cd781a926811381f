"""The parameters of each propagation protocol: the one table that method configs, `--set`
overrides, the workflow's DAG check and the JSON schema of methods.yaml follow (a test ties the
schema and the propagators' signatures to it). Free of torch: the workflow reads it at DAG time.

| protocol | parameter            | meaning (../shared/reference/propagation.md)                    |
|----------|----------------------|-----------------------------------------------------------------|
| crw      | cxt_size             | context frames besides the first (HVC/videowalk `-c`)             |
|          | radius               | spatial radius of the key window, in feature cells                |
|          | topk                 | keys kept per query                                               |
|          | temp                 | softmax temperature                                               |
| stt      | precede              | preceding frames in the context                                   |
|          | topk, temp           | as above                                                          |
|          | nrange               | side of the square key window, in feature cells                   |
|          | with_first_neighbor  | whether the first frame's keys are windowed too (default true)    |

A bool is not accepted where a number is expected (YAML `yes` would otherwise pass as 1).
"""

from __future__ import annotations

from typing import Any

PROTOCOL_PARAMS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "crw": {"cxt_size": int, "radius": (int, float), "topk": int, "temp": (int, float)},
    "stt": {"precede": int, "topk": int, "temp": (int, float), "nrange": int, "with_first_neighbor": bool},
}
PROTOCOL_DEFAULTS: dict[str, dict[str, Any]] = {"crw": {}, "stt": {"with_first_neighbor": True}}

# Whose torch.topk choice among exact affinity ties propagation reproduces: the originals run on
# the CPU ("cpu", as ../shared/testdata's references were made) or on a GPU ("cuda");
# vcorr.propagation.affinity.
TIE_RULES = ("cpu", "cuda")
