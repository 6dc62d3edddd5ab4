"""`python -m dreamlab.evals.lm_eval [--store DB] LM-EVAL-ARGS...`: lm-eval's own CLI with the dreamlab model registered.

Every lm-eval option works as lm-eval defines it (tasks, --include_path, --apply_chat_template,
--num_fewshot, --limit, --output_path, ...). The entry adds --log_samples (and a temporary
--output_path when none is given), then reads the results and samples lm-eval wrote into the run store.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from dreamlab.store import RunStore, default_db_path

_LM_EVAL_SUBCOMMANDS = ("ls", "validate")


def main(argv: Sequence[str] | None = None) -> int:
    """Run lm-eval with the dreamlab model, then record its results; returns the exit status."""
    own = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    own.add_argument("--store", type=Path, default=None)
    options, rest = own.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    importlib.import_module("dreamlab.evals.lm_eval.model")  # registers --model dreamlab with lm-eval

    if not rest or rest[0] in _LM_EVAL_SUBCOMMANDS or "-h" in rest or "--help" in rest:
        if "-h" in rest or "--help" in rest:
            print("dreamlab: --store DB records the results in that run store (default: $DREAMLAB_DB or runs/dreamlab.db)")
        return _lm_eval(rest)
    with tempfile.TemporaryDirectory(prefix="dreamlab-lm-eval-") as scratch:
        output = _option(rest, "--output_path", "-o")
        if output is None:
            output = scratch
            rest += ["--output_path", scratch]
        if "--log_samples" not in rest and "-s" not in rest:
            rest.append("--log_samples")
        started = time.time()
        try:
            status = _lm_eval(rest)
            if status:
                return status
            return _record(Path(output), started, options.store or default_db_path())
        except (ValueError, FileNotFoundError, NotImplementedError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1


def _lm_eval(args: list[str]) -> int:
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm-eval", *args]
    try:
        cli_evaluate()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def _record(output: Path, started: float, db: Path) -> int:
    """Record every results file lm-eval wrote under `output` since `started`."""
    from dreamlab.evals.lm_eval.record import read_output, record_results

    pattern = f"{output.stem}_*.json" if output.suffix == ".json" else "results_*.json"
    folder = output.parent if output.suffix == ".json" else output
    written = sorted(path for path in folder.rglob(pattern) if path.stat().st_mtime >= started)
    if not written:
        print(f"error: lm-eval wrote no results under {output} (see its log above): nothing recorded", file=sys.stderr)
        return 1
    db.parent.mkdir(parents=True, exist_ok=True)
    with RunStore(db) as store:
        for path in written:
            for record in record_results(store, *read_output(path)):
                accuracy = "no 0/1 metric" if record.accuracy is None else f"accuracy {record.accuracy:.3f}"
                print(f"recorded eval {record.id} in {db}: {record.task}, {record.n_done} samples, {accuracy}")
    return 0


def _option(args: list[str], *names: str) -> str | None:
    for index, arg in enumerate(args):
        if arg in names and index + 1 < len(args):
            return args[index + 1]
        for name in names:
            if arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None


if __name__ == "__main__":
    sys.exit(main())
