"""Evaluation tasks as data: YAML files in `evals/` (dataset, prompt templates, few-shot, extractor, scorer, sampler defaults).

A task is found by path, or by name in ./evals/, the source tree's evals/ (editable installs) and
<prefix>/share/dreamlab/evals/ (wheels). Problems in a file are reported as `FILE:LINE: field: why`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dreamlab.diffusion.settings import SamplerSettings, field_types
from dreamlab.evals.extract import EXTRACTORS
from dreamlab.evals.lm_eval_verdicts import SCHEMES
from dreamlab.evals.minerva import last_boxed_only_string, remove_boxed
from dreamlab.evals.scoring import SCORERS
from dreamlab.textfiles import json_lines, read_json, read_utf8

TEMPLATES = ("base", "chat")
SAMPLER_KEYS = field_types(SamplerSettings)  # what a task's sampler: / chat_sampler: may set
_TOP_KEYS = {"name", "description", "source", "fields", "answer", "prompt", "fewshot", "sampler", "chat_sampler", "until",
             "published"}
# A published result names its model and value, where it comes from, and the settings it was measured with.
PUBLISHED_KEYS = {"model", "value", "source", "template", "shots", "max_new_tokens", "steps"}


class TaskError(ValueError):
    """A task that cannot be found, read or loaded; the message is one line naming the file, line and field."""


@dataclass(frozen=True)
class Sample:
    """One problem: its index in the data set, the question, the gold answer and (optionally) the worked solution."""

    idx: int
    question: str
    gold: str
    reference: str | None = None


@dataclass
class Task:
    """A parsed task file."""

    name: str
    path: Path
    description: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    question_field: str = "question"
    gold_field: str = "answer"
    gold_regex: str | None = None
    gold_boxed: bool = False
    reference_field: str | None = None
    extractor: str = "boxed"
    scorer: str = "math_verify"
    numeric: bool = False
    lm_eval: str | None = None
    until: list[str] = field(default_factory=list)
    add_bos: bool = False
    template: str = "base"
    shots: int = 0
    chat_shots: int | None = None
    base_example: str = "Question: {question}\nAnswer: {solution}"
    base_query: str = "Question: {question}\nAnswer:"
    separator: str = "\n\n"
    chat_user: str = "{question}"
    system: str | None = None
    fewshot: list[dict[str, str]] = field(default_factory=list)
    sampler: dict[str, Any] = field(default_factory=dict)
    chat_sampler: dict[str, Any] = field(default_factory=dict)
    published: list[dict[str, Any]] = field(default_factory=list)

    # -- data -----------------------------------------------------------------------------------

    def load_samples(self, limit: int | None = None, data: str | None = None) -> list[Sample]:
        """The task's problems in data-set order (the first `limit`); `data` overrides the source file."""
        rows = _load_rows(self, data)
        samples = []
        for idx, row in enumerate(rows[:limit] if limit is not None else rows):
            for name in (self.question_field, self.gold_field, *([self.reference_field] if self.reference_field else [])):
                if name not in row:
                    raise TaskError(f"{self.name}: row {idx} has no field {name!r} (fields: {', '.join(sorted(row))}); "
                                    "choose others with --question-field / --answer-field")
            reference = str(row[self.reference_field]) if self.reference_field else None
            samples.append(Sample(idx, str(row[self.question_field]), self.gold_answer(str(row[self.gold_field])), reference))
        return samples

    def gold_answer(self, text: str) -> str:
        """The gold answer from the gold field (its last box, or `gold_regex`'s first group; thousands commas dropped if numeric)."""
        if self.gold_boxed and (boxed := last_boxed_only_string(text)) is not None:
            text = remove_boxed(boxed)
        if self.gold_regex:
            found = re.findall(self.gold_regex, text, flags=re.MULTILINE)
            text = found[-1] if found else text
        text = text.strip()
        return text.replace(",", "") if self.numeric and re.fullmatch(r"-?[\d,]+(\.\d+)?", text) else text

    # -- prompts --------------------------------------------------------------------------------

    def prompt_shape(self, template: str | None, shots: int | None) -> tuple[str, int]:
        """The template and shot count to use (the task's own where None), checked against the task."""
        template = template or self.template
        if template not in TEMPLATES:
            raise ValueError(f"--template must be base or chat; got {template!r}")
        if shots is None:
            shots = self.chat_shots if template == "chat" and self.chat_shots is not None else self.shots
        if not 0 <= shots <= len(self.fewshot):
            raise ValueError(f"--shots must be from 0 to {len(self.fewshot)} (the task's few-shot examples); got {shots}")
        return template, shots

    def settings_for(self, template: str) -> dict[str, Any]:
        """The default sampler settings for a template (chat_sampler overrides sampler for chat)."""
        return {**self.sampler, **(self.chat_sampler if template == "chat" else {})}

    def bos_for(self, template: str, add_bos: bool | None = None) -> bool:
        """Whether prompts start with the tokenizer's BOS: `add_bos` when given, else the task's (base template only)."""
        return (self.add_bos if add_bos is None else add_bos) and template == "base"

    def render(self, question: str, tokenizer: Any, template: str, shots: int) -> str:
        """The full prompt text: few-shot CoT as plain text (base) or turns through the chat template (chat)."""
        examples = self.fewshot[:shots]
        if template == "base":
            parts = [_fill(self.base_example, e["question"], e["solution"]) for e in examples]
            return self.separator.join([*parts, _fill(self.base_query, question)])
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for example in examples:
            messages += [{"role": "user", "content": _fill(self.chat_user, example["question"])},
                         {"role": "assistant", "content": example["solution"]}]
        messages.append({"role": "user", "content": _fill(self.chat_user, question)})
        if getattr(tokenizer, "chat_template", None) is None:
            raise TaskError(f"{self.name}: --template chat needs a tokenizer with a chat template; use --template base")
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def template_hash(self, template: str, shots: int, add_bos: bool = False) -> str:
        """A short hash of everything that shapes the prompt and its scoring (template text, BOS, shots, fields, stops)."""
        shape = {"template": template, "examples": self.fewshot[:shots], "fields": [self.question_field, self.gold_field],
                 "gold_regex": self.gold_regex, "extractor": self.extractor, "scorer": self.scorer, "numeric": self.numeric}
        if template == "base":
            shape.update(example=self.base_example, query=self.base_query, separator=self.separator)
        else:
            shape.update(user=self.chat_user, system=self.system)
        # Added only when set, so tasks made before these existed keep their hash (and their evals resume).
        extras = {"add_bos": add_bos, "until": self.until, "lm_eval": self.lm_eval, "gold_boxed": self.gold_boxed,
                  "reference": self.reference_field}
        shape.update({key: value for key, value in extras.items() if value})
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]


