"""The diffusion SFT loop: FSDP2 (`fully_shard` per decoder layer, then the root), one process per device.

Parallelism, stated plainly: data parallel over every process (torchrun), parameters, gradients and
optimizer state sharded by FSDP2 (FULL_SHARD); NCCL on GPUs with bf16 parameters and fp32 reductions,
gloo on CPUs in fp32 (bf16 autocast with trainer.precision=bf16). Each optimizer step consumes
world x micro_batch x accumulation rows, and its loss is divided by the masked tokens of all of them.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from dreamlab import gpu
from dreamlab.config import Recipe
from dreamlab.data.collate import CollateSettings, Example, SFTCollator
from dreamlab.diffusion.loss import LossSettings, noised_loss, sample_masks
from dreamlab.models import build_tiny_model
from dreamlab.models.loading import load_tokenizer
from dreamlab.models.tiny import TINY_NAME
from dreamlab.models.tokenizer import build_char_tokenizer
from dreamlab.train import STOP_FILE
from dreamlab.train.checkpoint import complete_checkpoints, load_checkpoint, save_checkpoint
from dreamlab.train.data import epoch_order, load_rows, rank_batches, split_held_out, tokenize_rows
from dreamlab.train.schedule import (
    checkpoint_due,
    held_out_count,
    resolved_intervals,
    steps_per_epoch,
    validation_due,
)

MetricsSink = Callable[[int, dict[str, float]], None]


@dataclass
class Outcome:
    """How a run ended: status (completed / stopped / diverged) and the last step."""

    status: str
    step: int
    reason: str | None = None


@dataclass
class NoisedBatch:
    """A collated micro-batch (tensors on the device) with its drawn masks and times."""

    batch: dict[str, torch.Tensor]
    masked: torch.Tensor
    t: torch.Tensor


SIGNAL_STOP_REASON = "stop requested (SIGTERM/SIGINT)"


class StopFlag:
    """Set by SIGTERM / SIGINT, or by a `stop-request` file in the run folder (its text is the reason, e.g. a Slurm
    time limit); the loop checkpoints and exits at the next step boundary."""

    def __init__(self, request: Path | None = None) -> None:
        self.signalled = False
        self.request = request
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signalled = True

    @property
    def raised(self) -> bool:
        """Whether a stop was asked for (a signal, or the request file, which outlives a signal sent too early)."""
        return self.signalled or (self.request is not None and self.request.exists())

    def reason(self) -> str:
        """Why the run stops: the request file's text, else the signal."""
        try:
            text = self.request.read_text().strip() if self.request is not None else ""
        except OSError:
            text = ""
        return text or SIGNAL_STOP_REASON


def device_type(wanted: str) -> str:
    """The recipe's trainer.device with `auto` decided: cuda where a GPU is visible, else cpu."""
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def compile_model(model: torch.nn.Module, device: torch.device) -> tuple[torch.nn.Module, str | None]:
    """`torch.compile(model)`, or the model as it is and why when compiling cannot work here.

    On the CPU, inductor builds its kernels with a C++ compiler ($CXX, else g++) and only finds out it
    has none in the middle of the first step: checked up front so a machine without one trains eagerly.
    """
    if device.type == "cpu":
        compiler = os.environ.get("CXX") or "g++"
        if shutil.which(compiler) is None:
            return model, (f"model.compile=true needs a C++ compiler on the CPU ({compiler} not found; install g++ "
                           f"or set CXX): training without torch.compile")
    return torch.compile(model), None


