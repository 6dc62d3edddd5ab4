"""Small modal dialogs: a yes / no confirmation and an error report."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static


class ConfirmScreen(ModalScreen[bool]):
    """A question; dismisses True on yes (y), False on no (n / escape)."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__()
        self.question, self.detail = question, detail

    def compose(self) -> ComposeResult:
        """Question, detail, buttons."""
        with Vertical(classes="dialog"):
            yield Label(self.question, classes="form-title")
            yield Static(self.detail)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Yes (y)", variant="error", id="yes")
                yield Button("No (n)", id="no")

    def on_mount(self) -> None:
        """No is the safe default."""
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        """Answer with the button."""
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        """Answer with the key."""
        self.dismiss(yes)


class ErrorScreen(ModalScreen[None]):
    """What went wrong in an action; any key closes it."""

    BINDINGS = [Binding("escape,enter,q", "close", "Close")]

    def __init__(self, title: str, error: str) -> None:
        super().__init__()
        self.title_text, self.error = title, error

    def compose(self) -> ComposeResult:
        """Title and message."""
        with Vertical(classes="dialog error-dialog"):
            yield Label(self.title_text, classes="form-title")
            yield Static(self.error)
            yield Button("Close (esc)", id="close")

    @on(Button.Pressed)
    def action_close(self) -> None:
        """Close."""
        self.dismiss(None)
