"""The lm-eval bridge: dreamlab's sampler as an lm-eval model, results in the run store (offline, tiny model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="the lm-eval bridge needs the optional extra dreamlab[lm-eval]")

from lm_eval.api.instance import Instance  # noqa: E402

from dreamlab.diffusion.sampler import generate  # noqa: E402
from dreamlab.evals.harness import cut_at_eos  # noqa: E402
from dreamlab.evals.lm_eval.__main__ import main  # noqa: E402
from dreamlab.evals.lm_eval.args import parse_model_args  # noqa: E402
from dreamlab.evals.lm_eval.model import DreamlabLM  # noqa: E402
from dreamlab.evals.lm_eval.record import eval_settings, prompt_hash, sample_rows  # noqa: E402
from dreamlab.evals.stats import summarize  # noqa: E402
from dreamlab.models import build_char_tokenizer, build_tiny_model  # noqa: E402
from dreamlab.models.loading import load_model_and_tokenizer  # noqa: E402
from dreamlab.store import RunStore  # noqa: E402

TASKS = Path(__file__).parent / "lm_eval_tasks"
QUESTIONS = ["What is 2 + 3?", "What is 10 - 4?", "What is 7 * 6?", "Name a colour."]
UNTIL = ["w", "Q:", "<|endoftext|>"]  # the task's until strings, then lm-eval adds the EOS text
SEED, STEPS, MAX_GEN_TOKS = 5, 8, 16


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    build_tiny_model(seed=0, initializer_range=0.1).save_pretrained(folder)
    build_char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Work in tmp_path with the hub unreachable and datasets' cache there."""
    import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    torch.set_num_threads(1)
    return tmp_path


def sampler_reference(folder: Path, prompts: list[str]) -> tuple[list[str], list[str], list[int]]:
    """dreamlab's own sampler on each prompt alone (seed + doc_id): the text cut at EOS, then at the until strings,
    and how many generated ids decode within the until-cut text."""
    model, tokenizer = load_model_and_tokenizer(str(folder), device="cpu")
    raw, cut, kept = [], [], []
    for doc_id, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        out = generate(model, torch.tensor([ids]), None, max_new_tokens=MAX_GEN_TOKS, steps=STEPS, alg="entropy",
                       seed=[SEED + doc_id])
        generated = cut_at_eos(tokenizer, out.sequences[0, len(ids):].tolist())
        text = tokenizer.decode(generated)
        raw.append(text)
        for stop in UNTIL:
            text = text.split(stop)[0]
        cut.append(text)
        kept.append(sum(1 for k in range(1, len(generated) + 1) if len(tokenizer.decode(generated[:k])) <= len(text)))
    return raw, cut, kept


@pytest.mark.slow
def test_an_lm_eval_task_runs_through_the_bridge_into_the_store(tiny_folder, offline):
    prompts = [f"Q: {question}\nA:" for question in QUESTIONS]
    raw, expected, kept = sampler_reference(tiny_folder, prompts)
    assert any(r != e for r, e in zip(raw, expected))  # an until string really cut something
    targets = [text if doc_id % 2 == 0 else "never" for doc_id, text in enumerate(expected)]
    with open("dreamlab_local_rows.jsonl", "w") as rows:
        for question, target in zip(QUESTIONS, targets):
            rows.write(json.dumps({"question": question, "target": target}) + "\n")
    db = offline / "store.db"
    command = ["--store", str(db), "--model", "dreamlab", "--model_args",
               f"pretrained={tiny_folder},alg=entropy,steps={STEPS},max_new_tokens=64,seed={SEED}",
               "--tasks", "dreamlab_local", "--include_path", str(TASKS), "--batch_size", "1"]
    assert main(command) == 0
    with RunStore(db) as store:
        [record] = store.list_evals()
        samples = store.eval_samples(record.id)
    assert (record.task, record.status, record.model, record.checkpoint) == (
        "lm-eval:dreamlab_local", "completed", str(tiny_folder), str(tiny_folder.resolve()))
    # the task's max_gen_toks (16) wins over model_args' max_new_tokens (64), as in lm-eval's HF model
    assert (record.alg, record.steps, record.max_new_tokens, record.seed, record.shots) == ("entropy", STEPS, 16, SEED, 0)
    assert (record.n_done, record.n_correct, record.accuracy) == (4, 2, 0.5)
    # no strict-match / flexible-extract filter: no lm-eval-named accuracies, as `dreamlab eval` for such a task
    assert (record.template, record.add_bos, record.strict_accuracy, record.flexible_accuracy) == ("base", False, None, None)
    assert record.metrics == {"exact_match,none": 0.5, "exact_match_stderr,none": pytest.approx(math.sqrt(1 / 12))}
    assert (record.versions["lm_eval"], record.versions["lm_eval_task"]) == (lm_eval.__version__, "1.0")
    # the generation is kept whole (up to EOS), cut_at marks the until-cut, answer tokens count the ids before it
    assert [s["generation"] for s in samples] == raw
    assert [s["cut_at"] for s in samples] == [len(e) if e != r else None for r, e in zip(raw, expected)]
    assert [s["generation"][:s["cut_at"]] for s in samples] == expected
    assert [s["answer_tokens"] for s in samples] == kept
    assert record.wall_seconds == pytest.approx(sum(s["seconds"] for s in samples))
    assert record.answer_tokens_per_s == pytest.approx(sum(kept) / record.wall_seconds)
    assert record.tokens_per_forward == 4 * 16 / sum(s["nfe"] for s in samples)
    assert [(s["strict_correct"], s["flexible_correct"]) for s in samples] == [(None, None)] * 4
    assert [s["question"] for s in samples] == prompts
    assert [s["gold"] for s in samples] == targets
    assert [s["correct"] for s in samples] == [1, 0, 1, 0]
    assert [s["metrics"] for s in samples] == [{"none": {"exact_match": float(c)}} for c in (1, 0, 1, 0)]
    assert {s["nfe"] for s in samples} == {STEPS} and all(s["seconds"] > 0 for s in samples)
    assert main(command) == 0  # the same command again rewrites the same eval
    with RunStore(db) as store:
        assert [(e.id, e.n_done, e.accuracy) for e in store.list_evals()] == [(record.id, 4, 0.5)]