def _fill(template: str, question: str, solution: str | None = None) -> str:
    # Plain replacement, not str.format: LaTeX is full of braces.
    text = template.replace("{question}", question)
    return text if solution is None else text.replace("{solution}", solution)


# -- finding and parsing task files ---------------------------------------------------------------


def task_dirs() -> list[Path]:
    """Where task names are looked up, in order."""
    here = Path(__file__).resolve().parents[2] / "evals"
    dirs = [Path.cwd() / "evals", here, Path(sys.prefix) / "share" / "dreamlab" / "evals"]
    unique: list[Path] = []
    for folder in dirs:
        if folder.is_dir() and all(folder.resolve() != seen.resolve() for seen in unique):
            unique.append(folder)
    return unique


def available_tasks() -> list[str]:
    """Every task name in the task folders."""
    return sorted({path.stem for folder in task_dirs() for path in folder.glob("*.yaml")})


def find_task(ref: str) -> Path:
    """A task file by path or by name."""
    path = Path(ref).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise TaskError(f"no task file {ref}")
        return path
    for folder in task_dirs():
        candidate = folder / f"{ref}.yaml"
        if candidate.is_file():
            return candidate
    raise TaskError(f"unknown task {ref!r}: use one of {', '.join(available_tasks()) or '(none found)'} or a .yaml path")


def load_task(ref: str, question_field: str | None = None, answer_field: str | None = None) -> Task:
    """Read and validate a task file (by name or path); the field names override the file's."""
    path = find_task(ref)
    text = read_utf8(path, TaskError)
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = " ".join(str(getattr(error, "problem", None) or error).split())  # a ReaderError's text has lines
        raise TaskError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise TaskError(f"{path}:1: a task file is a mapping of fields (name, source, prompt, ...)")
    task = _parse(path, raw, node)
    task.question_field = question_field or task.question_field
    task.gold_field = answer_field or task.gold_field
    return task


