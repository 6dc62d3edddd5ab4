"""The published protocols in dreamlab: eval score with stop strings and lm-eval's columns, BOS, the store's new columns."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.evals.harness import tokenize_prompts
from dreamlab.evals.published import published_note
from dreamlab.evals.report import _cell_text
from dreamlab.evals.scoring import score_generation
from dreamlab.evals.tasks import Sample, load_task
from dreamlab.models import build_char_tokenizer
from dreamlab.store import EvalRecord, RunStore
from dreamlab.tui.app import build_app
from dreamlab.tui.screens.evals import SamplesScreen, cell_text
from tests.conftest import SHARED_DATA
from tests.store_helpers import store_at_version

runner = CliRunner()
RUN_ON = "{work} The answer is {n}.\n\nQ: Tom has 3 boxes of 4115 pens. How many pens?\nA: 3 * 4115 = 12345. The answer is 12345."


def _generations(tmp_path):
    rows = [{"question": f"q{i}", "gold": f"work\n#### {n}", "generation": RUN_ON.format(work=f"{n} - 0 = {n}.", n=n)}
            for i, n in enumerate((18, 3, 70000, 540, 20))]
    file = tmp_path / "gen.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return file


def test_score_gsm8k_cot_cuts_run_ons_and_reports_lm_evals_columns(tmp_path):
    file = _generations(tmp_path)
    out = tmp_path / "scored.jsonl"
    result = runner.invoke(app, ["eval", "score", str(file), "--task", "gsm8k_cot", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["n"], summary["accuracy"], summary["strict_accuracy"], summary["flexible_accuracy"], summary["cut"]) == (
        5, 1.0, 1.0, 1.0, 5)
    first = json.loads(out.read_text().splitlines()[0])
    assert first["generation"].endswith("The answer is 12345.")  # the generation is kept whole
    assert first["generation"][:first["cut_at"]] == "18 - 0 = 18. The answer is 18.\n\n"
    assert (first["strict_extracted"], first["flexible_extracted"], first["extracted"]) == ("18", "18.", "18")
    # The old preset has no stop strings: every run-on's last answer wins.
    old = json.loads(runner.invoke(app, ["eval", "score", str(file), "--task", "gsm8k", "--json"]).stdout)
    assert (old["accuracy"], old["strict_accuracy"], old["flexible_accuracy"], old["cut"]) == (0.0, None, 0.0, 0)
    text = runner.invoke(app, ["eval", "score", str(file), "--task", "gsm8k_cot"])
    assert "lm-eval strict 100.0%, flexible 5/5 = 100.0%; 5 cut at a stop string" in text.output


def test_bos_comes_first_when_the_task_asks_and_is_hashed():
    task = load_task("gsm8k_cot")
    tokenizer = build_char_tokenizer()
    samples = [Sample(0, "How many?", "3")]
    plain = tokenize_prompts(task, tokenizer, samples, "base", 0)[0]
    tokenizer.bos_token = tokenizer.eos_token
    with_bos = tokenize_prompts(task, tokenizer, samples, "base", 0, add_bos=True)[0]
    assert with_bos == [tokenizer.eos_token_id, *plain] and plain == tokenizer("Q: How many?\nA:").input_ids
    assert (task.bos_for("base"), task.bos_for("chat"), task.bos_for("base", False)) == (True, False, False)
    assert task.template_hash("base", 8, True) != task.template_hash("base", 8, False)
    # Tasks made before add_bos / until / lm_eval keep their hash, so their stored evals still resume.
    assert load_task("gsm8k").template_hash("base", 8) == "7c30d2542112"
    assert load_task("arithmetic").template_hash("chat", 0) == "b5469edd93e7"


def test_eval_records_template_bos_cut_and_lm_eval_columns(tmp_path):
    data = tmp_path / "gsm.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(3)))
    db = tmp_path / "db.sqlite"
    args = ["eval", "--model", "tiny", "--task", "gsm8k_cot", "--data", str(data), "--shots", "0", "--max-new-tokens", "8",
            "--steps", "8", "--db", str(db)]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2
    assert refused.output.strip().splitlines()[-1] == ("error: task gsm8k_cot starts prompts with BOS (prompt.add_bos) but the tokenizer "
                                      "has no BOS token: pass --no-bos")
    result = runner.invoke(app, [*args, "--no-bos", "--json"])
    assert result.exit_code == 0, result.output
    record = RunStore(db).list_evals()[0]
    assert (record.template, record.add_bos, record.shots, record.n_done) == ("base", False, 0, 3)
    samples = RunStore(db).eval_samples(record.id)
    assert record.strict_accuracy == sum(bool(s["strict_correct"]) for s in samples) / 3
    assert record.flexible_accuracy == sum(bool(s["flexible_correct"]) for s in samples) / 3
    assert all(s["cut_at"] is None or 0 <= s["cut_at"] < len(s["generation"]) for s in samples)
    exported = json.loads(result.stdout)[0]
    assert (exported["template"], exported["add_bos"], exported["strict_accuracy"]) == ("base", False, record.strict_accuracy)


def test_samples_keep_cut_and_strict_verdict_and_a_v5_store_gains_the_columns(tmp_path):
    path = store_at_version(tmp_path / "v5.db", 5,
                            "INSERT INTO evals (id, task, settings_key, status, accuracy) VALUES (1, 'gsm8k', 'k', 'completed', 0.5)")
    store = RunStore(path)
    old = store.get_eval(1)
    assert (old.accuracy, old.strict_accuracy, old.flexible_accuracy, old.template, old.add_bos) == (0.5, None, None, None, None)
    store.record_eval_samples(1, [{"idx": 0, "generation": "The answer is 18.\n\nQ: x", "cut_at": 19, "correct": True,
                                   "strict_correct": True, "strict_extracted": "18", "flexible_correct": False}])
    sample = store.eval_samples(1)[0]
    assert (sample["cut_at"], sample["strict_correct"], sample["strict_extracted"], sample["flexible_correct"]) == (19, 1, "18", 0)
    finished = store.finish_eval(1, "completed", {"strict_accuracy": 1.0, "flexible_accuracy": 0.0})
    assert (finished.strict_accuracy, finished.flexible_accuracy) == (1.0, 0.0)


def _dream_base_record(**overrides):
    settings = dict(id=1, task="gsm8k_cot", status="completed", settings_key="k", model="Dream-org/Dream-v0-Base-7B",
                    template="base", shots=8, max_new_tokens=256, steps=256, alg="entropy", temperature=0.0, top_p=0.95,
                    accuracy=0.75, strict_accuracy=0.7, flexible_accuracy=0.76, ci_low=0.72, ci_high=0.78, nfe_mean=256.0)
    return EvalRecord(**{**settings, **overrides})


def test_published_results_show_beside_a_matching_cell_only():
    note = "published 77.2 (Dream 7B blog, hkunlp.github.io/blog/2025/dream)"
    assert published_note(_dream_base_record()) == note
    assert published_note(_dream_base_record(model="/ckpts/dream-v0-base-7b/")) == note  # a local copy, by folder name
    for differs in ({"shots": 0}, {"template": "chat"}, {"steps": 128}, {"alg": "origin"}, {"limit_n": 100},
                    {"model": "Dream-org/Dream-v0-Instruct-7B"}, {"template": None}, {"block_length": 32},
                    {"block_length": 32, "cache": "dual"}, {"block_length": 32, "threshold": 0.9}, {"factor": 1.0},
                    {"gamma": 0.1}, {"commit_gap": 2.0}):  # a cache or a rule is not the published protocol
        assert published_note(_dream_base_record(**differs)) is None, differs
    assert published_note(_dream_base_record(block_length=256)) == note  # one block as long as the answer is no block
    cell = _cell_text(_dream_base_record())
    assert cell.splitlines()[-2:] == ["lm-eval strict 70.0% · flexible 76.0%", note]
    assert str(cell_text(_dream_base_record())) == f"75.0% ±3.0 nfe 256 lm-eval 70.0/76.0 · {note}"
    llada = _dream_base_record(task="minerva_math", model="GSAI-ML/LLaDA-8B-Base", shots=4, max_new_tokens=1024, steps=1024)
    assert published_note(llada) == "published 31.4 (ML-GSAI/LLaDA EVAL.md)"


def test_samples_screen_shows_the_raw_generation_the_cut_and_lm_evals_verdict(tmp_path):
    store = RunStore(tmp_path / "dreamlab.db")
    record = store.create_or_resume_eval({"task": "gsm8k_cot", "alg": "entropy", "steps": 8})
    generation = "The answer is 18.\n\nQ: more\nA: The answer is 5."
    store.record_eval_samples(record.id, [{"idx": 0, "question": "q", "gold": "18", "generation": generation, "cut_at": 19,
                                           "extracted": "18", "correct": True, "strict_extracted": "18",
                                           "strict_correct": True, "flexible_extracted": "18.", "flexible_correct": True}])
    record = store.get_eval(record.id)
    store.close()

    async def scenario():
        app = build_app(tmp_path / "dreamlab.db", poll_s=0)
        async with app.run_test(size=(100, 40)) as pilot:
            app.push_screen(SamplesScreen(record))
            for _ in range(300):
                await pilot.pause(0.05)
                if isinstance(app.screen, SamplesScreen) and app.screen.samples:
                    break
            detail = str(app.screen.query_one("#sample-detail").render())
            assert "generation: The answer is 18.\n\n✂Q: more\nA: The answer is 5.\n" in detail
            assert "lm-eval strict: 18\n" in detail and "flexible: 18.\n" in detail
            assert "cut at character 19 by a stop string" in detail
            assert "main / lm-eval strict / flexible: ✓ ✓ ✓" in detail

    asyncio.run(scenario())


BASE = "name: x\nsource: {builtin: arithmetic}\n"


@pytest.mark.parametrize("body, message", [
    (BASE + "until: 'Q:'\n", "bad.yaml:3: until: must be a list of non-empty strings"),
    (BASE + "until: ['Q:', '']\n", "bad.yaml:3: until: must be a list of non-empty strings"),
    (BASE + "answer:\n  lm_eval: gsm8k\n", "bad.yaml:4: answer.lm_eval: must be one of gsm8k_cot, minerva; got 'gsm8k'"),
    (BASE + "answer:\n  lm_eval: minerva\n", "bad.yaml:4: answer.lm_eval: minerva scoring needs the worked solution"),
    (BASE + "prompt:\n  add_bos: 'yes'\n", "bad.yaml:4: prompt.add_bos: must be true or false; got 'yes'"),
    (BASE + "prompt:\n  chat_shots: 9\n", "bad.yaml:4: prompt.chat_shots: must be an integer from 0 to the number"),
    (BASE + "source:\n  hub: a/b\n  subsets: algebra\n", "bad.yaml:4: source.subsets: must be a list of data set configuration names"),
    (BASE + "published:\n  - model: m\n    value: 77.2\n", "bad.yaml:4: published.0: missing max_new_tokens, shots, source, steps, template"),
    (BASE + "published:\n  - {model: m, value: high, source: s, template: base, shots: 0, max_new_tokens: 8, steps: 8}\n",
     "bad.yaml:4: published.0.value: must be a number (percent); got 'high'"),
    (BASE + "published:\n  - {model: m, value: 1, source: s, template: base, shots: 0, max_new_tokens: 8, steps: 8, gpu: a100}\n",
     "bad.yaml:4: published.0.gpu: unknown field"),
])
def test_bad_protocol_fields_name_the_file_line_and_field(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body.replace("source: {builtin: arithmetic}\nsource:", "source:"))
    result = runner.invoke(app, ["eval", "score", str(_generations(tmp_path)), "--task", str(path)])
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"error: {path.parent}/") and message in line, line


def test_minerva_math_reads_every_subject_from_the_hub_in_lm_evals_order(monkeypatch):
    import datasets

    calls = []

    def fake_load(hub, subset, split):
        calls.append((hub, subset, split))
        return [{"problem": f"{subset} problem", "solution": f"so \\boxed{{{len(calls)}}}", "level": "Level 1", "type": subset}]
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    samples = load_task("minerva_math").load_samples()
    assert [subset for _, subset, _ in calls] == ["algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                                                  "number_theory", "prealgebra", "precalculus"]
    assert {(hub, split) for hub, _, split in calls} == {("EleutherAI/hendrycks_math", "test")}
    assert [(s.idx, s.gold, s.reference) for s in samples[:2]] == [(0, "1", "so \\boxed{1}"), (1, "2", "so \\boxed{2}")]


@pytest.mark.skipif(not (SHARED_DATA / "math500" / "test.jsonl").is_file(), reason="../shared/data is absent")
def test_minerva_math_main_verdict_passes_every_math500_solution():
    """The scorer is honest: each MATH-500 solution, as a generation, verifies against its own last box (minerva_math's gold)."""
    task = load_task("minerva_math")
    samples = task.load_samples(data=str(SHARED_DATA / "math500" / "test.jsonl"))
    misses = [s.idx for s in samples if not score_generation(s.reference, s.gold, extractor=task.extractor).correct]
    assert (len(samples), misses) == (500, [])


def test_score_minerva_math_judges_against_the_solution_and_names_a_boxless_one(tmp_path):
    final = "\nFinal Answer: The final answer is ${}$. I hope it is correct."
    rows = [{"gold": "So $\\boxed{\\frac{1}{2}}$.", "generation": "x = \\frac12." + final.format("\\frac12")},
            {"gold": "It is $\\boxed{24}$.", "generation": "\\[\\boxed{24}\\]\n\nProblem:\nNext one." + final.format("7")},
            {"gold": "It is $\\boxed{24}$.", "generation": "It is 25." + final.format("25")}]
    file = tmp_path / "math.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "scored.jsonl"
    summary = json.loads(runner.invoke(app, ["eval", "score", str(file), "--task", "minerva_math", "--json", "--out", str(out)]).stdout)
    assert (summary["correct"], summary["strict_accuracy"], summary["flexible_accuracy"], summary["cut"]) == (2, 1 / 3, 2 / 3, 1)
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["extracted"], r["strict_extracted"], r["cut_at"]) for r in scored] == [
        ("\\frac12", "\\frac{1}{2}", None), ("24", None, 16), ("25", "25", None)]
    file.write_text(json.dumps({"gold": "no box here", "generation": "1"}) + "\n")
    result = runner.invoke(app, ["eval", "score", str(file), "--task", "minerva_math"])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: {file}:1: gold: the reference solution has no \\boxed{{}} answer"
