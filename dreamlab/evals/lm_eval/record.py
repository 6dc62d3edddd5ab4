"""lm-eval's results and logged samples from the dreamlab model, into the run store: one eval per task.

A sample's `correct` is lm-eval's own verdict: the first metric under the task's first filter (for
gsm8k_cot, exact_match after strict-match); `strict_correct` and `flexible_correct` are the same metric
under the filters named strict-match and flexible-extract when the task has them (the columns
`dreamlab eval` fills from lm-eval's filters), so the eval's strict_accuracy and flexible_accuracy are
lm-eval's numbers. The generation is kept whole, with `cut_at` where an until string cut it and the
answer tokens before that cut. Every filter's metrics stay in the sample's `metrics` column and
lm-eval's aggregated numbers in the eval's. The eval records its template (chat when lm-eval applied
one) and whether prompts began with BOS.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dreamlab import library_versions
from dreamlab.evals.stats import summarize
from dreamlab.store import RunStore
from dreamlab.store.records import EvalRecord

TASK_PREFIX = "lm-eval:"
STRICT_FILTER, FLEXIBLE_FILTER = "strict-match", "flexible-extract"
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")  # a task's !function hooks are dumped as "<function f at 0x7f...>"


def read_output(results_file: Path) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """lm-eval's results_<date>.json and, beside it, the samples_<task>_<date>.jsonl of each task."""
    results = json.loads(results_file.read_text(encoding="utf-8"))
    date = results_file.stem.rsplit("_", 1)[1]  # lm-eval's date id has no underscore; the name before it may
    samples = {}
    for task in results.get("configs", {}):
        path = results_file.with_name(f"samples_{task}_{date}.jsonl")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no logged samples for task {task} (run lm-eval with --log_samples)")
        samples[task] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return results, samples


def record_results(store: RunStore, results: Mapping[str, Any], samples: Mapping[str, Sequence[Mapping[str, Any]]]
                   ) -> list[EvalRecord]:
    """Write one completed eval per task (its samples, lm-eval's metrics); the same settings again rewrite it."""
    info = results.get("config", {}).get("dreamlab")
    if info is None:
        raise ValueError(f"these lm-eval results are from model {results.get('config', {}).get('model')!r}, "
                         "not dreamlab's: nothing to record")
    records = []
    for task in results["configs"]:
        generated = info["tasks"].get(task)
        if generated is None:  # every request came from lm-eval's --use_cache: the sampler never ran
            raise ValueError(f"task {task}: the dreamlab model generated nothing for it (cached responses?)")
        rows = sample_rows(samples[task], generated["samples"])
        settings = eval_settings(store, results, info, task, len(rows))
        record = store.create_or_resume_eval(settings)
        store.record_eval_samples(record.id, rows)
        # lm-eval's numbers are keyed "metric,filter"; the rest (alias, name, sample_len) is bookkeeping
        metrics = {key: value for key, value in results["results"][task].items() if "," in key}
        summary = summarize(rows, generated["settings"]["max_new_tokens"], len(rows))
        if all(row["correct"] is None for row in rows):  # a task without a 0/1 metric has no accuracy
            summary.update(accuracy=None, ci_low=None, ci_high=None)
        records.append(store.finish_eval(record.id, "completed", {**summary, "metrics": metrics}))
    return records


def eval_settings(store: RunStore, results: Mapping[str, Any], info: Mapping[str, Any], task: str,
                  n_samples: int) -> dict[str, Any]:
    """The store's settings for one task: dreamlab's sampler and model, lm-eval's prompt shape and versions."""
    checkpoint = info["checkpoint"]
    limited = results["config"].get("limit") is not None
    versions = {**library_versions(), "lm_eval": str(results.get("lm_eval_version")),
                "lm_eval_task": str(results.get("versions", {}).get(task))}
    return {"run_id": store.run_owning(Path(checkpoint)) if checkpoint else None, "checkpoint": checkpoint,
            "model": info["pretrained"], "task": TASK_PREFIX + task, "shots": results.get("n-shot", {}).get(task),
            "template": "base" if results.get("chat_template") is None else "chat", "add_bos": info["add_bos_token"],
            "template_hash": prompt_hash(results, info, task), **info["tasks"][task]["settings"],
            "batch_size": info["batch_size"], "seed": info["seed"], "limit_n": n_samples if limited else None,
            "versions": versions, "device": info["device"], "n_samples": n_samples}