def _parse(path: Path, raw: dict[str, Any], node: yaml.Node) -> Task:
    def fail(dotted: str, why: str) -> TaskError:
        return TaskError(f"{path}:{_line(node, dotted)}: {dotted}: {why}")

    def section(name: str) -> dict[str, Any]:
        value = raw.get(name) or {}
        if not isinstance(value, dict):
            raise fail(name, "must be a mapping")
        return value

    unknown = set(raw) - _TOP_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise fail(key, f"unknown field (known: {', '.join(sorted(_TOP_KEYS))})")
    source, fields_, answer, prompt = section("source"), section("fields"), section("answer"), section("prompt")
    if not source:
        raise fail("source", "missing: give builtin, local and/or hub")
    if answer.get("extractor", "boxed") not in EXTRACTORS:
        raise fail("answer.extractor", f"must be one of {', '.join(EXTRACTORS)}; got {answer.get('extractor')!r}")
    if answer.get("scorer", "math_verify") not in SCORERS:
        raise fail("answer.scorer", f"must be one of {', '.join(SCORERS)}; got {answer.get('scorer')!r}")
    if prompt.get("template", "base") not in TEMPLATES:
        raise fail("prompt.template", f"must be base or chat; got {prompt.get('template')!r}")
    if answer.get("lm_eval") is not None and answer["lm_eval"] not in SCHEMES:
        raise fail("answer.lm_eval", f"must be one of {', '.join(SCHEMES)}; got {answer['lm_eval']!r}")
    if answer.get("lm_eval") == "minerva" and not fields_.get("reference") and not fields_.get("gold_boxed"):
        raise fail("answer.lm_eval", "minerva scoring needs the worked solution: set fields.reference or fields.gold_boxed")
    if not isinstance(prompt.get("add_bos", False), bool):
        raise fail("prompt.add_bos", f"must be true or false; got {prompt['add_bos']!r}")
    if not isinstance(fields_.get("gold_boxed", False), bool):
        raise fail("fields.gold_boxed", f"must be true or false; got {fields_['gold_boxed']!r}")
    until = raw.get("until") or []
    if not isinstance(until, list) or not all(isinstance(stop, str) and stop for stop in until):
        raise fail("until", "must be a list of non-empty strings")
    subsets = source.get("subsets")
    if subsets is not None and (not isinstance(subsets, list) or not all(isinstance(name, str) for name in subsets)):
        raise fail("source.subsets", "must be a list of data set configuration names")
    published = raw.get("published") or []
    if not isinstance(published, list):
        raise fail("published", "must be a list of {model, value, source, template, shots, max_new_tokens, steps}")
    for i, entry in enumerate(published):
        missing = PUBLISHED_KEYS - set(entry) if isinstance(entry, dict) else PUBLISHED_KEYS
        if missing:
            raise fail(f"published.{i}", f"missing {', '.join(sorted(missing))}")
        unknown = set(entry) - PUBLISHED_KEYS - set(SAMPLER_KEYS)
        if unknown:
            raise fail(f"published.{i}.{sorted(unknown)[0]}", f"unknown field (known: {', '.join(sorted(PUBLISHED_KEYS))} "
                       "and sampler settings)")
        if not isinstance(entry["value"], (int, float)):
            raise fail(f"published.{i}.value", f"must be a number (percent); got {entry['value']!r}")
    fewshot = raw.get("fewshot") or _builtin_fewshot(source)
    if not isinstance(fewshot, list):
        raise fail("fewshot", "must be a list of {question, solution}")
    for i, example in enumerate(fewshot):
        if not isinstance(example, dict) or not {"question", "solution"} <= set(example):
            raise fail(f"fewshot.{i}", "each example needs question and solution")
    shots = prompt.get("shots", 0)
    if not isinstance(shots, int) or not 0 <= shots <= len(fewshot):
        raise fail("prompt.shots", f"must be an integer from 0 to the number of fewshot examples ({len(fewshot)}); got {shots!r}")
    chat_shots = prompt.get("chat_shots")
    if chat_shots is not None and (not isinstance(chat_shots, int) or not 0 <= chat_shots <= len(fewshot)):
        raise fail("prompt.chat_shots", f"must be an integer from 0 to the number of fewshot examples ({len(fewshot)}); got {chat_shots!r}")
    samplers = {}
    for name in ("sampler", "chat_sampler"):
        values = section(name)
        for key, value in values.items():
            if key not in SAMPLER_KEYS:
                raise fail(f"{name}.{key}", f"unknown sampler setting (known: {', '.join(SAMPLER_KEYS)})")
            if value is not None and not isinstance(value, (SAMPLER_KEYS[key], int) if SAMPLER_KEYS[key] is float else SAMPLER_KEYS[key]):
                raise fail(f"{name}.{key}", f"must be {SAMPLER_KEYS[key].__name__}; got {value!r}")
        samplers[name] = values
    strings = ("base_example", "base_query", "separator", "chat_user")
    for key in strings:
        if key in prompt and not isinstance(prompt[key], str):
            raise fail(f"prompt.{key}", "must be a string")
    if "{question}" not in prompt.get("base_query", "{question}") or "{question}" not in prompt.get("chat_user", "{question}"):
        raise fail("prompt", "base_query and chat_user must contain {question}")
    return Task(
        name=str(raw.get("name") or path.stem), path=path, description=str(raw.get("description") or ""),
        source=source, question_field=fields_.get("question", "question"), gold_field=fields_.get("gold", "answer"),
        gold_regex=fields_.get("gold_regex"), gold_boxed=fields_.get("gold_boxed", False),
        reference_field=fields_.get("reference"), extractor=answer.get("extractor", "boxed"),
        scorer=answer.get("scorer", "math_verify"), numeric=bool(answer.get("numeric", False)),
        lm_eval=answer.get("lm_eval"), until=until, add_bos=prompt.get("add_bos", False), published=published,
        template=prompt.get("template", "base"), shots=shots, chat_shots=chat_shots, system=prompt.get("system"), fewshot=fewshot,
        sampler=samplers["sampler"], chat_sampler=samplers["chat_sampler"],
        **{key: prompt[key] for key in strings if key in prompt},
    )


