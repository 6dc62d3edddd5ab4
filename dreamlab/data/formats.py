"""Input schemas (s1K simplified, s1K, s1K-1.1, GSM8K, prepared Dream rows) and their converters."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dreamlab.data.errors import DataError, InvalidRow
from dreamlab.data.sources import SourceRow

# Dream-Instruct's chat template (Qwen2.5's) puts this system message in when none is given, so
# SFT rows that carry it look like what the instruct model saw.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
TRAJECTORIES = ("deepseek", "gemini")
ROLES = ("system", "user", "assistant")

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class DreamRow:
    """One SFT row: chat messages for the prompt, the assistant response and side metadata."""

    prompt: Messages
    response: str
    meta: dict[str, Any]

    def as_record(self) -> dict[str, Any]:
        """The row as written to jsonl / parquet."""
        return {"prompt": self.prompt, "response": self.response, "meta": self.meta}


@dataclass(frozen=True)
class ConvertOptions:
    """Choices that change how a row is converted."""

    system: str | None = DEFAULT_SYSTEM_PROMPT
    trajectory: str = "deepseek"
    strip_calculator: bool = True


def think_response(thinking: str, answer: str) -> str:
    """Dream's response text: the trace inside think tags (an empty block without one), then the final answer."""
    body = f"{thinking.strip()}\n" if thinking.strip() else ""
    return f"<think>\n{body}</think>\n{answer.strip()}"


def chat_prompt(question: str, system: str | None, examples: Sequence[Mapping[str, str]] = ()) -> Messages:
    """The prompt messages: the system turn (unless None), each solved example as a user and an assistant turn, the question."""
    head = [{"role": "system", "content": system}] if system is not None else []
    for example in examples:
        head += [{"role": "user", "content": example["question"]}, {"role": "assistant", "content": example["solution"]}]
    return head + [{"role": "user", "content": question}]


def _fewshot(row: SourceRow) -> list[dict[str, str]]:
    """The row's optional `fewshot` list of solved {question, solution} examples (the k-shot built-in task)."""
    examples = row.record.get("fewshot")
    if examples is None:
        return []
    if not isinstance(examples, list):
        raise InvalidRow(row.where, "fewshot", f"must be a list of {{question, solution}} objects, got {type(examples).__name__}")
    for position, example in enumerate(examples):
        for key in ("question", "solution"):
            value = example.get(key) if isinstance(example, Mapping) else None
            if not isinstance(value, str) or not value.strip():
                raise InvalidRow(row.where, f"fewshot[{position}].{key}", "must be a non-empty string")
    return examples


def _text(row: SourceRow, field: str, *, allow_list: bool = False) -> str:
    """A non-empty string field; with allow_list a list of strings is joined with newlines."""
    if field not in row.record or row.record[field] is None:
        raise InvalidRow(row.where, field, "is missing")
    value = row.record[field]
    if allow_list and isinstance(value, list) and all(isinstance(part, str) for part in value):
        value = "\n".join(value)
    if not isinstance(value, str):
        wanted = "a string or a list of strings" if allow_list else "a string"
        raise InvalidRow(row.where, field, f"must be {wanted}, got {type(value).__name__}")
    if not value.strip():
        raise InvalidRow(row.where, field, "is empty")
    return value


def _kept(row: SourceRow, fields: tuple[str, ...], name: str, **extra: Any) -> dict[str, Any]:
    """The meta column: format, original index, then whichever of `fields` the row has."""
    meta: dict[str, Any] = {"format": name, "index": row.index}
    meta.update({f: row.record[f] for f in fields if row.record.get(f) is not None})
    meta.update(extra)
    return meta


_THINK = re.compile(r"^\s*<think>(?P<thinking>.*?)</think>(?P<answer>.*)$", re.S)


def convert_s1k_simple(row: SourceRow, options: ConvertOptions) -> DreamRow:
    """Simplified S1K: `answer` holds `<think>...</think>` (possibly empty) and the final answer; `fewshot` is optional."""
    answer = _text(row, "answer")
    match = _THINK.match(answer)
    if match is None:
        raise InvalidRow(row.where, "answer", "does not start with a <think>...</think> block")
    if not match["answer"].strip():
        raise InvalidRow(row.where, "answer", "has no final answer after </think>")
    meta = _kept(row, ("source", "difficulty", "thinking_tokens", "answer_tokens"), "s1k-simple")
    return DreamRow(chat_prompt(_text(row, "question"), options.system, _fewshot(row)),
                    think_response(match["thinking"], match["answer"]), meta)


def convert_s1k(row: SourceRow, options: ConvertOptions) -> DreamRow:
    """s1K: `thinking_trajectories` (joined by newlines) is the trace, `attempt` the answer."""
    thinking = _text(row, "thinking_trajectories", allow_list=True)
    meta = _kept(row, ("source_type", "cot_type", "metadata"), "s1k")
    return DreamRow(chat_prompt(_text(row, "question"), options.system),
                    think_response(thinking, _text(row, "attempt")), meta)


