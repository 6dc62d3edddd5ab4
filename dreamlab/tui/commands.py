"""Command palette provider: the console's main actions and every run by name."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider


MAIN_COMMANDS = 5  # the first entries of _commands, offered before anything is typed


class ConsoleCommands(Provider):
    """New run, runs, compare, evals, help, all evals, and open / evals / evaluate / stop for each known run."""

    def _commands(self) -> list[tuple[str, object, str]]:
        app = self.app
        commands: list[tuple[str, object, str]] = [
            ("New run", app.action_new_run, "pick a recipe, edit overrides, start it detached"),
            ("Runs", app.action_show_runs, "back to the run history"),
            ("Compare marked runs", app.action_compare_marked, "params that differ, final metrics, loss curves"),
            ("Evals of this run", app.action_evals, "accuracy grid, samples, denoising replay (key e)"),
            ("Help: key bindings", app.action_help, "every key of every screen"),
            ("All evals", app.action_all_evals, "every eval job and eval in the store, whatever the model (key a)"),
        ]
        for row in app.known_runs():
            commands.append((f"Open run {row.name}", partial(app.open_run, row.id), f"{row.status}, step {row.steps}"))
            commands.append((f"Evals of run {row.name}", partial(app.open_evals, row.id, row.name),
                             "accuracy grid, samples, denoising replay"))
            commands.append((f"Evaluate run {row.name}", partial(app.open_eval_form, row.id, row.name),
                             "its newest checkpoint on a task, as a detached eval job"))
            if row.status in ("running", "lost"):
                commands.append((f"Stop run {row.name}", partial(app.confirm_stop, row.id, row.name, row.status),
                                 "SIGTERM, checkpoint, stopped (asks first)"))
        return commands

    async def discover(self) -> Hits:
        """The main actions, before anything is typed."""
        for name, callback, help_text in self._commands()[:MAIN_COMMANDS]:
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        """Fuzzy-match every command."""
        matcher = self.matcher(query)
        for name, callback, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)
