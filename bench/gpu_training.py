"""The trainer on one CUDA GPU at ~1B parameters: tokens/s, MFU and peak memory beside the estimate.

Runs dreamlab's own `Trainer` (FSDP2 `fully_shard` per layer then root on a one-GPU mesh, bf16 mixed
precision, gradient checkpointing, AdamW, Dream's loss) on a random-weight Dream-architecture config
with Dream's vocabulary (152,064), at micro batch 1 / 2 / 4 and length 2048. Every row is exactly
2048 tokens, so tokens/s is B x 2048 / step time. Checkpoint writes are switched off: this measures
the training step. MFU counts model FLOPs only (6 N per token plus attention 12 n_layers d L, no
recompute), against the card's dense bf16 peak.

Run (GPU machine): python -m bench.gpu_training [--steps 12] [--warmup 4]
On a CPU it runs a toy size so the script itself can be checked: python -m bench.gpu_training --toy
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from dreamlab.config import load_recipe
from dreamlab.data.collate import Example
from dreamlab.models import DreamConfig, DreamModel, build_char_tokenizer
from dreamlab.train import trainer as trainer_module
from dreamlab.train.memory import estimate

# ~1.1B parameters: Dream-7B's vocabulary and head layout, fewer and narrower layers.
ONE_B = dict(vocab_size=152_064, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
             num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=4096, rope_theta=1e6)
TOY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_theta=1e4)
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def dream_config(sizes: dict) -> DreamConfig:
    """A Dream config of these sizes with the char tokenizer's special ids."""
    tokenizer = build_char_tokenizer()
    return DreamConfig(**sizes, mask_token_id=tokenizer.mask_token_id, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)


