"""The one error type the data pipeline raises for bad input: its message is a single line."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input to `dreamlab data prepare`; the message names the file, row or option at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()) if "\n" in message else message)


class InvalidRow(DataError):
    """A row with a missing, wrongly typed or malformed field (dropped or fatal, by option)."""

    def __init__(self, where: str, field: str, problem: str) -> None:
        super().__init__(f"{where}: field '{field}' {problem}")
        self.where, self.field, self.problem = where, field, problem
