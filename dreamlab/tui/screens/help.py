"""The key bindings of every screen, read from the screens themselves."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static
from rich.table import Table


KEY_NAMES = {"slash": "/", "question_mark": "?", "escape": "esc", "space": "space", "enter": "enter"}


def bindings_table(sections: list[tuple[str, list]]) -> Table:
    """A two-column table (key, action) with one heading per screen."""
    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for title, bindings in sections:
        table.add_row(f"[bold]{title}[/bold]", "")
        for binding in bindings:
            if isinstance(binding, Binding):
                keys = ", ".join(KEY_NAMES.get(key, key) for key in binding.key.split(","))
                table.add_row(keys, binding.description or binding.action)
        table.add_row("", "")
    return table


class HelpScreen(ModalScreen[None]):
    """Every key binding, grouped by screen; escape or ? closes it."""

    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def __init__(self, sections: list[tuple[str, list]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        """The table, scrollable."""
        with VerticalScroll(classes="dialog help-dialog"):
            yield Static(bindings_table(self.sections))

    def action_close(self) -> None:
        """Close."""
        self.dismiss(None)
