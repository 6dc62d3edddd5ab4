"""Recipes: YAML, Dream's dotted overrides, and refusal of bad values before anything starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dreamlab.config import RecipeError, load_recipe, recipe_from_dict, validate
from dreamlab.diffusion.settings import LossSettings


def test_config_and_cli_import_without_torch_or_transformers():
    code = "import sys, dreamlab.config, dreamlab.cli; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_the_recipe_diffusion_section_is_the_loss_settings():
    diffusion = load_recipe(overrides=["diffusion.focal_gamma=3"]).diffusion
    assert isinstance(diffusion, LossSettings) and diffusion.focal_gamma == 3.0


def test_the_default_recipe_is_the_tiny_cpu_run():
    recipe = load_recipe()
    assert recipe.model.partial_pretrain == "tiny"
    assert recipe.data.train_files == ["builtin:arithmetic"]


def test_the_packaged_s1k_recipes_differ_from_the_full_run_only_where_they_should():
    full = load_recipe("s1k-dream7b").to_dict()
    smoke = load_recipe("s1k-smoke").to_dict()
    assert (smoke["trainer"]["total_epochs"], smoke["data"]["train_files"]) == (1, ["data/s1k-10pct.jsonl"])
    for name, data in (("s1k-math-only", "data/s1k-math.jsonl"), ("s1k-non-math", "data/s1k-non-math.jsonl")):
        ablation = load_recipe(name).to_dict()
        assert ablation["data"]["train_files"] == [data]
        ablation["data"]["train_files"] = full["data"]["train_files"]
        assert ablation == full, name


def test_a_recipe_extends_another_and_a_bad_extends_names_the_file(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: s1k-dream7b\noptim:\n  lr: 1.0e-5\n")
    recipe = load_recipe(str(child))
    assert recipe.optim.lr == 1e-5 and recipe.model.partial_pretrain == load_recipe("s1k-dream7b").model.partial_pretrain
    child.write_text("extends: no-such-recipe\n")
    with pytest.raises(RecipeError, match=r"child.yaml: extends: no recipe 'no-such-recipe': .*s1k-dream7b"):
        load_recipe(str(child))
    child.write_text("extends: [s1k-dream7b]\n")
    with pytest.raises(RecipeError, match=r"child.yaml: extends: expected a recipe name or path, got \['s1k-dream7b'\]"):
        load_recipe(str(child))
    other = tmp_path / "other.yaml"
    other.write_text(f"extends: {child}\n")
    child.write_text(f"extends: {other}\n")
    with pytest.raises(RecipeError, match="extends itself through"):
        load_recipe(str(child))


def test_overrides_take_dreams_dotted_keys_with_typed_values():
    recipe = load_recipe("s1k-dream7b", [
        "optim.lr=2e-6", "data.micro_batch_size_per_gpu=4", "data.max_length=2048", "trainer.total_epochs=3",
        "data.gradient_accumulation_steps=2", "model.enable_gradient_checkpointing=true",
        "data.perbatch_cutoff_type=random_with_input_pad", "diffusion.time_reweighting=cart",
        "trainer.total_training_steps=null", "optim.betas=[0.9,0.99]",
    ])
    assert recipe.optim.lr == 2e-6 and isinstance(recipe.optim.lr, float)
    assert recipe.data.micro_batch_size_per_gpu == 4 and recipe.data.gradient_accumulation_steps == 2
    assert recipe.model.enable_gradient_checkpointing is True
    assert recipe.trainer.total_training_steps is None
    assert recipe.optim.betas == [0.9, 0.99]
    assert recipe_from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize("override,message", [
    ("optim.learning_rate=1e-5", "unknown recipe key 'optim.learning_rate'; did you mean optim.lr"),
    ("data.micro_batch_size=4", "did you mean data.micro_batch_size_per_gpu"),
    ("trainr.total_epochs=3", "unknown recipe key 'trainr.total_epochs'"),
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
    ("data.max_length=2.5", "data.max_length: expected an integer"),
    ("model.enable_gradient_checkpointing=maybe", "expected true or false"),
    ("optim.lr=0", "optim.lr: must be > 0"),
    ("data.micro_batch_size_per_gpu=-2", "must be > 0"),
    ("trainer.total_epochs=0", "trainer.total_epochs: must be > 0"),
    ("diffusion.time_reweighting=cosine", "diffusion.time_reweighting: 'cosine' is not one of"),
    ("data.perbatch_cutoff_type=dynamic", "data.perbatch_cutoff_type"),
    ("optim.betas=[0.9]", "optim.betas: expected two numbers"),
    ("optim", "expected section.key=value"),
    ("trainer.lost_after_s=10", "trainer.lost_after_s: must be at least 3 x trainer.heartbeat_s"),
    ("trainer.stall_after_s=0", "trainer.stall_after_s: must be > 0"),
    ("trainer.stall_factor=-1", "trainer.stall_factor: must be >= 0"),
])
def test_bad_overrides_are_refused_naming_the_key(override, message):
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_recipe(None, [override])


def test_max_length_above_the_model_context_is_refused():
    recipe = load_recipe(None, ["data.max_length=4096"])
    with pytest.raises(RecipeError, match="above the model's context of 1024"):
        validate(recipe, context_length=1024)


def test_bad_recipe_files_name_the_file_and_line(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim:\n  lr: [1\n")
    with pytest.raises(RecipeError, match="broken.yaml line"):
        load_recipe(str(broken))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("optim:\n  lrr: 1.0e-3\n")
    with pytest.raises(RecipeError, match="unknown.yaml: unknown recipe key 'optim.lrr'"):
        load_recipe(str(unknown))
    with pytest.raises(RecipeError, match="no recipe 'nope'"):
        load_recipe("nope")


def test_cpu_threads_override_the_share_of_the_cores_and_must_be_positive():
    from dreamlab.train.worker import cpu_thread_count

    assert load_recipe().trainer.cpu_threads is None
    assert load_recipe(overrides=["trainer.cpu_threads=1"]).trainer.cpu_threads == 1
    assert cpu_thread_count(None, 2, 1) == 2
    assert cpu_thread_count(None, 16, 8) == 2
    assert cpu_thread_count(None, 2, 4) == 1
    assert cpu_thread_count(1, 2, 1) == 1
    with pytest.raises(RecipeError, match="trainer.cpu_threads: must be > 0, got 0"):
        load_recipe(overrides=["trainer.cpu_threads=0"])
