"""The `dreamlab` lm-eval model: `generate_until` runs dreamlab's diffusion sampler.

Prompts are encoded without special tokens (the tokenizer's BOS first with add_bos_token=true, as
Dream's Base eval does), grouped by their sampler settings, sorted by length and left-padded into
batches. The sampler's reveal counts are per row and row r draws with seed + doc_id, so a request's
tokens do not depend on its batch or its neighbours. Each generation is cut at the first EOS, decoded
and then cut at each of the request's `until` strings, as lm-eval's HF model does; for the store, as
`dreamlab eval` keeps them, the generation up to EOS, where the until strings cut it and the answer
tokens before that cut are kept too. The sampler's settings come from --model_args; of a request's
gen_kwargs only `until` and `max_gen_toks` count (Dream's Instruct protocol samples at temperature
0.1 where gsm8k_cot says do_sample: false).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import torch
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm

from dreamlab.diffusion.sampler import generate
from dreamlab.diffusion.settings import SamplerSettings
from dreamlab.evals.harness import answer_tokens, cut_at_eos, device_label
from dreamlab.evals.lm_eval.args import BridgeArgs, parse_model_args
from dreamlab.models.loading import load_model_and_tokenizer

logger = logging.getLogger(__name__)
MODEL_NAME = "dreamlab"
# The r-th repeat of a document (a task's `repeats`) draws with seed + doc_id + r * REPEAT_SEED_STRIDE,
# so repeats at temperature > 0 differ while the first keeps the harness's seed + idx.
REPEAT_SEED_STRIDE = 1_000_003


class _Job(NamedTuple):
    """One request to generate: its place in lm-eval's list, task, document and repeat, prompt ids, stop strings, seed."""

    index: int
    task: str
    doc_id: int
    repeat: int
    ids: list[int]
    until: list[str]
    seed: int