def prompt_hash(results: Mapping[str, Any], info: Mapping[str, Any], task: str) -> str:
    """A hash of what shapes the prompt: the task's config (less its model-args metadata), few-shot seed, chat, BOS."""
    config = {key: value for key, value in results["configs"][task].items() if key != "metadata"}
    shape = {"config": config, "version": results.get("versions", {}).get(task), "bos": info["add_bos_token"],
             "fewshot_seed": results["config"].get("fewshot_seed"),
             **{key: results.get(key) for key in ("chat_template", "system_instruction", "fewshot_as_multiturn")}}
    text = _ADDRESS.sub("", json.dumps(shape, sort_keys=True, default=str))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sample_rows(logged: Sequence[Mapping[str, Any]], generated: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One store row per document from lm-eval's logged samples (one per document and filter)."""
    by_doc: dict[int, dict[str, Mapping[str, Any]]] = {}
    for entry in logged:
        by_doc.setdefault(int(entry["doc_id"]), {})[entry["filter"]] = entry
    # A metric is a verdict only when every logged value is 0 or 1 (exact_match); an F1 of 0.0 on one document
    # is no verdict when another scored 0.5.
    metrics = {entry["metrics"][0] for entry in logged if entry["metrics"]}
    binary = all(_binary(entry.get(metric)) for entry in logged for metric in metrics)
    rows = []
    for doc_id, filters in sorted(by_doc.items()):
        first = next(iter(filters.values()))
        metric = first["metrics"][0] if first["metrics"] and binary else None
        strict, flexible = filters.get(STRICT_FILTER), filters.get(FLEXIBLE_FILTER)
        stats = generated.get(str(doc_id), {})
        rows.append({"idx": doc_id, "question": _context(first), "gold": str(first["target"]),
                     "generation": stats.get("generation", _first(first["resps"])), "cut_at": stats.get("cut_at"),
                     "extracted": _first(first["filtered_resps"]), "correct": _verdict(first.get(metric)),
                     "strict_correct": _verdict(strict.get(metric)) if strict else None,
                     "strict_extracted": _first(strict["filtered_resps"]) if strict else None,
                     "flexible_correct": _verdict(flexible.get(metric)) if flexible else None,
                     "flexible_extracted": _first(flexible["filtered_resps"]) if flexible else None,
                     **{key: stats.get(key) for key in ("nfe", "seconds", "leftover_masks", "answer_tokens")},
                     "metrics": {name: {key: entry.get(key) for key in entry["metrics"]} for name, entry in filters.items()}})
    return rows


def _context(entry: Mapping[str, Any]) -> str:
    # In memory the arguments are [(context, gen_kwargs)]; the samples file spells them {"gen_args_0": {"arg_0": ...}}.
    arguments = entry["arguments"]
    return str(arguments["gen_args_0"]["arg_0"] if isinstance(arguments, Mapping) else arguments[0][0])


def _first(values: Any) -> str | None:
    while isinstance(values, (list, tuple)):
        if not values:
            return None
        values = values[0]
    return None if values is None else str(values)


def _binary(value: Any) -> bool:
    return isinstance(value, (int, float)) and value in (0, 1)


def _verdict(value: Any) -> bool | None:
    """A 0/1 metric as a verdict; other metrics (BLEU, F1) have none."""
    return bool(value) if _binary(value) else None
