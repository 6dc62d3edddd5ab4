"""Eval throughput on one GPU: batch 1 / 8 / 32 / auto on a ~1B random Dream-architecture model, 1,024-token prompts.

Random weights and random prompt ids (no tokenizer, no scoring): this measures the sampler and the
model, not answers. Every prompt has the same length (no padding). Batch 1 runs on the first
`--prompts-batch-1` prompts only (it is the slow one); tokens/s divides generated positions by the
synchronised generation time, so the rows compare. `auto` goes through `evals.batching.run_in_batches`
as `dreamlab eval --batch-size auto` does: every prompt in one batch, 0.9x on each out-of-memory error.
Rows of a batch size are checked against batch 1 on the prompts both ran (bfloat16 matrix products can
round differently at another batch size, so a few may differ; the count is printed, not asserted).

Run (GPU): python -m bench.eval_batching_gpu
Smoke test on the CPU (a small model, float32): python -m bench.eval_batching_gpu --small --prompts 8 --prompts-batch-1 2
"""

from __future__ import annotations

import argparse
import time

import torch

from dreamlab.diffusion.sampler import generate
from dreamlab.evals.batching import AUTO, parse_batch_size, run_in_batches
from dreamlab.evals.tasks import Sample
from dreamlab.models.configuration import DreamConfig
from dreamlab.models.modeling import DreamModel

MASK, EOS = 151666, 151643


def dream_config(small: bool, context: int) -> DreamConfig:
    """~1.3B parameters (Qwen2-style blocks, Dream's vocabulary and special ids), or a small CPU stand-in."""
    sizes = (dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
             if small else
             dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=2))
    return DreamConfig(vocab_size=152064, max_position_embeddings=context, rope_theta=1_000_000.0, mask_token_id=MASK,
                       pad_token_id=EOS, eos_token_id=EOS, bos_token_id=EOS, **sizes)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=128, help="prompts for batch 8 / 32 / auto")
    parser.add_argument("--prompts-batch-1", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=1024)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--batch-sizes", default="1,8,32,auto")
    parser.add_argument("--small", action="store_true", help="a small model in float32 (CPU smoke test)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" and not args.small else torch.float32
    with torch.random.fork_rng(devices=[]), device:  # initialised on the device: 1.3B weights on a CPU take minutes
        torch.manual_seed(0)
        model = DreamModel(dream_config(args.small, args.prompt_length + args.max_new_tokens)).to(dtype).eval()
    ids = torch.randint(0, 150000, (args.prompts, args.prompt_length), generator=torch.Generator().manual_seed(1))
    prompts = {i: ids[i].tolist() for i in range(args.prompts)}
    billions = sum(p.numel() for p in model.parameters()) / 1e9
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{billions:.2f}B parameters, {dtype}, {name}; prompts of {args.prompt_length} tokens, {args.max_new_tokens} new "
          f"tokens, {args.steps} steps, entropy")
    outputs: dict[object, dict[int, torch.Tensor]] = {}
    speeds: dict[object, float] = {}
    for size in [parse_batch_size(s) for s in args.batch_sizes.split(",")]:
        count = args.prompts_batch_1 if size == 1 else args.prompts
        samples = [Sample(idx=i, question="", gold="") for i in range(count)]
        done: dict[int, torch.Tensor] = {}
        sizes_run: list[int] = []

        def handle(batch: list[Sample]) -> None:
            rows = torch.tensor([prompts[s.idx] for s in batch], device=device)
            out = generate(model, rows, None, max_new_tokens=args.max_new_tokens, steps=args.steps, alg="entropy",
                           seed=[s.idx for s in batch])
            for sample, generated in zip(batch, out.sequences[:, args.prompt_length:].cpu()):
                done[sample.idx] = generated
            sizes_run.append(len(batch))

        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        used = run_in_batches(lambda: [s for s in samples if s.idx not in done], handle, prompts, size, device,
                              lambda old, new: print(f"  auto: out of memory at {old}, retrying at {new}"))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        speeds[size] = count * args.max_new_tokens / seconds
        outputs[size] = done
        peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
        ratio = f"  x{speeds[size] / speeds[1]:.1f} vs batch 1" if 1 in speeds and size != 1 else ""
        print(f"batch {size!s:>4} (used {used}): {count} prompts in {seconds:7.1f} s, {speeds[size]:8.1f} tokens/s{ratio}{peak}")
        if 1 in outputs and size != 1:
            shared = outputs[1].keys() & done.keys()
            same = sum(torch.equal(outputs[1][i], done[i]) for i in shared)
            print(f"  identical to batch 1 on {same}/{len(shared)} prompts")
    if AUTO in speeds and 1 in speeds:
        print(f"auto / batch 1: x{speeds[AUTO] / speeds[1]:.1f} (target >= 10)")


if __name__ == "__main__":
    main()
