"""How a cluster job starts `vcorr train`: the launcher the workflow's rule `train` writes before
`vcorr train`, from the job's nodes and GPUs per node. Torch-free: the workflow builds it when
the DAG is built, and the tests run the several-node command as local torchrun "nodes".

- several nodes: one torchrun per node through `srun` (one task per node), `--nproc-per-node`
  processes each, meeting by c10d rendezvous at the allocation's first node;
- one node with GPUs: torchrun `--standalone`, one process per GPU;
- no GPU: no launcher, a single process.
"""

from __future__ import annotations

TORCHRUN = "python3 -m torch.distributed.run"
# Where the torchrun agents of a several-node job meet: a port on the allocation's first node.
RENDEZVOUS_PORT = 29500
FIRST_NODE = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'


def torchrun_prefix(nodes: int, gpus_per_node: int) -> str:
    """The shell words before `vcorr train` (empty for a single process)."""
    if nodes > 1:
        return (f"srun --ntasks-per-node=1 {TORCHRUN} --nnodes=\"$SLURM_NNODES\" --nproc-per-node={max(gpus_per_node, 1)}"
                f" --rdzv-backend=c10d --rdzv-id=\"$SLURM_JOB_ID\" --rdzv-endpoint=\"{FIRST_NODE}:{RENDEZVOUS_PORT}\""
                " --no-python")
    if gpus_per_node >= 1:
        return f"{TORCHRUN} --standalone --nproc-per-node={gpus_per_node} --no-python"
    return ""
