"""`dreamlab eval` end to end: a grid on a tiny trained checkpoint, resume after an interrupt, bad flags, compare, score."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.cli.eval import eval_command
from dreamlab.evals.grid import SAMPLER_TYPES
from dreamlab.evals import harness
from dreamlab.store import RunStore

runner = CliRunner()
GRID = ["--alg", "entropy,origin", "--steps", "4,8", "--max-new-tokens", "8", "--limit", "6", "--batch-size", "4"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real `dreamlab train` run of the tiny model (4 steps, one checkpoint)."""
    db = tmp_path_factory.mktemp("evalrun") / "runs" / "dreamlab.db"
    result = runner.invoke(app, ["train", "model.compile=false", "data.micro_batch_size_per_gpu=8", "data.val_size=16", "model.tiny_hidden_size=64",
                                 "model.tiny_num_layers=2", "model.tiny_intermediate_size=128", "trainer.total_training_steps=4",
                                 "trainer.save_checkpoint_steps=4", "trainer.val_check_interval=null", "--name", "tiny-sft",
                                 "--foreground", "--db", str(db)])
    assert result.exit_code == 0, result.output
    return db


def _eval(db, *args):
    return runner.invoke(app, ["eval", *args, "--db", str(db)])


@pytest.mark.slow
def test_grid_on_a_trained_checkpoint_writes_one_row_per_cell_and_sample(trained):
    result = _eval(trained, "--run", "tiny-sft", *GRID, "--history")
    assert result.exit_code == 0, result.output
    assert "alg \\ steps" in result.output and "accuracy vs steps" in result.output
    store = RunStore(trained)
    run = store.get_run("tiny-sft")
    evals = store.list_evals(run_ref="tiny-sft")
    assert [(e.alg, e.steps, e.status, e.n_done) for e in evals] == [
        ("entropy", 4, "completed", 6), ("entropy", 8, "completed", 6), ("origin", 4, "completed", 6), ("origin", 8, "completed", 6)]
    first = evals[0]
    assert first.run_id == run.id and first.checkpoint.endswith("step-000004/model") and first.task == "arithmetic"
    assert (first.max_new_tokens, first.batch_size, first.limit_n, first.shots) == (8, 4, 6, 0)
    assert set(first.versions) == {"torch", "transformers", "dreamlab"} and first.device == "cpu"
    assert first.ci_low <= first.accuracy <= first.ci_high and first.nfe_mean <= 4 and first.tokens_per_s > 0
    assert len({e.grid_id for e in evals}) == 1
    samples = store.eval_samples(first.id)
    assert [s["idx"] for s in samples] == list(range(6))
    assert all(s["gold"] and s["generation"] is not None and s["nfe"] >= 1 for s in samples)
    kept = [s for s in samples if s["history"] is not None]
    assert [s["idx"] for s in kept] == [0, 1, 2, 3] and len(kept[0]["history"]) == 4 and len(kept[0]["history"][0]) == 8
    shown = runner.invoke(app, ["runs", "show", "tiny-sft", "--db", str(trained)])
    assert shown.exit_code == 0 and "evals" in shown.output and "6/6" in shown.output
    shown = runner.invoke(app, ["runs", "show", "tiny-sft", "--db", str(trained), "--json"])
    assert [e["alg"] for e in json.loads(shown.stdout)["evals"]] == ["entropy", "entropy", "origin", "origin"]
    as_json = _eval(trained, "--run", "tiny-sft", *GRID, "--json")  # everything is done: same rows, nothing rerun
    assert as_json.exit_code == 0
    assert [row["id"] for row in json.loads(as_json.stdout)] == [e.id for e in evals]
    compared = runner.invoke(app, ["eval", "compare", str(evals[0].id), str(evals[2].id), "--db", str(trained), "--json"])
    assert compared.exit_code == 0, compared.output
    pair = json.loads(compared.stdout)[0]
    assert pair["shared"] == 6 and pair["differs"]["alg"] == ["entropy", "origin"] and 0 <= pair["p_value"] <= 1