def convert_s1k_1_1(row: SourceRow, options: ConvertOptions) -> DreamRow:
    """s1K-1.1: the chosen model's `*_thinking_trajectory` is the trace, its `*_attempt` the answer."""
    who = options.trajectory
    thinking = _text(row, f"{who}_thinking_trajectory", allow_list=True)
    answer = _text(row, f"{who}_attempt", allow_list=True)
    meta = _kept(row, ("source_type", "cot_type", "metadata"), "s1k-1.1", trajectory=who)
    if row.record.get(f"{who}_grade") is not None:
        meta["grade"] = row.record[f"{who}_grade"]
    return DreamRow(chat_prompt(_text(row, "question"), options.system), think_response(thinking, answer), meta)


_GSM8K_FINAL = re.compile(r"^(?P<solution>.*)\n####\s*(?P<final>[^\n]+?)\s*$", re.S)
_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def convert_gsm8k(row: SourceRow, options: ConvertOptions) -> DreamRow:
    """GSM8K: the worked solution is the trace, the `#### N` line the final answer."""
    match = _GSM8K_FINAL.match(_text(row, "answer"))
    if match is None or not match["solution"].strip():
        raise InvalidRow(row.where, "answer", "does not end with a worked solution and a '#### N' line")
    solution = match["solution"]
    if options.strip_calculator:
        solution = _CALCULATOR_NOTE.sub("", solution)
    # Every GSM8K answer is an integer once thousands commas go ("2,125"): write it as one.
    final = _THOUSANDS.sub("", match["final"])
    meta = _kept(row, (), "gsm8k")
    return DreamRow(chat_prompt(_text(row, "question"), options.system), think_response(solution, final), meta)


def convert_dream(row: SourceRow, options: ConvertOptions) -> DreamRow:
    """Prepared rows pass through: a string prompt becomes the chat prompt, a message list is kept."""
    prompt = row.record.get("prompt")
    if isinstance(prompt, str):
        messages = chat_prompt(_text(row, "prompt"), options.system)
    elif isinstance(prompt, list):
        messages = [_message(row, position, message) for position, message in enumerate(prompt)]
        if not messages:
            raise InvalidRow(row.where, "prompt", "is an empty list of messages")
    elif prompt is None:
        raise InvalidRow(row.where, "prompt", "is missing")
    else:
        raise InvalidRow(row.where, "prompt", f"must be a string or a list of messages, got {type(prompt).__name__}")
    given = row.record.get("meta")
    if given is not None and not isinstance(given, dict):
        raise InvalidRow(row.where, "meta", f"must be an object, got {type(given).__name__}")
    # Earlier provenance wins: re-preparing a prepared file keeps its original format and index.
    meta = {"format": "dream", "index": row.index, **(given or {})}
    return DreamRow(messages, _text(row, "response"), meta)


def _message(row: SourceRow, position: int, message: Any) -> dict[str, str]:
    field = f"prompt[{position}]"
    if not isinstance(message, Mapping):
        raise InvalidRow(row.where, field, f"must be a message object, got {type(message).__name__}")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise InvalidRow(row.where, f"{field}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    if not isinstance(content, str):
        raise InvalidRow(row.where, f"{field}.content", f"must be a string, got {type(content).__name__}")
    return {"role": role, "content": content}


Converter = Callable[[SourceRow, ConvertOptions], DreamRow]
CONVERTERS: dict[str, Converter] = {
    "s1k-simple": convert_s1k_simple,
    "s1k": convert_s1k,
    "s1k-1.1": convert_s1k_1_1,
    "gsm8k": convert_gsm8k,
    "dream": convert_dream,
}
FORMATS = tuple(CONVERTERS)


def detect_format(columns: set[str]) -> str:
    """Name the schema a set of columns belongs to, most specific first."""
    if {"prompt", "response"} <= columns:
        return "dream"
    if "question" in columns and any(f"{who}_thinking_trajectory" in columns for who in TRAJECTORIES):
        return "s1k-1.1"
    if {"question", "thinking_trajectories", "attempt"} <= columns:
        return "s1k"
    if {"question", "answer"} <= columns:
        if columns & {"thinking_tokens", "answer_tokens", "difficulty"}:
            return "s1k-simple"
        return "gsm8k"
    raise DataError(
        f"unknown format: cannot tell it from the columns {', '.join(sorted(columns))}; "
        f"pass --format ({', '.join(FORMATS)})"
    )


def resolve_format(requested: str, columns: set[str]) -> str:
    """The format to use: the requested one, or the detected one for `auto`."""
    if requested == "auto":
        return detect_format(columns)
    if requested not in CONVERTERS:
        raise DataError(f"unknown format '{requested}': choose auto or one of {', '.join(FORMATS)}")
    return requested