GSM8K_ROWS = [{"question": "Tom has 2 apples and buys 3 more. How many apples does he have?", "answer": "2 + 3 = 5\n#### 5"},
              {"question": "A box holds 12 eggs. How many eggs are in 2 boxes?", "answer": "12 * 2 = 24\n#### 24"},
              {"question": "Sam had $1,000 and spent $1. How much is left?", "answer": "1000 - 1 = 999\n#### 999"}]


@pytest.mark.slow
def test_lm_eval_gsm8k_cot_itself_runs_on_local_rows_with_both_filters_stored(tiny_folder, offline):
    """lm-eval's own gsm8k_cot config (0-shot, so the prompt fits the tiny model), its dataset swapped for local rows."""
    from lm_eval.filters.extraction import RegexFilter

    with open("gsm8k_rows.jsonl", "w") as rows:
        rows.writelines(json.dumps(row) + "\n" for row in GSM8K_ROWS)
    tasks = offline / "tasks"
    tasks.mkdir()
    (tasks / "gsm8k_cot_local.yaml").write_text(
        f"include: {Path(lm_eval.__file__).parent / 'tasks' / 'gsm8k' / 'gsm8k-cot.yaml'}\ntask: gsm8k_cot_local\n"
        "dataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n    test: gsm8k_rows.jsonl\n")
    db = offline / "store.db"
    assert main(["--store", str(db), "--model", "dreamlab", "--model_args", f"pretrained={tiny_folder},steps=8,max_new_tokens=16",
                 "--tasks", "gsm8k_cot_local", "--include_path", str(tasks), "--num_fewshot", "0"]) == 0
    with RunStore(db) as store:
        [record] = store.list_evals()
        samples = store.eval_samples(record.id)
    assert (record.task, record.shots, record.max_new_tokens, record.n_done) == ("lm-eval:gsm8k_cot_local", 0, 16, 3)
    assert set(record.metrics) == {f"exact_match{part},{name}" for part in ("", "_stderr")
                                   for name in ("strict-match", "flexible-extract")}
    assert [s["question"] for s in samples] == [f"Q: {row['question']}\nA:" for row in GSM8K_ROWS]
    assert [s["gold"] for s in samples] == ["5", "24", "999"]
    flexible = RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
    assert [s["flexible_extracted"] for s in samples] == [
        list(flexible.apply([[s["generation"]]], [{}]))[0][0] for s in samples]
    assert all(set(s["metrics"]) == {"strict-match", "flexible-extract"} for s in samples)
    # the columns `dreamlab eval` fills for gsm8k_cot: strict and flexible verdicts from lm-eval's own filters
    assert [s["strict_correct"] for s in samples] == [bool(s["metrics"]["strict-match"]["exact_match"]) for s in samples]
    assert [s["flexible_correct"] for s in samples] == [bool(s["metrics"]["flexible-extract"]["exact_match"])
                                                        for s in samples]
    assert [s["correct"] for s in samples] == [int(s["strict_correct"]) for s in samples]
    strict = RegexFilter(regex_pattern=r"The answer is (\-?[0-9\.\,]+).", group_select=0)
    assert [s["strict_extracted"] for s in samples] == [
        list(strict.apply([[s["generation"][:s["cut_at"]]]], [{}]))[0][0] for s in samples]
    assert record.strict_accuracy == record.metrics["exact_match,strict-match"] == record.accuracy
    assert record.flexible_accuracy == record.metrics["exact_match,flexible-extract"]
    assert (record.template, record.add_bos) == ("base", False)
    for s in samples:  # the scored text is the generation before its cut, and "Q:" (or EOS) is what cut it
        assert "Q:" not in s["generation"][:s["cut_at"]]
        assert s["cut_at"] is None or s["generation"][s["cut_at"]:].startswith(("Q:", "</s>", "<|im_end|>"))
        assert s["answer_tokens"] <= 16 and s["nfe"] <= 8