@pytest.mark.slow
def test_an_interrupted_eval_resumes_without_redoing_samples(trained, monkeypatch):
    real = harness.generate_and_score
    seen: list[int] = []

    def interrupt_on_second_batch(model, tokenizer, task, batch, *args, **kwargs):
        if len(seen) >= 4:
            raise KeyboardInterrupt
        seen.extend(s.idx for s in batch)
        return real(model, tokenizer, task, batch, *args, **kwargs)

    args = ["--run", "tiny-sft", "--alg", "maskgit_plus", "--steps", "8", "--max-new-tokens", "8", "--limit", "10", "--batch-size", "4"]
    monkeypatch.setattr(harness, "generate_and_score", interrupt_on_second_batch)
    stopped = _eval(trained, *args)
    assert stopped.exit_code == 130, stopped.output
    store = RunStore(trained)
    record = [e for e in store.list_evals() if e.alg == "maskgit_plus"][0]
    assert record.status == "interrupted" and record.n_done == 4
    first_batch = set(seen)
    seen.clear()

    def count(model, tokenizer, task, batch, *a, **k):
        seen.extend(s.idx for s in batch)
        return real(model, tokenizer, task, batch, *a, **k)

    monkeypatch.setattr(harness, "generate_and_score", count)
    resumed = _eval(trained, *args)
    assert resumed.exit_code == 0, resumed.output
    after = store.get_eval(record.id)
    assert after.status == "completed" and after.n_done == 10
    assert sorted(seen) == sorted(set(range(10)) - first_batch)


@pytest.mark.parametrize("args, message", [
    (["--alg", "greedy"], "alg must be one of origin"),
    (["--steps", "0"], "steps must be an integer >= 1"),
    (["--steps", "many"], "--steps must be a comma list of ints"),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--model", "/no/such/model"], "no model at /no/such/model"),
    (["--run", "ghost"], "no run store at"),
    (["--shots", "9"], "--shots must be from 0 to 8"),
    (["--batch-size", "0"], "--batch-size must be a whole number >= 1 or auto; got 0"),
    (["--batch-size", "autox"], "--batch-size must be a whole number >= 1 or auto; got 'autox'"),
])
def test_bad_flags_give_one_line_errors(tmp_path, args, message):
    result = runner.invoke(app, ["eval", "--model", "tiny", *args, "--db", str(tmp_path / "db.sqlite")]
                           if "--model" not in args and "--run" not in args else ["eval", *args, "--db", str(tmp_path / "db.sqlite")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert "Traceback" not in result.output



@pytest.mark.parametrize("command", [["frontier"], ["compare", "a", "b"]])
def test_frontier_and_compare_refuse_a_store_that_does_not_exist(tmp_path, command):
    missing = tmp_path / "none.db"
    result = runner.invoke(app, ["eval", *command, "--db", str(missing)])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: no run store at {missing} (pass --db or set DREAMLAB_DB)"
    assert not missing.exists()

def test_score_rescores_a_generations_file(tmp_path):
    rows = [{"question": "q1", "gold": "#### 1,200", "generation": "so \\boxed{1200}"},
            {"question": "q2", "gold": "7", "generation": "The answer is 8. \\boxed{"},
            {"question": "q3", "gold": "5", "generation": "<|mask|>5<|mask|>"}]
    file = tmp_path / "gen.jsonl"
    file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "scored.jsonl"
    result = runner.invoke(app, ["eval", "score", str(file), "--task", "gsm8k", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["n"], summary["correct"], summary["flexible_correct"]) == (3, 2, 2)
    assert (summary["unclosed_boxed"], summary["leftover_masks"]) == (1, 2)
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["correct"] for row in scored] == [True, False, True] and scored[0]["extracted"] == "1200"
    missing = runner.invoke(app, ["eval", "score", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 2 and missing.output.startswith("error: no generations file")


def test_the_eval_command_does_not_import_textual():
    code = ("import sys; from dreamlab.cli import app; import dreamlab.cli.eval, dreamlab.evals.report, "
            "dreamlab.evals.harness; sys.exit(any(m.split('.')[0] == 'textual' for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_sampler_setting_is_an_eval_option():
    assert set(SAMPLER_TYPES) <= set(inspect.signature(eval_command).parameters)
