"""The `dreamlab` command line, driven through typer's CliRunner."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.cli.generate import generate
from dreamlab.evals.grid import SAMPLER_TYPES

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


def test_ci_runs_the_readme_set_up_commands_exactly():
    import subprocess

    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up \(two commands on a fresh machine\)\n\n```bash\n(.*?)```", readme, re.S)
    assert block, "README lost its set-up block"
    main_job, test_command = block.group(1).strip().splitlines()
    assert main_job == "pip install torch==2.13.0 -e '.[test]' && dreamlab demo"
    assert test_command == "python -m pytest"
    # .ci/run reads these two lines from the README and runs them verbatim: ask it what it would run.
    printed = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print"], capture_output=True, text=True, check=True)
    assert printed.stdout.splitlines() == [main_job, test_command]
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'eval "${commands[0]}"' in ci and 'eval "${commands[1]}"' in ci


def test_every_command_is_in_the_readme_table():
    import typer.main

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Commands"):]
    table = table[:table.index("\n## ", 3)]
    root = typer.main.get_command(app)
    names = []
    for name, command in root.commands.items():
        names.append(name)
        names += [f"{name} {sub}" for sub in getattr(command, "commands", {})]
    for name in names:
        assert f"`dreamlab {name}" in table, f"README's command table lacks dreamlab {name}"


def test_generate_from_an_unknown_run_or_one_without_checkpoints_says_so(tmp_path):
    from dreamlab.store import RunStore

    db = tmp_path / "runs" / "dreamlab.db"
    RunStore(db).create_run(name="fresh")
    result = runner.invoke(app, ["generate", "--run", "nope", "--db", str(db)])
    assert result.exit_code == 2 and "error" in result.output
    result = runner.invoke(app, ["generate", "--run", "latest", "--db", str(db)])
    assert result.exit_code == 2 and "no complete checkpoint" in result.output


def test_every_sampler_setting_is_a_generate_option():
    # A new SamplerSettings field needs a `dreamlab generate` option too (all apply to one generation).
    assert set(SAMPLER_TYPES) <= set(inspect.signature(generate).parameters)


def test_python_dash_m_dreamlab_is_the_same_cli():
    done = subprocess.run([sys.executable, "-m", "dreamlab", "runs", "--help"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Usage: python -m dreamlab runs" in done.stdout
