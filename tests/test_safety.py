"""Safety properties checked over the whole source tree and through the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamlab.cli import app
from dreamlab.config import Recipe
from dreamlab.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ("dreamlab", "bench", "tests") for p in (ROOT / folder).rglob("*.py"))


def _calls(tree: ast.AST):
    return (node for node in ast.walk(tree) if isinstance(node, ast.Call))


def _name(call: ast.Call) -> str:
    return ast.unparse(call.func)


def test_no_shell_true_os_system_or_popen_anywhere():
    found = []
    for path in SOURCES:
        for call in _calls(ast.parse(path.read_text(), str(path))):
            shell = [k for k in call.keywords if k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)]
            if shell or _name(call) in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
                found.append(f"{path.relative_to(ROOT)}:{call.lineno}: {ast.unparse(call)[:80]}")
    assert found == []
    assert len(SOURCES) > 50  # the scan really walked the tree


def test_trust_remote_code_is_off_unless_the_user_passes_it():
    """No call passes a literal True, and every parameter / option / recipe field named so defaults to False."""
    passed_true, defaults = [], []
    for path in (p for p in SOURCES if "dreamlab" in p.parts):
        tree = ast.parse(path.read_text(), str(path))
        for call in _calls(tree):
            for keyword in call.keywords:
                if keyword.arg == "trust_remote_code" and not isinstance(keyword.value, (ast.Name, ast.Attribute, ast.Subscript)):
                    if not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                        passed_true.append(f"{path.name}:{call.lineno}")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.args + node.args.kwonlyargs
                values = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults + node.args.kw_defaults
                for arg, default in zip(arguments, values):
                    if arg.arg == "trust_remote_code":
                        defaults.append((f"{path.name}:{node.name}", ast.unparse(default) if default else "required"))
    assert passed_true == []
    assert defaults and all(value == "False" for _, value in defaults), defaults
    assert Recipe().model.trust_remote_code is False


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", "a/../../b", "..", "x\0y", "x\ny", "run name", "~root", "a\\b"])
def test_run_names_that_could_escape_runs_are_refused_before_anything_is_written(tmp_path, name):
    db = tmp_path / "lab" / "runs" / "dreamlab.db"
    result = CliRunner().invoke(app, ["train", "--name", name, "--db", str(db)])
    assert result.exit_code == 2 and "run name" in result.output, result.output
    assert not db.exists() or RunStore(db).list_runs() == []
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_dir()) in ([], ["lab", "runs"])
