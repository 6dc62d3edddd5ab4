"""dreamlab's gsm8k_cot / minerva_math / math500 against lm-eval itself (its shipped task YAMLs and filter classes).

Offline: lm-eval's tasks are built from their YAML files with `dataset_path: json` over local rows, so
nothing is fetched from the hub. Prompt tests use the first 20 problems of the real GSM8K and MATH-500
test files (../shared/data); the verdict tests use a generations corpus built here.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from dreamlab.evals import minerva
from dreamlab.evals.scoring import score_generation
from dreamlab.evals.tasks import load_task
from tests.conftest import SHARED_DATA

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.task import ConfigurableTask  # noqa: E402
from lm_eval.filters.extraction import RegexFilter  # noqa: E402
from lm_eval.filters.selection import TakeFirstFilter  # noqa: E402
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402

TASKS = Path(lm_eval.__file__).parent / "tasks"
GSM8K = SHARED_DATA / "gsm8k" / "test.jsonl"
MATH500 = SHARED_DATA / "math500" / "test.jsonl"
needs_shared = pytest.mark.skipif(not (GSM8K.is_file() and MATH500.is_file()),
                                  reason="../shared/data (real GSM8K / MATH-500 test files) is absent")


def _first(path: Path, n: int) -> list[dict]:
    with path.open() as handle:
        return [json.loads(next(handle)) for _ in range(n)]


@pytest.fixture
def antlr_check_off(monkeypatch):
    """lm-eval's minerva utils (and sympy's LaTeX parser) refuse to run unless antlr4 4.11 is installed.

    With the version check answered "4.11" both run on the installed runtime, lm-eval and dreamlab alike
    (dreamlab's parser probe is re-run inside and after, so no other test sees this state).
    """
    import sympy.parsing.latex._parse_latex_antlr as sympy_antlr  # imported first, so it binds the real version()
    from math_verify import parse

    parse("$1$")  # math-verify picks its generated parser by the antlr4 version once: let it see the real one

    real = importlib.metadata.version
    answer = lambda name: "4.11.0" if name == "antlr4-python3-runtime" else real(name)  # noqa: E731
    monkeypatch.setattr(importlib.metadata, "version", answer)
    monkeypatch.setattr(sympy_antlr, "version", answer)
    minerva.latex_parser.cache_clear()
    yield
    minerva.latex_parser.cache_clear()


def lm_task(yaml_path: Path, rows: list[dict], tmp_path: Path) -> ConfigurableTask:
    """lm-eval's task from its own YAML, reading `rows` from a local JSON-lines file instead of the hub."""
    data = tmp_path / f"{yaml_path.stem}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = load_yaml(yaml_path)
    config.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": {"test": str(data)}})
    return ConfigurableTask(config=config)


def minerva_utils():
    """lm-eval's minerva_math/utils.py as its YAML loader imported it."""
    import sys

    return next(module for name, module in sys.modules.items()
                if getattr(module, "__file__", None) and module.__file__.endswith("minerva_math/utils.py"))


def lm_chat(tokenizer):
    """The chat_template callable lm-eval hands to fewshot_context (Dream's diffllm apply_chat_template)."""
    def render(messages, add_generation_prompt=True):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             continue_final_message=not add_generation_prompt)
    return render


# -- prompts ----------------------------------------------------------------------------------------------


@needs_shared
def test_gsm8k_cot_prompts_are_byte_identical(tmp_path, tokenizer):
    rows = _first(GSM8K, 20)
    theirs = lm_task(TASKS / "gsm8k" / "gsm8k-cot.yaml", rows, tmp_path)
    ours = load_task("gsm8k_cot")
    docs = list(theirs.test_docs())
    assert len(docs) == 20 and ours.prompt_shape(None, None) == ("base", 8) and ours.prompt_shape("chat", None) == ("chat", 0)
    for doc, row in zip(docs, rows):
        assert ours.render(row["question"], tokenizer, "base", 8) == theirs.fewshot_context(doc, 8)
        assert (ours.render(row["question"], tokenizer, "chat", 0)
                == theirs.fewshot_context(doc, 0, apply_chat_template=True, chat_template=lm_chat(tokenizer)))
    assert ours.until == theirs.config.generation_kwargs["until"]
    assert ours.render(rows[0]["question"], tokenizer, "base", 8).startswith("Q: There are 15 trees in the grove.")