def test_model_args_are_checked_by_key():
    parsed = parse_model_args({"pretrained": "tiny", "steps": "8", "alg": "entropy", "top_p": 1, "add_bos_token": "true"})
    assert parsed.settings().max_new_tokens == 256 and parsed.settings(32).steps == 8
    assert (parsed.sampler["top_p"], parsed.add_bos_token) == (1.0, True)
    fast = parse_model_args({"pretrained": "tiny", "steps": "32", "alg": "entropy", "block_length": "32", "cache": "dual",
                             "threshold": "0.9"}).settings(64)
    assert (fast.block_length, fast.cache, fast.threshold, fast.max_new_tokens) == (32, "dual", 0.9, 64)
    for values, message in (({"pretrained": "tiny", "steps": 8, "stepz": 3}, "unknown key 'stepz'"),
                            ({"steps": 8}, "pretrained= is required"),
                            ({"pretrained": "tiny"}, "steps= is required"),
                            ({"pretrained": "tiny", "steps": "many"}, "steps must be int; got 'many'"),
                            ({"pretrained": "tiny", "steps": 8, "alg": "greedy"}, "alg must be one of"),
                            ({"pretrained": "tiny", "steps": 8, "cache": "dual"}, "cache=dual needs block_length")):
        with pytest.raises(ValueError, match=message):
            parse_model_args(values)


