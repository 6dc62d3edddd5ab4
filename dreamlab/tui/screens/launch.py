"""The launch form: a recipe, overrides and a name, validated in place before anything starts."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static
from textual.worker import get_current_worker

from dreamlab.config import RECIPES_DIR, load_recipe


@dataclass(frozen=True)
class LaunchRequest:
    """What the form holds."""

    recipe: str
    overrides: tuple[str, ...]
    name: str | None

    @classmethod
    def parse(cls, recipe: str, overrides: str, name: str) -> LaunchRequest:
        """Split the overrides like a shell would; an empty name means a generated one."""
        return cls(recipe, tuple(shlex.split(overrides)), name.strip() or None)


def recipe_names() -> list[str]:
    """The packaged recipes, by name."""
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def check(request: LaunchRequest) -> str:
    """Everything `dreamlab train` refuses before starting, as an exception; a summary when it would start."""
    from dreamlab.train.launcher import check_before_launch

    recipe = load_recipe(request.recipe, list(request.overrides))
    check_before_launch(recipe)
    steps = recipe.trainer.total_training_steps
    return (f"ok: {recipe.model.partial_pretrain}, lr {recipe.optim.lr:g}, "
            f"{f'{steps} steps' if steps else f'{recipe.trainer.total_epochs} epochs'}, "
            f"{recipe.trainer.nproc_per_node} process(es) on {recipe.trainer.device}")


class LaunchScreen(ModalScreen[str | None]):
    """Pick a recipe, edit overrides; dismisses with the started run's name (None when cancelled)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("ctrl+s", "launch", "Launch")]

    class Checked(Message):
        """A validation finished: `error` is None when the request would start."""

        def __init__(self, request: LaunchRequest, error: str | None, summary: str = "") -> None:
            super().__init__()
            self.request, self.error, self.summary = request, error, summary

    class Launched(Message):
        """A launch finished: the run's name, or why nothing started."""

        def __init__(self, name: str | None, error: str | None) -> None:
            super().__init__()
            self.name, self.error = name, error

    def __init__(self, recipe: str = "tiny-arithmetic") -> None:
        super().__init__()
        self.initial_recipe = recipe
        self.launching = False

    def compose(self) -> ComposeResult:
        """Recipe select, overrides, name, the verdict, buttons."""
        with Vertical(id="launch-form"):
            yield Label("New run", classes="form-title")
            names = recipe_names()
            yield Select([(name, name) for name in names], allow_blank=False, id="recipe",
                         value=self.initial_recipe if self.initial_recipe in names else names[0])
            yield Input(placeholder="overrides: optim.lr=1e-3 trainer.total_training_steps=50", id="overrides")
            yield Input(placeholder="name (empty: generated)", id="name")
            yield Static("", id="launch-error")
            with Horizontal(id="launch-buttons"):
                yield Button("Launch (ctrl+s)", variant="primary", id="launch")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        """Check the default request."""
        self.query_one("#overrides", Input).focus()
        self.revalidate()

    def request(self) -> LaunchRequest:
        """The form's current request (ValueError for unbalanced quotes)."""
        return LaunchRequest.parse(str(self.query_one("#recipe", Select).value),
                                   self.query_one("#overrides", Input).value, self.query_one("#name", Input).value)

    @on(Input.Changed)
    @on(Select.Changed)
    def revalidate(self) -> None:
        """Check the request as the user edits it."""
        try:
            request = self.request()
        except ValueError as error:
            self.show_verdict(f"overrides: {error}")
            return
        self._check_worker(request)

    @work(thread=True, exclusive=True, group="check")
    def _check_worker(self, request: LaunchRequest) -> None:
        try:
            summary, error = check(request), None
        except Exception as failure:  # noqa: BLE001 - RecipeError and friends: shown in place
            summary, error = "", str(failure)
        if not get_current_worker().is_cancelled:
            self.post_message(self.Checked(request, error, summary))

    def on_launch_screen_checked(self, message: Checked) -> None:
        """Show the verdict if it is about what the form holds now."""
        try:
            current = self.request()
        except ValueError:
            return
        if message.request == current and not self.launching:
            self.show_verdict(message.error, message.summary)

    def show_verdict(self, error: str | None, summary: str = "") -> None:
        """Red error text, or the green summary of what would start."""
        verdict = self.query_one("#launch-error", Static)
        verdict.set_class(error is not None, "error")
        verdict.update(f"error: {error}" if error is not None else summary)

    @on(Button.Pressed, "#launch")
    @on(Input.Submitted)
    def action_launch(self) -> None:
        """Validate once more and start the run detached."""
        if self.launching:
            return
        try:
            request = self.request()
        except ValueError as error:
            self.show_verdict(f"overrides: {error}")
            return
        self.launching = True
        self.show_verdict(None, "starting…")
        self._launch_worker(request)

    @work(thread=True, exclusive=True, group="launch")
    def _launch_worker(self, request: LaunchRequest) -> None:
        from dreamlab.train.launcher import launch
        from dreamlab.train.processes import reap_when_done

        store = self.app.store
        try:
            run, process = launch(store, store.path, load_recipe(request.recipe, list(request.overrides)), name=request.name)
        except Exception as failure:  # noqa: BLE001 - nothing started: say why, in place
            self.post_message(self.Launched(None, str(failure)))
            return
        reap_when_done(process, f"run-{run.id}")
        self.post_message(self.Launched(run.name, None))

    def on_launch_screen_launched(self, message: Launched) -> None:
        """Close with the run's name, or show why nothing started."""
        self.launching = False
        if message.error is not None:
            self.show_verdict(message.error)
        else:
            self.dismiss(message.name)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        """Close without starting anything."""
        self.dismiss(None)