@needs_shared
@pytest.mark.parametrize("name, yaml_name", [("math500", "minerva_math500.yaml"), ("minerva_math", "minerva_math_algebra.yaml")])
def test_minerva_prompts_are_byte_identical(tmp_path, tokenizer, antlr_check_off, name, yaml_name):
    rows = _first(MATH500, 20)
    theirs = lm_task(TASKS / "minerva_math" / yaml_name, rows, tmp_path)
    ours = load_task(name)
    docs = list(theirs.test_docs())
    assert len(docs) == 20 and ours.prompt_shape(None, None) == ("base", 4)
    for doc, row in zip(docs, rows):
        assert ours.render(row["problem"], tokenizer, "base", 4) == theirs.fewshot_context(doc, 4)
        assert (ours.render(row["problem"], tokenizer, "chat", 0)
                == theirs.fewshot_context(doc, 0, apply_chat_template=True, chat_template=lm_chat(tokenizer)))
    assert ours.until == theirs.config.generation_kwargs["until"]


@needs_shared
def test_minerva_golds_match_lm_evals_processed_docs(tmp_path, antlr_check_off):
    """Every MATH-500 gold as lm-eval's process_docs computes it, and dreamlab's main gold is the unnormalised box."""
    rows = _first(MATH500, 500)
    theirs = lm_task(TASKS / "minerva_math" / "minerva_math500.yaml", rows, tmp_path)
    utils = minerva_utils()
    for doc, row in zip(theirs.test_docs(), rows):
        assert minerva.gold_answer(row["solution"]) == doc["answer"]
        assert minerva.normalize_final_answer(row["answer"]) == utils.normalize_final_answer(row["answer"])
    math = load_task("minerva_math")
    assert math.gold_answer(rows[0]["solution"]) == "\\left( 3, \\frac{\\pi}{2} \\right)"


# -- verdicts ------------------------------------------------------------------------------------------------

GSM8K_ROWS = [
    {"question": "How many eggs?", "answer": "16 - 3 - 4 = 9 eggs.\n#### 18"},
    {"question": "How much is the house?", "answer": "It costs 1,000 dollars.\n#### 1,000"},
    {"question": "How much for the shirts?", "answer": "#### 29"},
    {"question": "How many trees?", "answer": "#### -5"},
]
# (row, generation, lm-eval strict, lm-eval flexible, dreamlab's main verdict)
GSM8K_CORPUS = [
    (0, "She sells 9 eggs at $2 each, 9 * 2 = 18. The answer is 18.", True, True, True),
    (0, "9 * 2 = 18. The answer is 18.\n\nQ: Tom has 3 apples. How many?\nA: The answer is 12345.", True, True, True),
    (0, "9 * 2 = 18. The answer is 18.</s>The answer is 5.", True, True, True),
    (0, "9 * 2 = 18. The answer is 18.<|im_end|>\nQ: The answer is 7.", True, True, True),
    (0, "", False, False, False),
    (0, "So she makes $\\boxed{18}$ dollars.", False, True, True),
    (0, "The answer is 18", False, True, True),  # no character after the number: strict captures "1"
    (0, "the answer is 18.", False, True, True),  # strict-match is case-sensitive
    (0, "#### 18", False, True, True),
    # lm-eval #3438: a recited exemplar answers first, strict-match takes the first "The answer is".
    (0, "There are 15 trees originally. So 21 - 15 = 6. The answer is 6. She makes 9 * 2 = 18. The answer is 18.",
     False, True, True),
    (1, "The house costs $1,000.00. The answer is $1,000.00.", False, False, True),
    (1, "It is 1,000 dollars. The answer is 1,000.", True, True, True),
    (2, "Each shirt is $29.00, so the total is $29.00", False, False, True),  # lm-eval #3214
    (2, "3 shirts at $9.67 is $29. The answer is 29.", True, True, True),
    (3, "They cut 5 trees, so the change is -5. The answer is -5.", True, True, True),
    (3, "The answer is 5.", False, False, False),
]