def test_a_missing_checkpoint_is_one_line_naming_pretrained(tmp_path, capsys):
    status = main(["--store", str(tmp_path / "s.db"), "--model", "dreamlab", "--model_args",
                   f"pretrained={tmp_path / 'nothing'},steps=4", "--tasks", "dreamlab_local", "--include_path", str(TASKS)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1
    assert err.startswith(f"error: model_args pretrained={tmp_path / 'nothing'}: no model at") and not (tmp_path / "s.db").exists()


def test_likelihood_requests_are_refused_by_name(tiny_folder):
    lm = DreamlabLM(pretrained=str(tiny_folder), steps=4)
    request = Instance("loglikelihood", doc={}, arguments=("Q:", " 5"), idx=0, metadata=("arc_easy", 0, 1))
    with pytest.raises(NotImplementedError, match="generative tasks only .*arc_easy asks for loglikelihood"):
        lm.loglikelihood([request])


def test_a_flexible_extract_filter_fills_the_flexible_columns():
    logged = [{"doc_id": 0, "filter": "strict-match", "metrics": ["exact_match"], "exact_match": 0.0, "target": "18",
               "arguments": {"gen_args_0": {"arg_0": "Q: x\n\nA:", "arg_1": {}}}, "resps": [["so 18 dollars"]],
               "filtered_resps": ["[invalid]"]},
              {"doc_id": 0, "filter": "flexible-extract", "metrics": ["exact_match"], "exact_match": 1.0, "target": "18",
               "arguments": {"gen_args_0": {"arg_0": "Q: x\n\nA:", "arg_1": {}}}, "resps": [["so 18 dollars"]],
               "filtered_resps": ["18"]}]
    stats = {"generation": "so 18 dollars\nQ: y", "cut_at": 13, "answer_tokens": 4, "nfe": 3, "seconds": 0.5,
             "leftover_masks": 0}
    [row] = sample_rows(logged, {"0": stats})
    assert row == {"idx": 0, "question": "Q: x\n\nA:", "gold": "18", "generation": "so 18 dollars\nQ: y", "cut_at": 13,
                   "extracted": "[invalid]", "correct": False, "strict_correct": False, "strict_extracted": "[invalid]",
                   "flexible_correct": True, "flexible_extracted": "18", "nfe": 3, "seconds": 0.5, "leftover_masks": 0,
                   "answer_tokens": 4, "metrics": {"strict-match": {"exact_match": 0.0},
                                                   "flexible-extract": {"exact_match": 1.0}}}
    summary = summarize([row], max_new_tokens=16, total=1)
    assert (summary["accuracy"], summary["strict_accuracy"], summary["flexible_accuracy"]) == (0.0, 0.0, 1.0)
    assert (summary["answer_tokens_per_s"], summary["tokens_per_forward"]) == (8.0, 16 / 3)


def _request(doc_id: int, context: str, task: str = "t", **gen_kwargs) -> Instance:
    return Instance("generate_until", doc={}, arguments=(context, gen_kwargs), idx=0, metadata=(task, doc_id, 1))


def test_batched_requests_come_back_in_order_and_equal_one_by_one(tiny_folder):
    torch.set_num_threads(1)
    one, four = (DreamlabLM(pretrained=str(tiny_folder), steps=4, max_new_tokens=8, alg="entropy", batch_size=size)
                 for size in (1, 4))
    for lm in (one, four):
        lm.model.to(torch.float64)  # float64: batched matmuls never meet a float tie
    requests = [_request(doc_id, "Q: " + "x" * length, until=["\n"])
                for doc_id, length in enumerate((9, 2, 5, 2, 14))]
    texts = one.generate_until(requests, disable_tqdm=True)
    assert len(set(texts)) == 4  # docs 1 and 3 share a prompt; greedy, so their text too
    assert four.generate_until(requests, disable_tqdm=True) == texts
    assert four.generated["t"].keys() == {0, 1, 2, 3, 4} and four.task_settings["t"].max_new_tokens == 8
    # a request's max_gen_toks wins over max_new_tokens; within one task every request must agree
    one.generate_until([_request(0, "Q: 1", task="u", max_gen_toks=16)], disable_tqdm=True)
    assert one.task_settings["u"].max_new_tokens == 16
    with pytest.raises(ValueError, match="different generation lengths"):
        DreamlabLM(pretrained=str(tiny_folder), steps=4).generate_until(
            [_request(0, "Q:", max_gen_toks=8), _request(1, "Q:", max_gen_toks=16)], disable_tqdm=True)


def test_bos_and_chat_template_follow_the_tokenizer(tiny_folder):
    with pytest.raises(ValueError, match="add_bos_token: the tokenizer of .* has no BOS token"):
        DreamlabLM(pretrained=str(tiny_folder), steps=4, add_bos_token=True)
    lm = DreamlabLM(pretrained=str(tiny_folder), steps=4)
    assert lm.encode("Q:") == lm.tokenizer("Q:", add_special_tokens=False).input_ids
    assert lm.apply_chat_template([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_the_prompt_hash_follows_the_prompt_not_the_model_args():
    def results(config: dict, **extra) -> dict:
        return {"configs": {"t": config}, "versions": {"t": 1.0}, "config": {"fewshot_seed": 1234}, **extra}

    config = {"doc_to_text": "Q: {{question}}", "process_docs": "<function process_docs at 0x7f3a2b1c>",
              "metadata": {"version": 1.0, "pretrained": "a", "steps": 8}}
    base = prompt_hash(results(config), {"add_bos_token": False}, "t")
    moved = {**config, "process_docs": "<function process_docs at 0x55d0e1f0>", "metadata": {"pretrained": "b"}}
    assert prompt_hash(results(moved), {"add_bos_token": False}, "t") == base
    assert prompt_hash(results(config), {"add_bos_token": True}, "t") != base
    assert prompt_hash(results(config, chat_template="{{m}}"), {"add_bos_token": False}, "t") != base
    assert prompt_hash(results({**config, "doc_to_text": "Q: {{question}}\n"}), {"add_bos_token": False}, "t") != base


def test_the_eval_records_its_template_and_bos_as_dreamlab_eval_does(tmp_path):
    info = {"checkpoint": None, "pretrained": "tiny", "add_bos_token": True, "batch_size": 1, "seed": 0, "device": "cpu",
            "tasks": {"t": {"settings": {"alg": "entropy", "steps": 8, "max_new_tokens": 16}, "samples": {}}}}
    results = {"configs": {"t": {"doc_to_text": "Q: {{question}}"}}, "versions": {"t": 1.0}, "n-shot": {"t": 0},
               "config": {"limit": None}, "lm_eval_version": "0.4.13"}
    with RunStore(tmp_path / "s.db") as store:
        base = eval_settings(store, results, info, "t", 2)
        chat = eval_settings(store, {**results, "chat_template": "{{m}}"}, info, "t", 2)
    assert (base["template"], base["add_bos"], base["task"], base["limit_n"]) == ("base", True, "lm-eval:t", None)
    assert (chat["template"], chat["add_bos"]) == ("chat", True) and chat["template_hash"] != base["template_hash"]