def synthetic_rows(count: int, length: int, seed: int) -> list[Example]:
    """Rows of exactly `length` tokens: a quarter prompt, the rest response (loss on the response)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 100, (count, length), generator=generator).tolist()
    cut = length // 4
    return [Example(prompt_ids=row[:cut], response_ids=row[cut:]) for row in ids]


def model_flops_per_token(config: DreamConfig, params: int, length: int) -> float:
    """Training FLOPs per token: 6 x (parameters less the input embedding) + attention."""
    dense = params - config.vocab_size * config.hidden_size
    return 6 * dense + 12 * config.num_hidden_layers * config.hidden_size * length


def peak_tflops() -> float | None:
    """Dense bf16 peak of this GPU, if it is one we know."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def measure(config: DreamConfig, *, micro_batch: int, length: int, checkpointing: bool, steps: int,
            warmup: int, device: str, folder: Path, compile: bool = False) -> dict:
    """Train `warmup + steps` optimizer steps; tokens/s and peak memory over the timed steps."""
    recipe = load_recipe(None, [
        f"data.micro_batch_size_per_gpu={micro_batch}", f"data.max_length={length}",
        "data.perbatch_cutoff_type=none", "data.val_files=[]", f"trainer.total_training_steps={warmup + steps}",
        "trainer.val_check_interval=null", "trainer.save_checkpoint_steps=null", "trainer.log_every=1",
        f"model.enable_gradient_checkpointing={str(checkpointing).lower()}", f"trainer.device={device}",
        "optim.lr=1e-5", "optim.warmup_steps_ratio=0.0", f"model.compile={str(compile).lower()}",
    ])
    trainer_module.build_model = lambda r, seed: (DreamModel(config), build_char_tokenizer())
    records: list[dict] = []
    trainer = trainer_module.Trainer(recipe, folder, metrics=lambda step, values: records.append(dict(values)))
    trainer.setup()
    trainer.train = synthetic_rows(micro_batch * (warmup + steps), length, seed=micro_batch)
    trainer.steps_per_epoch = warmup + steps
    trainer.checkpoint = lambda: None  # the step is measured, not the (multi-GB) checkpoint write
    params = sum(p.numel() for p in trainer.raw_model.parameters())
    if device == "cuda":
        torch.cuda.synchronize()
    # Warm-up steps run first; the peak is reset so it covers the timed steps only.
    original_fit_total = trainer.total_steps
    trainer.total_steps = warmup
    trainer.fit()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    trainer.total_steps = original_fit_total
    started = time.perf_counter()
    trainer.fit()
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    timed = [r for r in records if "train/step_seconds" in r][-steps:]
    step_s = statistics.median(r["train/step_seconds"] for r in timed)
    tokens_per_s = micro_batch * length / step_s
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    reserved = torch.cuda.max_memory_reserved() / 2**30 if device == "cuda" else float("nan")
    flops = model_flops_per_token(config, params, length) * tokens_per_s
    top = peak_tflops()
    result = {
        "micro_batch": micro_batch, "length": length, "checkpointing": checkpointing, "compile": compile,
        "params": params,
        "step_s_median": step_s, "wall_s_timed": wall, "tokens_per_s": tokens_per_s,
        "model_tflops": flops / 1e12, "mfu": flops / (top * 1e12) if top else None,
        "peak_allocated_gb": peak, "peak_reserved_gb": reserved,
        "estimate_gb": estimate(config, micro_batch=micro_batch, max_length=length, world=1,
                                checkpointing=checkpointing).total_gb,
        "final_loss": timed[-1]["train/loss"],
    }
    del trainer
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    """Measure each configuration and print a table (and JSON lines for the record)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--no-ckpt-batches", default="1", help="micro batches also measured without checkpointing")
    parser.add_argument("--compile-batches", default="", help="micro batches also measured with torch.compile")
    parser.add_argument("--toy", action="store_true", help="a toy size on the CPU, to check the script")
    parser.add_argument("--json", type=Path, help="append one JSON line per configuration here")
    args = parser.parse_args()
    device = "cpu" if args.toy or not torch.cuda.is_available() else "cuda"
    config = dream_config(TOY if args.toy else ONE_B)
    length = min(args.length, 128) if args.toy else args.length
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29600 + os.getpid() % 1000))
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
    cases = [(int(b), True, False) for b in args.batches.split(",") if b]
    cases += [(int(b), False, False) for b in args.no_ckpt_batches.split(",") if b]
    cases += [(int(b), True, True) for b in args.compile_batches.split(",") if b]
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}; torch {torch.__version__}; "
          f"peak bf16 {peak_tflops()} TFLOP/s", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for batch, ckpt, compiled in cases:
            try:
                result = measure(config, micro_batch=batch, length=length, checkpointing=ckpt, steps=args.steps,
                                 warmup=args.warmup, device=device, folder=Path(folder), compile=compiled)
            except Exception as error:  # one failed configuration (OOM, compile) must not lose the others
                result = {"micro_batch": batch, "checkpointing": ckpt, "compile": compiled,
                          "error": f"{type(error).__name__}: {error}"[:300]}
                if device == "cuda":
                    torch.cuda.empty_cache()
            results.append(result)
            print(json.dumps(result), flush=True)
            if args.json:
                with args.json.open("a") as out:
                    out.write(json.dumps(result) + "\n")
    dist.destroy_process_group()
    print(f"\n{results[0].get('params', 0) / 1e9:.2f}B parameters, length {length}, steps timed {args.steps}")
    print("| micro batch | checkpointing | compile | tokens/s | step (s) | model TFLOP/s | MFU | peak allocated (GiB) "
          "| peak reserved (GiB) | estimate (GiB) |")
    print("|---:|:--|:--|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['micro_batch']} | {'on' if r['checkpointing'] else 'off'} | {'on' if r['compile'] else 'off'} "
                  f"| {r['error']} |")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"| {r['micro_batch']} | {'on' if r['checkpointing'] else 'off'} | {'on' if r['compile'] else 'off'} "
              f"| {r['tokens_per_s']:.0f} "
              f"| {r['step_s_median']:.3f} | {r['model_tflops']:.0f} | {mfu} | {r['peak_allocated_gb']:.1f} "
              f"| {r['peak_reserved_gb']:.1f} | {r['estimate_gb']:.1f} |")


if __name__ == "__main__":
    main()