def _lm_gsm8k_verdicts(theirs: ConfigurableTask, doc: dict, generation: str) -> dict[str, bool]:
    """lm-eval's pipeline: the model's until-cut, each filter_list entry's filter classes, the task's exact_match."""
    for stop in theirs.config.generation_kwargs["until"]:  # as lm-eval's HF model and Dream's eval.py cut
        generation = generation.split(stop)[0]
    verdicts = {}
    for entry in theirs.config.filter_list:
        responses = [[generation]]
        for step in entry["filter"]:
            kwargs = {key: value for key, value in step.items() if key != "function"}
            responses = list((RegexFilter(**kwargs) if step["function"] == "regex" else TakeFirstFilter()).apply(responses, [doc]))
        verdicts[entry["name"]] = bool(theirs.process_results(doc, [responses[0]])["exact_match"])
    return verdicts


def test_gsm8k_cot_verdicts_match_lm_eval(tmp_path):
    theirs = lm_task(TASKS / "gsm8k" / "gsm8k-cot.yaml", GSM8K_ROWS, tmp_path)
    ours = load_task("gsm8k_cot")
    docs = list(theirs.test_docs())
    for row, generation, strict, flexible, main in GSM8K_CORPUS:
        lm = _lm_gsm8k_verdicts(theirs, docs[row], generation)
        score = score_generation(generation, ours.gold_answer(GSM8K_ROWS[row]["answer"]), extractor=ours.extractor,
                                 scorer=ours.scorer, numeric=ours.numeric, until=ours.until, lm_eval=ours.lm_eval)
        assert (lm["strict-match"], lm["flexible-extract"]) == (strict, flexible), generation
        assert (score.strict_correct, score.flexible_correct, score.correct) == (strict, flexible, main), generation


def test_gsm8k_cot_cut_and_filter_values():
    ours = load_task("gsm8k_cot")
    run_on = "9 * 2 = 18. The answer is 18.\n\nQ: Tom has 3 apples.\nA: The answer is 12345."
    score = score_generation(run_on, "18", extractor=ours.extractor, scorer=ours.scorer, numeric=ours.numeric,
                             until=ours.until, lm_eval=ours.lm_eval)
    assert (score.cut_at, run_on[:score.cut_at]) == (31, "9 * 2 = 18. The answer is 18.\n\n")
    assert (score.strict_extracted, score.flexible_extracted, score.extracted) == ("18", "18.", "18")
    empty = score_generation("", "18", extractor=ours.extractor, until=ours.until, lm_eval=ours.lm_eval)
    assert (empty.cut_at, empty.strict_extracted, empty.flexible_extracted, empty.extracted) == (None, None, None, None)


