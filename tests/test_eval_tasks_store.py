"""Task files (shipped and broken ones), eval grids and the run store's eval tables."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from dreamlab.evals.grid import grid_cells
from dreamlab.evals.tasks import TaskError, available_tasks, load_task
from dreamlab.models import build_char_tokenizer
from dreamlab.store import SCHEMA_VERSION, RunStore, StoreError
from dreamlab.store.evals import settings_key
from dreamlab.store.models import ModelChoice, choose_model
from dreamlab.store.schema import migrate
from tests.conftest import SHARED_DATA


def test_shipped_tasks_load_and_render():
    assert {"arithmetic", "gsm8k", "math500", "jsonl"} <= set(available_tasks())
    gsm8k = load_task("gsm8k")
    assert gsm8k.shots == 8 and len(gsm8k.fewshot) == 8 and gsm8k.sampler["steps"] == 256
    prompt = gsm8k.render("What is 2 + 2?", None, "base", 2)
    assert prompt.count("Question:") == 3 and prompt.endswith("Question: What is 2 + 2?\nAnswer:")
    assert gsm8k.settings_for("chat")["temperature"] == 0.1 and gsm8k.settings_for("base")["temperature"] == 0.0
    assert gsm8k.template_hash("base", 8) != gsm8k.template_hash("base", 7) != gsm8k.template_hash("chat", 7)
    assert gsm8k.gold_answer("so...\n#### 2,125") == "2125"
    arithmetic = load_task("arithmetic")
    samples = arithmetic.load_samples(limit=3)
    assert [s.idx for s in samples] == [0, 1, 2] and samples[0].gold.lstrip("-").isdigit()
    chat = arithmetic.render(samples[0].question, build_char_tokenizer(), "chat", 0)
    assert chat == f"<|im_start|>user\n{samples[0].question}<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the reference data (../shared/data beside the repo) is not present")
def test_gsm8k_and_math500_read_the_reference_files():
    assert len(load_task("gsm8k").load_samples(data=str(SHARED_DATA / "gsm8k" / "test.jsonl"))) == 1319
    math500 = load_task("math500").load_samples(limit=2, data=str(SHARED_DATA / "math500" / "test.jsonl"))
    assert math500[0].gold == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_jsonl_task_reads_the_named_file_and_fields(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"q": "1+1?", "a": "2"}\n{"q": "2+2?", "a": "4"}\n')
    task = load_task("jsonl")
    with pytest.raises(TaskError, match="pass --data"):
        task.load_samples()
    with pytest.raises(TaskError, match="no field 'question'"):
        task.load_samples(data=str(data))
    task.question_field, task.gold_field = "q", "a"
    assert [(s.question, s.gold) for s in task.load_samples(data=str(data))] == [("1+1?", "2"), ("2+2?", "4")]


@pytest.mark.parametrize("body, message", [
    ("name: x\nsource: {builtin: arithmetic}\nanswer:\n  extractor: nope\n", r"bad\.yaml:4: answer\.extractor: must be one of"),
    ("name: x\nsource: {builtin: arithmetic}\nprompt:\n  shots: 9\n", r"bad\.yaml:4: prompt\.shots: must be an integer from 0 to the number of fewshot examples \(8\)"),
    ("name: x\nsource: {builtin: arithmetic}\nsampler:\n  stepz: 3\n", r"bad\.yaml:4: sampler\.stepz: unknown sampler setting"),
    ("name: x\nsauce: 1\n", r"bad\.yaml:2: sauce: unknown field"),
    ("name: x\nsource: [1\n", r"bad\.yaml:\d+: not valid YAML"),
    ("name: x\nsource: {builtin: arithmetic}\nfewshot:\n  - question: q\n", r"bad\.yaml:4: fewshot\.0: each example needs"),
])
def test_bad_task_files_name_the_file_line_and_field(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(TaskError, match=message):
        load_task(str(path))


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(TaskError, match="unknown task 'nope': use one of arithmetic"):
        load_task("nope")


SETTINGS = {"task": "arithmetic", "shots": 0, "template_hash": "abc", "alg": "entropy", "steps": 8,
            "max_new_tokens": 8, "temperature": 0.0, "batch_size": 4, "seed": 0, "versions": {"torch": "x"},
            "device": "cpu", "model": "tiny", "n_samples": 3}


def test_eval_rows_resume_by_settings_and_cascade_with_their_run(tmp_path):
    store = RunStore(tmp_path / "db.sqlite")
    run = store.create_run(name="r1")
    first = store.create_or_resume_eval({**SETTINGS, "run_id": run.id, "checkpoint": "/c/step-1"})
    store.record_eval_samples(first.id, [{"idx": 0, "correct": True, "nfe": 8}, {"idx": 2, "correct": False, "nfe": 8}])
    assert store.done_sample_indices(first.id) == {0, 2}
    store.finish_eval(first.id, "interrupted", {"n_done": 2})
    again = store.create_or_resume_eval({**SETTINGS, "run_id": run.id, "checkpoint": "/c/step-1", "model": "r1"})
    assert again.id == first.id and again.status == "running" and (again.n_done, again.n_correct) == (2, 1)
    other = store.create_or_resume_eval({**SETTINGS, "run_id": run.id, "checkpoint": "/c/step-1", "steps": 16})
    assert other.id != first.id
    done = store.finish_eval(first.id, "completed", {"accuracy": 0.5, "ci_low": 0.1, "ci_high": 0.9})
    assert done.status == "completed" and done.ended is not None and (done.accuracy, done.n_done) == (0.5, 2)
    assert store.finish_eval(other.id, "failed", {"accuracy": 0.3}).accuracy == 0.3
    assert store.finish_eval(other.id, "failed", {"accuracy": None}).accuracy is None  # named: set, even to NULL
    assert store.create_or_resume_eval({**SETTINGS, "run_id": run.id, "checkpoint": "/c/step-1"}).status == "completed"
    assert store.best_eval_accuracy() == store.best_eval_accuracy([run.id]) == {run.id: 0.5}
    assert store.best_eval_accuracy([]) == {}
    assert [e.id for e in store.list_evals(run_ref="r1")] == [first.id, other.id]
    assert [e.id for e in store.list_evals(checkpoint="/c/step-1", grid_id=None)] == [first.id, other.id]
    assert store.list_evals(checkpoint="/elsewhere") == []
    assert store.eval_samples(first.id)[0]["correct"] == 1
    with pytest.raises(StoreError, match="unknown eval settings"):
        store.create_or_resume_eval({**SETTINGS, "colour": "red"})
    with pytest.raises(StoreError, match="cannot finish"):
        store.finish_eval(first.id, "running")
    store.delete_run(run.id)
    assert store.list_evals() == [] and store.eval_samples(first.id) == []


def test_sampler_settings_added_after_v3_keep_the_keys_of_earlier_evals():
    assert settings_key(SETTINGS) == "ecd73d83b93fc37685709616"  # what the v3 key fields gave
    assert settings_key({**SETTINGS, "eps": 1e-3, "elide_noop_steps": True}) == settings_key(SETTINGS)
    assert settings_key({**SETTINGS, "eps": 0.01}) != settings_key(SETTINGS)


def test_an_evals_table_gains_a_column_per_new_sampler_setting_with_its_default(tmp_path):
    path = tmp_path / "v5.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, target=SCHEMA_VERSION - 1)
    conn.execute("INSERT INTO evals (id, task, settings_key, status) VALUES (1, 'arithmetic', 'k', 'completed')")
    conn.close()
    with RunStore(path) as store:
        old = store.get_eval(1)
        assert (old.eps, old.elide_noop_steps, old.alg) == (1e-3, True, None)
        new = store.create_or_resume_eval({**SETTINGS, "eps": 0.01, "elide_noop_steps": False})
        assert (new.eps, new.elide_noop_steps) == (0.01, False)


def test_a_grid_is_every_combination_over_the_task_defaults_in_loop_order():
    cells = grid_cells({"alg": "entropy,origin", "steps": "4,8", "temperature": 0.5}, {"max_new_tokens": 8, "top_p": 0.9},
                       "t")
    assert [(c.alg, c.steps) for c in cells] == [("entropy", 4), ("entropy", 8), ("origin", 4), ("origin", 8)]
    assert {(c.max_new_tokens, c.temperature, c.top_p, c.eps) for c in cells} == {(8, 0.5, 0.9, 1e-3)}
    assert [c.elide_noop_steps for c in grid_cells({"steps": "4", "elide_noop_steps": "true,false"}, {"max_new_tokens": 8},
                                                   "t")] == [True, False]
    with pytest.raises(ValueError, match="task t sets no default steps: pass --steps"):
        grid_cells({}, {"max_new_tokens": 8}, "t")
    with pytest.raises(ValueError, match="--steps must be a comma list of ints"):
        grid_cells({"steps": "4,x"}, {"max_new_tokens": 8}, "t")
    with pytest.raises(ValueError, match="alg must be one of"):
        grid_cells({"alg": "greedy", "steps": "4"}, {"max_new_tokens": 8}, "t")


def test_which_model_a_run_a_folder_or_a_name_means(tmp_path):
    store = RunStore(tmp_path / "db.sqlite")
    run, neighbour = store.create_run(name="r1"), store.create_run(name="r1x")
    folder = Path(run.run_dir) / "checkpoints" / "step-1" / "model"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    assert choose_model(store.path) == ModelChoice("tiny")
    assert choose_model(store.path, model=str(folder)) == ModelChoice(str(folder), str(folder.resolve()), run.id)
    other = Path(neighbour.run_dir) / "model"  # r1x's folder starts with r1's name but is not inside it
    other.mkdir(parents=True)
    (other / "config.json").write_text("{}")
    assert choose_model(store.path, model=str(other)).run_id == neighbour.id
    store.record_checkpoint(run.id, 1, folder)
    assert choose_model(store.path) == ModelChoice("latest", str(folder.resolve()), run.id)
    assert choose_model(store.path, run="r1") == ModelChoice("r1", str(folder.resolve()), run.id)
    assert choose_model(store.path, model="org/name") == ModelChoice("org/name")
    with pytest.raises(FileNotFoundError, match="no model at"):
        choose_model(store.path, model=str(tmp_path))
    with pytest.raises(ValueError, match="give --run or --model, not both"):
        choose_model(store.path, model="tiny", run="r1")
    with pytest.raises(FileNotFoundError, match="no run store"):
        choose_model(tmp_path / "none.db", run="r1")