def _builtin_fewshot(source: dict[str, Any]) -> list[dict[str, str]]:
    """The built-in arithmetic task's fixed exemplars, the same turns its k-shot training rows carry."""
    if source.get("builtin") != "arithmetic":
        return []
    from dreamlab.data.arithmetic import LEVELS, fewshot_examples

    level = source.get("level", 1)
    return fewshot_examples(int(level)) if level in LEVELS else []


def _line(node: yaml.Node | None, dotted: str) -> int:
    """The 1-based line of a dotted field in the composed YAML (the deepest part that exists)."""
    line = 1 if node is None else node.start_mark.line + 1
    for part in dotted.split("."):
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == part), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and part.isdigit() and int(part) < len(node.value):
            node = node.value[int(part)]
            line = node.start_mark.line + 1
        else:
            break
    return line


# -- data sources ---------------------------------------------------------------------------------


def _load_rows(task: Task, data: str | None) -> list[dict[str, Any]]:
    source = task.source
    if data is not None:
        return _read_local(task, Path(data).expanduser())
    if source.get("builtin"):
        if source["builtin"] != "arithmetic":
            raise TaskError(f"{task.path}: source.builtin: unknown built-in task {source['builtin']!r} (known: arithmetic)")
        from dreamlab.data.arithmetic import arithmetic_rows

        return arithmetic_rows(source.get("split", "test"), level=int(source.get("level", 1)), seed=int(source.get("seed", 0)))
    local = source.get("local")
    if local and Path(local).expanduser().is_file():
        return _read_local(task, Path(local).expanduser())
    hub = source.get("hub")
    if not hub:
        if local:
            raise TaskError(f"{task.name}: data file {local} not found (relative to the current folder) and the task names no hub id")
        raise TaskError(f"{task.name}: this task reads a file you name: pass --data FILE.jsonl")
    try:
        import datasets

        subsets = source.get("subsets") or [source.get("subset")]
        loaded = [row for subset in subsets for row in datasets.load_dataset(hub, subset, split=source.get("split", "test"))]
    except Exception as error:  # noqa: BLE001  (offline, unknown id, ... : one line for the user)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TaskError(f"{task.name}: {'no local file ' + local + ' and ' if local else ''}loading {hub} from the hub failed: {first}") from None
    return [dict(row) for row in loaded]


def _read_local(task: Task, path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise TaskError(f"{task.name}: no data file {path}")
    if path.suffix == ".jsonl":
        return [row for _, row in json_lines(path, TaskError)]
    if path.suffix == ".json":
        rows = read_json(path, TaskError)
        if not isinstance(rows, list):
            raise TaskError(f"{path}: expected a JSON list of objects")
        return rows
    import datasets

    from dreamlab.data.sources import quiet_datasets

    kind = {".parquet": "parquet", ".csv": "csv"}.get(path.suffix)
    if kind is None:
        raise TaskError(f"{path}: unsupported data file type {path.suffix} (use .jsonl, .json, .parquet or .csv)")
    try:
        with quiet_datasets():
            return [dict(row) for row in datasets.load_dataset(kind, data_files=str(path), split="train")]
    except Exception as error:  # noqa: BLE001 - pyarrow, pandas and datasets raise many types for a bad file
        while error.__cause__ is not None:  # datasets wraps the reader's error in a generic one
            error = error.__cause__
        first = str(error).strip().splitlines()[0] if str(error).strip() else "no message"
        raise TaskError(f"{path}: cannot read {kind} ({type(error).__name__}: {first})") from None