MATH_ROWS = [
    {"problem": "Compute $\\det(AB)$.", "solution": "We have $(2)(12) = \\boxed{24}.$"},
    {"problem": "Find $x$ with $2x = 1$.", "solution": "So $x = \\boxed{\\frac{1}{2}}$."},
    {"problem": "Convert $(0,3)$ to polar.", "solution": "So $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$."},
    {"problem": "How much money?", "solution": "It is $\\boxed{10}$."},
]
FINAL = "\nFinal Answer: The final answer is {}. I hope it is correct."
# (row, generation, lm-eval exact_match, lm-eval math_verify, dreamlab's main verdict)
MATH_CORPUS = [
    (0, "So $(2)(12) = \\boxed{24}$." + FINAL.format("$24$"), True, True, True),
    (0, "We get 24." + FINAL.format("$24$") + "\n\nProblem:\nWhat is 1+1?\n\nSolution: \\boxed{2}" + FINAL.format("$2$"),
     True, True, True),
    (0, "", False, False, False),
    (0, "\\[\\boxed{24}\\]", False, True, True),  # lm-eval #2552: no "Final Answer" line, exact_match is invalid
    # A recited exemplar: lm-eval's exact_match takes the first "Final Answer" and its math_verify the first
    # answer-like span; the main verdict takes the last real box.
    (0, "the domain is $\\boxed{[2,5)}$." + FINAL.format("$[2,5)$") + " So the product is $\\boxed{24}$.", False, False, True),
    (1, "Halve it: $x = \\frac12$." + FINAL.format("$\\frac12$"), True, True, True),
    (1, "So $x = \\boxed{0.5}$." + FINAL.format("$0.5$"), True, True, True),  # is_equiv: sympy says 0.5 - 1/2 = 0
    (2, "The point is $\\boxed{(3, \\frac{\\pi}{2})}$." + FINAL.format("$(3,\\frac{\\pi}{2})$"), False, True, True),
    (3, "She has \\boxed{10}." + FINAL.format("10 dollars"), True, True, True),
    (3, "She has \\boxed{11}." + FINAL.format("$11$"), False, False, False),
]


def test_minerva_verdicts_match_lm_eval(tmp_path, antlr_check_off):
    theirs = lm_task(TASKS / "minerva_math" / "minerva_math_algebra.yaml", MATH_ROWS, tmp_path)
    utils = minerva_utils()
    assert minerva.latex_parser() is not None
    ours = load_task("minerva_math")
    docs = list(theirs.test_docs())
    for row, generation, exact, verify, main in MATH_CORPUS:
        cut = generation
        for stop in theirs.config.generation_kwargs["until"]:
            cut = cut.split(stop)[0]
        lm = theirs.process_results(docs[row], [cut])
        solution = MATH_ROWS[row]["solution"]
        score = score_generation(generation, ours.gold_answer(solution), extractor=ours.extractor, scorer=ours.scorer,
                                 until=ours.until, lm_eval=ours.lm_eval, reference=solution)
        assert (bool(lm["exact_match"]), bool(lm["math_verify"])) == (exact, verify), generation
        assert (score.strict_correct, score.flexible_correct, score.correct) == (exact, verify, main), generation
        assert score.strict_extracted == (None if "Final Answer" not in cut else
                                          utils.normalize_final_answer(utils.get_unnormalized_answer(cut)))


@needs_shared
def test_minerva_functions_match_lm_evals_on_real_solutions(antlr_check_off, tmp_path):
    lm_task(TASKS / "minerva_math" / "minerva_math500.yaml", MATH_ROWS, tmp_path)  # imports lm-eval's utils
    utils = minerva_utils()
    texts = [row["solution"] for row in _first(MATH500, 500)] + [generation for _, generation, *_ in MATH_CORPUS]
    for text in texts:
        assert minerva.last_boxed_only_string(text) == utils.last_boxed_only_string(text)
        assert minerva.unnormalized_answer(text) == utils.get_unnormalized_answer(text)
        assert minerva.normalize_final_answer(text) == utils.normalize_final_answer(text)


def test_is_equiv_without_sympys_latex_parser_compares_strings():
    """Where sympy's ANTLR parser cannot run (antlr4 is not 4.11), lm-eval raises; dreamlab matches identical strings only."""
    minerva.latex_parser.cache_clear()
    parser = minerva.latex_parser()
    assert minerva.is_equiv("\\frac{1}{2}", "\\frac{1}{2}") is True
    assert minerva.is_equiv("0.5", "\\frac{1}{2}") is (parser is not None)
    assert minerva.is_equiv("0.6", "\\frac{1}{2}") is False