@register_model(MODEL_NAME)
class DreamlabLM(LM):
    """A dreamlab model (tiny, a checkpoint folder or a hub id) behind lm-eval's LM interface, generative tasks only."""

    def __init__(self, batch_size: int | str | None = 1, max_batch_size: int | None = None, device: str | None = None,
                 **model_args: Any) -> None:
        super().__init__()  # max_batch_size: lm-eval passes it to every model; batches here are --batch_size
        self.args: BridgeArgs = parse_model_args(model_args)
        self.batch_size = _batch_size(batch_size)
        try:
            self.model, self.tokenizer = load_model_and_tokenizer(
                self.args.pretrained, device=_device(device), dtype=self.args.dtype,
                trust_remote_code=self.args.trust_remote_code)
        except (OSError, ValueError) as error:
            raise ValueError(f"model_args pretrained={self.args.pretrained}: {error}") from None
        if self.args.add_bos_token and self.tokenizer.bos_token_id is None:
            raise ValueError(f"model_args add_bos_token: the tokenizer of {self.args.pretrained} has no BOS token")
        self._device = next(self.model.parameters()).device
        # What each task was generated with, for the store: settings and, per document (its first repeat),
        # the generation up to EOS, where the until strings cut it, answer tokens, NFE and seconds.
        self.task_settings: dict[str, SamplerSettings] = {}
        self.generated: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)

    def encode(self, context: str) -> list[int]:
        """A prompt's ids: no special tokens, the tokenizer's BOS first when add_bos_token is on."""
        ids = self.tokenizer(context, add_special_tokens=False).input_ids
        return [self.tokenizer.bos_token_id, *ids] if self.args.add_bos_token else ids

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """One generation per request, cut at EOS then at the request's `until` strings."""
        jobs: dict[SamplerSettings, list[_Job]] = defaultdict(list)
        repeats: dict[tuple[str, int], int] = defaultdict(int)
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(gen_kwargs, self.args.settings().max_new_tokens)
            settings = self.args.settings(kwargs["max_gen_toks"])
            task, doc_id = str(request.task_name), index if request.doc_id is None else request.doc_id
            self._note_settings(task, settings)
            repeat = repeats[task, doc_id]
            repeats[task, doc_id] += 1
            jobs[settings].append(_Job(index, task, doc_id, repeat, self.encode(context),
                                       handle_stop_sequences(kwargs.get("until"), eos=self.tokenizer.eos_token),
                                       self.args.seed + doc_id + repeat * REPEAT_SEED_STRIDE))
        texts: list[str] = [""] * len(requests)
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="dreamlab generate_until")
        for settings, group in jobs.items():
            group.sort(key=lambda job: (len(job.ids), job.index))
            for start in range(0, len(group), self.batch_size):
                batch = group[start:start + self.batch_size]
                for job, (ids, stats) in zip(batch, self._generate(settings, batch)):
                    raw = self.tokenizer.decode(ids)
                    texts[job.index] = postprocess_generated_text(raw, job.until, None)  # a prefix of raw
                    cut_at = len(texts[job.index]) if len(texts[job.index]) < len(raw) else None
                    if job.repeat == 0:  # the store keeps a document's first response, as lm-eval's samples list it
                        self.generated[job.task][job.doc_id] = {
                            "generation": raw, "cut_at": cut_at,
                            "answer_tokens": answer_tokens(self.tokenizer, ids, raw, cut_at), **stats}
                    self.cache_hook.add_partial("generate_until", requests[job.index].args, texts[job.index])
                progress.update(len(batch))
        progress.close()
        return texts

    @torch.no_grad()
    def _generate(self, settings: SamplerSettings, batch: list[_Job]) -> list[tuple[list[int], dict[str, Any]]]:
        """Left-pad one batch, run the sampler; each row's ids up to its first EOS and its stats."""
        width = max(len(job.ids) for job in batch)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        input_ids = torch.tensor([[pad] * (width - len(job.ids)) + job.ids for job in batch], device=self._device)
        attention = torch.tensor([[0] * (width - len(job.ids)) + [1] * len(job.ids) for job in batch], device=self._device)
        started = time.perf_counter()
        out = generate(self.model, input_ids, attention, **asdict(settings), seed=[job.seed for job in batch])
        seconds = (time.perf_counter() - started) / len(batch)
        mask_id = self.model.config.mask_token_id
        rows = []
        for row in range(len(batch)):
            ids = cut_at_eos(self.tokenizer, out.sequences[row, width:].tolist())
            nfe = out.row_nfe[row] if out.row_nfe else out.nfe  # the row's own model calls, as the harness counts
            rows.append((ids, {"nfe": nfe, "seconds": seconds, "leftover_masks": ids.count(mask_id)}))
        return rows

    def _note_settings(self, task: str, settings: SamplerSettings) -> None:
        known = self.task_settings.setdefault(task, settings)
        if known != settings:
            raise ValueError(f"task {task} asks for different generation lengths ({known.max_new_tokens} and "
                             f"{settings.max_new_tokens} tokens); the store records one sampler setting per eval")

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Not supported: dreamlab's sampler generates; likelihood tasks would need a Monte Carlo estimate."""
        raise NotImplementedError(_generative_only(requests, "loglikelihood"))

    def loglikelihood_rolling(self, requests: list[Instance]) -> list[float]:
        """Not supported, as loglikelihood."""
        raise NotImplementedError(_generative_only(requests, "loglikelihood_rolling"))

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The tokenizer's chat template over lm-eval's turns (--apply_chat_template)."""
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    @property
    def tokenizer_name(self) -> str:
        """The tokenizer's name, which lm-eval uses to key its request cache."""
        return str(self.tokenizer.name_or_path or self.args.pretrained).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The tokenizer's chat template text (recorded by lm-eval with the results)."""
        return self.tokenizer.chat_template if chat_template else None

    def get_model_info(self) -> dict[str, Any]:
        """What the store needs beside lm-eval's results: lm-eval puts it under results["config"]["dreamlab"]."""
        local = Path(self.args.pretrained).expanduser()
        return {MODEL_NAME: {
            "pretrained": self.args.pretrained,
            "checkpoint": str(local.resolve()) if (local / "config.json").is_file() else None,
            "device": device_label(self.model), "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "seed": self.args.seed, "batch_size": self.batch_size, "add_bos_token": self.args.add_bos_token,
            "tasks": {task: {"settings": asdict(settings), "samples": {str(doc): stats for doc, stats in
                                                                        sorted(self.generated[task].items())}}
                      for task, settings in self.task_settings.items()},
        }}


def _device(asked: str | None) -> str:
    """lm-eval's CLI asks for cuda:0 unless told otherwise; like its HF model, use the CPU when there is no CUDA."""
    if asked is None or (asked.startswith("cuda") and not torch.cuda.is_available()):
        if asked is not None:
            logger.warning("device %s asked for, but CUDA is not available: running on the CPU", asked)
        return "auto"
    return asked


def _batch_size(value: int | str | None) -> int:
    if value is None:
        return 1
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        if int(value) >= 1:
            return int(value)
    raise ValueError(f"batch_size must be a whole number >= 1 for the dreamlab model; got {value!r}")


def _generative_only(requests: list[Instance], kind: str) -> str:
    tasks = sorted({str(request.task_name) for request in requests})
    return (f"the dreamlab model supports generative tasks only (output_type: generate_until); "
            f"{', '.join(tasks) or 'this task'} asks for {kind}")
