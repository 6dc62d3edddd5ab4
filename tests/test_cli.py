"""The `dreamlab` command line, driven through typer's CliRunner."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from dreamlab.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_generate_runs_on_the_tiny_preset_and_reports_model_calls():
    result = runner.invoke(app, ["generate", "Solve: 2 + 2", "--steps", "16", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    assert "generation" in result.output
    assert re.search(r"model calls \(NFE\)\s+\d+", result.output)


def test_generate_refuses_bad_settings_and_missing_models(tmp_path):
    result = runner.invoke(app, ["generate", "--alg", "greedy", "--steps", "4", "--max-new-tokens", "4"])
    assert result.exit_code == 2 and "alg must be one of" in result.output
    result = runner.invoke(app, ["generate", "--model", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no model at" in result.output


def test_ci_runs_the_readme_test_command_exactly():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up \(two commands on a fresh machine\)\n\n```bash\n(.*?)```", readme, re.S)
    assert block, "README lost its set-up block"
    main_job, test_command = block.group(1).strip().splitlines()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines
    assert "dreamlab" in main_job


def test_generate_from_an_unknown_run_or_one_without_checkpoints_says_so(tmp_path):
    from dreamlab.store import RunStore

    db = tmp_path / "runs" / "dreamlab.db"
    RunStore(db).create_run(name="fresh")
    result = runner.invoke(app, ["generate", "--run", "nope", "--db", str(db)])
    assert result.exit_code == 2 and "error" in result.output
    result = runner.invoke(app, ["generate", "--run", "latest", "--db", str(db)])
    assert result.exit_code == 2 and "no complete checkpoint" in result.output
