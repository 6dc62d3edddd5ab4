"""A checkpoint write that fails (ENOSPC injected at the write call): the reason names the disk, nothing partial stays."""

from __future__ import annotations

import errno
import traceback

import pytest

from dreamlab.train import checkpoint


def test_a_failed_write_removes_the_tmp_folder_and_names_the_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint.dist, "get_rank", lambda: 0)
    done = checkpoint.checkpoint_dir(tmp_path, 3)
    done.mkdir(parents=True)
    (done / "trainer.json").write_text("{}")

    def fill_the_disk(tmp, final, **_):
        tmp.mkdir(parents=True)
        (tmp / "partial.safetensors").write_bytes(b"x" * 100)
        raise RuntimeError("Error while serializing") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "_write", fill_the_disk)
    with pytest.raises(checkpoint.CheckpointError) as failed:
        checkpoint.save_checkpoint(run_dir=tmp_path, step=4, model=None, optimizer=None, tokenizer=None,
                                   trainer_state={}, rank_state={}, keep=2)
    message = str(failed.value)
    assert "checkpoint step 4" in message and "disk full" in message and str(tmp_path / "checkpoints") in message
    assert "MiB free" in message
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000003"]
    assert checkpoint.complete_checkpoints(tmp_path) == [(3, done)]


def test_other_write_errors_name_their_cause(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint.dist, "get_rank", lambda: 0)

    def vanish(tmp, final, **_):
        tmp.mkdir(parents=True)
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp / "model"))

    monkeypatch.setattr(checkpoint, "_write", vanish)
    with pytest.raises(checkpoint.CheckpointError, match="PermissionError: .*Permission denied") as failed:
        checkpoint.save_checkpoint(run_dir=tmp_path, step=1, model=None, optimizer=None, tokenizer=None,
                                   trainer_state={}, rank_state={}, keep=2)
    assert "disk full" not in str(failed.value)
    assert not list((tmp_path / "checkpoints").iterdir())


def test_a_dcp_failure_which_is_a_base_exception_is_caught_too(tmp_path, monkeypatch):
    """torch's CheckpointException derives from BaseException: it must not slip past the cleanup."""
    from torch.distributed.checkpoint.api import CheckpointException

    monkeypatch.setattr(checkpoint.dist, "get_rank", lambda: 0)

    def dcp_fails(tmp, final, **_):
        tmp.mkdir(parents=True)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as full:  # DCP collects each rank's exception with its stack
            raise CheckpointException("save", {0: (full, traceback.extract_tb(full.__traceback__))}) from None

    monkeypatch.setattr(checkpoint, "_write", dcp_fails)
    with pytest.raises(checkpoint.CheckpointError, match="disk full"):
        checkpoint.save_checkpoint(run_dir=tmp_path, step=2, model=None, optimizer=None, tokenizer=None,
                                   trainer_state={}, rank_state={}, keep=2)
    assert not list((tmp_path / "checkpoints").iterdir())
