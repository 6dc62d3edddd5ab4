"""Per-GPU memory estimate of a recipe under FSDP2 FULL_SHARD, and the pre-flight check that uses it.

The parts, in bytes (P parameters, W processes, B micro batch, L max_length, H hidden, I intermediate,
V vocabulary, N layers; bf16 compute, fp32 masters):
  masters + grads + Adam moments   (4 + 4 + 8) P / W            sharded
  gathered layer parameters         2 x 2 bytes x (P / N)        the layer in use plus one prefetched
  activations, checkpointing on     2 B L H per layer (inputs kept) + one layer recomputed
  activations, checkpointing off    per layer 2 B L (8 H + 4 I)  (SDPA keeps no L x L scores)
  logits                            B L V x (2 bf16 + 4 fp32 for the loss + 2 gradient)
  framework                         1.5 GiB (CUDA context, allocator slack, NCCL buffers)
It is an estimate: compare it with a measured peak before trusting a tight fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GIB = 2**30
FRAMEWORK_BYTES = 1.5 * GIB


@dataclass
class MemoryEstimate:
    """The parts of one GPU's memory, in GiB, and their total."""

    parts: dict[str, float]

    @property
    def total_gb(self) -> float:
        """Sum of the parts."""
        return sum(self.parts.values())


def count_parameters(config) -> int:
    """Parameters of the model a config describes, built on the meta device (no memory used)."""
    from accelerate import init_empty_weights

    from dreamlab.models import DreamModel

    with init_empty_weights():
        model = DreamModel(config)
    return sum(p.numel() for p in model.parameters())


def estimate(config, *, micro_batch: int, max_length: int, world: int, checkpointing: bool) -> MemoryEstimate:
    """Estimate one GPU's peak memory for training `config` with these sizes."""
    params = count_parameters(config)
    b, seq, h, i, v, n = micro_batch, max_length, config.hidden_size, config.intermediate_size, config.vocab_size, config.num_hidden_layers
    layer_activations = 2 * b * seq * (8 * h + 4 * i)
    parts = {
        "params + grads + Adam (fp32, sharded)": 16 * params / world,
        "gathered bf16 layers (2)": 2 * 2 * params / n,
        "activations": (2 * b * seq * h * n + layer_activations) if checkpointing else layer_activations * n,
        "logits and loss": b * seq * v * (2 + 4 + 2),
        "CUDA context and slack": FRAMEWORK_BYTES,
    }
    return MemoryEstimate({name: value / GIB for name, value in parts.items()})


def suggestion(config, *, micro_batch: int, max_length: int, world: int, checkpointing: bool, budget_gb: float) -> str:
    """What to lower so the estimate fits in budget_gb (or that nothing fits)."""
    for ckpt in ([checkpointing] if checkpointing else [False, True]):
        for batch in range(micro_batch, 0, -1):
            if estimate(config, micro_batch=batch, max_length=max_length, world=world, checkpointing=ckpt).total_gb <= budget_gb:
                return (f"data.micro_batch_size_per_gpu={batch}"
                        + (" model.enable_gradient_checkpointing=true" if ckpt and not checkpointing else ""))
    shorter = max_length // 2
    while shorter >= 256:
        if estimate(config, micro_batch=1, max_length=shorter, world=world, checkpointing=True).total_gb <= budget_gb:
            return f"data.micro_batch_size_per_gpu=1 model.enable_gradient_checkpointing=true data.max_length={shorter}"
        shorter //= 2
    return "more GPUs (trainer.nproc_per_node / trainer.nnodes): even micro batch 1 at length 256 does not fit"


def gpu_memory_gb() -> float | None:
    """Total memory of GPU 0 in GiB, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / GIB