def build_model(recipe: Recipe, seed: int) -> tuple[torch.nn.Module, Any]:
    """The starting model in fp32 (FSDP keeps fp32 masters) and its tokenizer."""
    spec = recipe.model.partial_pretrain
    if spec == TINY_NAME:
        model = build_tiny_model(seed=seed, **recipe.model.tiny_sizes())
        return model, build_char_tokenizer()
    from transformers import AutoModel

    model = AutoModel.from_pretrained(spec, dtype=torch.float32, trust_remote_code=recipe.model.trust_remote_code)
    return model, load_tokenizer(spec, trust_remote_code=recipe.model.trust_remote_code)


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype forward passes compute in: `auto` is bf16 on CUDA and fp32 on the CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def shard(model: torch.nn.Module, device: torch.device, world: int, dtype: torch.dtype = torch.float32) -> None:
    """FSDP2 in place: `fully_shard` each decoder layer, then the root (bf16 parameters on CUDA when asked)."""
    mesh = init_device_mesh(device.type, (world,))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if device.type == "cuda" and dtype == torch.bfloat16 else MixedPrecisionPolicy())
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def lr_lambda(recipe: Recipe, total_steps: int) -> Callable[[int], float]:
    """Linear warmup over warmup_steps_ratio of the run, then cosine (or constant) to min_lr_ratio."""
    warmup = int(recipe.optim.warmup_steps_ratio * total_steps)
    floor = recipe.optim.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if recipe.optim.lr_scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    """One process's share of a run; every rank runs the same loop."""

    def __init__(self, recipe: Recipe, run_dir: Path, metrics: MetricsSink | None = None,
                 on_checkpoint: Callable[[int, Path], None] | None = None,
                 on_step: Callable[[int, float], None] | None = None):
        self.recipe = recipe
        self.run_dir = run_dir
        self.metrics = metrics or (lambda step, values: None)
        self.on_checkpoint = on_checkpoint or (lambda step, path: None)
        self.on_step = on_step or (lambda step, seconds: None)  # rank 0: (optimizer step completed, its seconds)
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.device = self._device()
        self.stop = StopFlag(run_dir / STOP_FILE)

    def _device(self) -> torch.device:
        wanted = device_type(self.recipe.trainer.device)
        if wanted == "cuda":
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device(wanted)

    def setup(self) -> None:
        """Model, FSDP2 sharding, optimizer, schedule, data, collator."""
        r = self.recipe
        torch.manual_seed(r.trainer.seed)
        model, self.tokenizer = build_model(r, r.trainer.seed)
        if r.model.enable_gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.to(self.device)
        self.compute_dtype = compute_dtype(r.trainer.precision, self.device)
        # bf16 on CUDA comes from FSDP's bf16 parameters; on the CPU from autocast around each forward.
        self.autocast = self.device.type == "cpu" and self.compute_dtype == torch.bfloat16
        # One CPU process has nothing to shard and no bf16 policy to apply: FSDP's per-layer
        # gather/reshard copies would only cost time (2.2x slower steps on the tiny preset, measured).
        if self.world > 1 or self.device.type == "cuda":
            shard(model, self.device, self.world, self.compute_dtype)
        self.notes: list[str] = []  # what the user should know about how this run trains
        self.model = model
        if r.model.compile:
            self.model, why_not = compile_model(model, self.device)
            self.notes += [why_not] if why_not else []
        self.raw_model = model
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=r.optim.lr, betas=tuple(r.optim.betas), weight_decay=r.optim.weight_decay,
        )
        self._setup_data()
        per_epoch = steps_per_epoch(len(self.train), world=self.world, micro_batch=r.data.micro_batch_size_per_gpu,
                                    accumulation=r.data.gradient_accumulation_steps)
        self.steps_per_epoch = per_epoch
        self.total_steps = r.trainer.total_training_steps or per_epoch * r.trainer.total_epochs
        self.checkpoint_every, self.val_every = resolved_intervals(
            per_epoch, checks_per_epoch=r.trainer.checks_per_epoch, checkpoint_every=r.trainer.save_checkpoint_steps,
            val_every=r.trainer.val_check_interval)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(r, self.total_steps))
        self.collator = SFTCollator(CollateSettings(
            max_length=r.data.max_length, pad_token_id=self.tokenizer.pad_token_id,
            perbatch_cutoff_type=r.data.perbatch_cutoff_type, train_on_padding=r.data.train_on_padding,
        ), seed=r.trainer.seed * 1000 + self.rank)
        self.mask_generator = torch.Generator(device=self.device).manual_seed(r.trainer.seed * 1000 + self.rank + 1)
        self.loss_settings: LossSettings = r.diffusion
        self.mask_token_id = model.config.mask_token_id
        if self.mask_token_id is None:
            raise ValueError(f"{r.model.partial_pretrain}: the model config has no mask_token_id")
        self.step = 0
        self._epoch_batches: tuple[int, list[list[int]]] = (-1, [])

    def _setup_data(self) -> None:
        """Training and validation examples: val_files, or a seeded held-out share of the training rows."""
        r = self.recipe
        system = r.data.system_prompt
        train_rows = load_rows(r.data.train_files, split="train", system_prompt=system)
        held_out = held_out_count(len(train_rows), r.data.val_fraction)
        train_rows, val_rows = split_held_out(train_rows, held_out, seed=r.trainer.seed)
        if not held_out and r.data.val_files:
            val_rows = load_rows(r.data.val_files, split="validation", system_prompt=system)
        if r.data.val_size is not None:
            val_rows = val_rows[: r.data.val_size]
        self.train, self.data_counts = tokenize_rows(
            train_rows, self.tokenizer, max_length=r.data.max_length, truncation=r.data.truncation
        )
        self.val = tokenize_rows(val_rows, self.tokenizer, max_length=r.data.max_length,
                                 truncation="drop")[0] if val_rows else []

    def resume(self) -> int | None:
        """Continue from the newest complete checkpoint, if there is one; returns its step."""
        found = complete_checkpoints(self.run_dir)
        if not found:
            return None
        step, path = found[-1]
        trainer_state, rank_state = load_checkpoint(path, model=self.raw_model, optimizer=self.optimizer)
        self.scheduler.load_state_dict(trainer_state["scheduler"])
        self.step = trainer_state["step"]
        self.resume_note = self._relayout_note(trainer_state)
        if rank_state is not None:
            self.collator.load_state_dict(rank_state["collator"])
            self.mask_generator.set_state(rank_state["mask_generator"])
            torch.set_rng_state(rank_state["torch"])
        return step

    def _global_batch(self) -> int:
        d = self.recipe.data
        return self.world * d.micro_batch_size_per_gpu * d.gradient_accumulation_steps

    def _relayout_note(self, state: dict[str, Any]) -> str:
        """What a resume on another layout than the checkpoint's keeps and loses ('' on the same layout)."""
        notes = []
        if state["world_size"] != self.world:
            notes.append(f"written by {state['world_size']} processes, read by {self.world}: model and optimizer "
                         "resharded; each rank's random streams (masks, cutoffs, torch) restart from the seed")
        written = state.get("global_batch")
        if written is not None and written != self._global_batch():
            notes.append(f"global batch {written} -> {self._global_batch()} rows: the data order does not continue "
                         "where it stopped")
        return "".join(f"; {note}" for note in notes)

    def _rank_state(self) -> dict[str, Any]:
        return {"collator": self.collator.state_dict(), "mask_generator": self.mask_generator.get_state(),
                "torch": torch.get_rng_state()}

    def checkpoint(self) -> Path:
        """Save model + state collectively and report the folder."""
        path = save_checkpoint(
            run_dir=self.run_dir, step=self.step, model=self.raw_model, optimizer=self.optimizer,
            tokenizer=self.tokenizer, keep=self.recipe.trainer.max_checkpoints, save_bf16=self.device.type == "cuda",
            trainer_state={"step": self.step, "epoch": self.step // self.steps_per_epoch, "world_size": self.world,
                           "global_batch": self._global_batch(),
                           "scheduler": self.scheduler.state_dict(), "total_steps": self.total_steps},
            rank_state=self._rank_state(),
        )
        if self.rank == 0:
            self.on_checkpoint(self.step, path)
        return path

    def _micro_batches(self, step: int) -> list[list[Example]]:
        """The micro-batches of optimizer step `step` for this rank (deterministic from the step)."""
        r = self.recipe.data
        accumulation = r.gradient_accumulation_steps
        batches: list[list[Example]] = []
        for micro in range(step * accumulation, (step + 1) * accumulation):
            epoch, within = divmod(micro, self.steps_per_epoch * accumulation)
            if self._epoch_batches[0] != epoch:
                order = epoch_order(len(self.train), epoch=epoch, seed=self.recipe.trainer.seed)
                self._epoch_batches = (epoch, rank_batches(order, rank=self.rank, world=self.world,
                                                           micro_batch=r.micro_batch_size_per_gpu))
            batches.append([self.train[i] for i in self._epoch_batches[1][within]])
        return batches

    def _noised(self, examples: list[Example], generator: torch.Generator) -> NoisedBatch:
        """Collate a micro-batch and draw its masks."""
        batch = {k: v.to(self.device) for k, v in self.collator(examples).items()}
        masked, t = sample_masks(batch["loss_mask"].bool(), eps=self.loss_settings.eps, generator=generator)
        return NoisedBatch(batch, masked, t)

    def _loss(self, noised: NoisedBatch, denominator: float | None = None) -> torch.Tensor:
        """The forward pass and loss of a noised micro-batch, in the run's compute dtype."""
        batch = noised.batch
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return noised_loss(
                self.model, batch["input_ids"], noised.masked, noised.t, mask_token_id=self.mask_token_id,
                settings=self.loss_settings, attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"], denominator=denominator,
            ).loss

    def accumulate(self, step: int) -> tuple[float, int, int, int]:
        """Forward and backward over step `step`'s micro-batches: (loss share, masked, tokens, maskable tokens).

        Every micro-batch's loss is divided by the masked tokens of the whole step (all micro-batches,
        all ranks), so the step's gradient is the one of a single batch of all its rows; Dream divides
        by each micro-batch's own count, which weighs a micro-batch's tokens by how few were masked.
        """
        noised = [self._noised(examples, self.mask_generator) for examples in self._micro_batches(step)]
        masked = sum(int(n.masked.sum()) for n in noised)
        (step_masked,) = self._all_reduce([masked])
        # FSDP averages gradients over ranks: x world turns that average into the step's sum / its count.
        denominator = max(step_masked, 1.0) / self.world
        loss_share = 0.0
        for batch in noised:
            loss = self._loss(batch, denominator)
            loss.backward()
            loss_share += float(loss.detach())
        tokens = sum(int(n.batch["attention_mask"].sum()) for n in noised)
        maskable = sum(int(n.batch["loss_mask"].sum()) for n in noised)
        return loss_share, masked, tokens, maskable

    def _all_reduce(self, values: list[float], op=dist.ReduceOp.SUM) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=op)
        return tensor.tolist()

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean validation loss with fixed masks (the same draws at every evaluation)."""
        if not self.val:
            return None
        self.model.eval()
        generator = torch.Generator(device=self.device).manual_seed(12345 + self.rank)
        size = self.recipe.data.micro_batch_size_per_gpu
        shard = self.val[self.rank::self.world]
        total, count = 0.0, 0
        saved = self.collator.state_dict()
        for start in range(0, len(shard), size):
            loss = self._loss(self._noised(shard[start:start + size], generator))
            total += float(loss) * len(shard[start:start + size])
            count += len(shard[start:start + size])
        self.collator.load_state_dict(saved)  # validation must not move the training draws
        self.model.train()
        total, count = self._all_reduce([total, count])
        return total / max(count, 1)

    def _memory(self) -> dict[str, float]:
        if self.device.type == "cuda":
            values = {"memory/allocated_gb": torch.cuda.memory_allocated(self.device) / 2**30,
                      "memory/reserved_gb": torch.cuda.memory_reserved(self.device) / 2**30,
                      "memory/peak_gb": torch.cuda.max_memory_allocated(self.device) / 2**30}
            # NVML sees the whole device (other processes, the CUDA context), which torch's allocator does not.
            nvml = gpu.memory_of(str(torch.cuda.get_device_properties(self.device).uuid))
            if nvml is not None:
                values["memory/nvml_used_gb"], values["memory/nvml_total_gb"] = (mib / 1024 for mib in nvml)
            return values
        return {"memory/rss_gb": psutil.Process().memory_info().rss / 2**30}

    def fit(self) -> Outcome:
        """Train until total_steps, a stop request, or a non-finite loss."""
        r = self.recipe
        self.model.train()
        if self.rank == 0:
            self.metrics(self.step, {"trainer/total_steps": float(self.total_steps),
                                     "trainer/bf16": float(self.compute_dtype == torch.bfloat16),
                                     "data/train_rows": float(len(self.train)),
                                     "data/truncated": float(self.data_counts["truncated"]),
                                     "data/dropped": float(self.data_counts["dropped"])})
        while self.step < self.total_steps:
            started = time.perf_counter()
            loss_share, masked, tokens, maskable = self.accumulate(self.step)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), r.optim.clip_grad)
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            loss_total, masked_total, tokens_total, maskable_total, stop = self._all_reduce(
                [loss_share, masked, tokens, maskable, float(self.stop.raised)]
            )
            mean_loss = loss_total / self.world
            if not math.isfinite(mean_loss) or not math.isfinite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                return Outcome("diverged", self.step, f"non-finite loss ({mean_loss}) or grad norm at step {self.step + 1}")
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            seconds = time.perf_counter() - started
            if self.rank == 0:
                self.on_step(self.step, seconds)
            values = {"train/loss": mean_loss, "train/lr": lr, "train/grad_norm": grad_norm,
                      "train/masked_tokens": masked_total, "train/masked_fraction": masked_total / max(maskable_total, 1),
                      "train/tokens_per_s": tokens_total / seconds,
                      "train/step_seconds": seconds, "train/epoch": self.step / self.steps_per_epoch}
            if validation_due(self.step, self.val_every, self.total_steps):
                values["val/loss"] = self.validate()
            if self.rank == 0 and (self.step % r.trainer.log_every == 0 or self.step == self.total_steps or "val/loss" in values):
                values.update(self._memory())
                self.metrics(self.step, {k: v for k, v in values.items() if v is not None})
            if stop:
                self.checkpoint()
                return Outcome("stopped", self.step, self.stop.reason())
            if checkpoint_due(self.step, self.checkpoint_every, self.total_steps):
                self.checkpoint()
        self.checkpoint()
        return Outcome("completed", self.step)
