"""The shared readers of user text files: one error type, naming the file and line."""

from __future__ import annotations

import pytest

from dreamlab.textfiles import json_lines, read_json, read_json_object, read_utf8


class Refused(Exception):
    pass


def test_a_folder_is_refused_as_unreadable(tmp_path):
    with pytest.raises(Refused, match=rf"^{tmp_path}: cannot read \("):
        read_utf8(tmp_path, Refused)


def test_bytes_that_are_not_utf8_name_the_line_and_byte(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(Refused, match=r"rows\.jsonl line 2: not UTF-8 text \(byte 0xff at column 8\)$"):
        read_utf8(path, Refused)


def test_json_lines_skip_blank_lines_keep_u2028_and_name_a_bad_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"q": "a\u2028b"}\n\n  \n[1, 2]\n', encoding="utf-8")
    assert list(json_lines(path, Refused)) == [(1, {"q": "a\u2028b"}), (4, [1, 2])]
    path.write_text('{"q": 1}\n{"q": \n', encoding="utf-8")
    with pytest.raises(Refused, match=r"rows\.jsonl line 2: malformed JSON \(Expecting value at column 7\)$"):
        list(json_lines(path, Refused))


def test_json_files_name_the_line_of_bad_json_and_a_value_that_is_not_an_object(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{\n  "a": 1,\n}\n', encoding="utf-8")
    with pytest.raises(Refused, match=r"config\.json line 3: malformed JSON"):
        read_json(path, Refused)
    path.write_text("[1]", encoding="utf-8")
    assert read_json(path, Refused) == [1]
    with pytest.raises(Refused, match=r"config\.json: expected a JSON object, got list$"):
        read_json_object(path, Refused)
