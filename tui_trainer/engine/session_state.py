"""A session's state in a checkpoint, and back: ``checkpoint_of(session)`` is everything a resume needs
(weights, optimizer, early stopping, loop state, RNG, config, vocabulary, precision, the split, the
loss scale); ``restore_session(session, state)`` puts a checkpoint into a session just built. No
Textual import, ever."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from tui_trainer.engine.runtime import capture_rng, restore_rank_rng
from tui_trainer.engine.split import memory_record
from tui_trainer.rundir import checkpoints as ckpt
from tui_trainer.rundir import lifecycle as rd
from tui_trainer.rundir.loop_state import LoopState
from tui_trainer.rundir.tokenizer_record import vocab_record

if TYPE_CHECKING:
    from tui_trainer.engine.session import TrainingSession


def restore_session(session: TrainingSession, state: dict) -> None:
    """A resume: the checkpoint's weights, optimizer, early stopping, loss scale, loop state and RNG
    into the session just built (and the notes that say where it resumes)."""
    session.model.load_state_dict(state["model"])
    session.optimizer.load_state_dict(state["optimizer"])
    session.early_stopping.load_state_dict(state["early_stopping"])
    if session.loss_scaling is not None and state.get("grad_scaler") is not None:  # (else: a fresh scale)
        session.loss_scaling.load_state_dict(state["grad_scaler"])
    session.state = LoopState(**state["loop"])
    session.state.finished = None
    note = restore_rank_rng(state, session.ranks.rank, session.ranks.world_size, session.device)
    session.notes += [note] if note else []
    if session.ranks.is_main:  # (rank 0 alone writes in the run dir)
        rd.trim_metrics_after(session.run_dir, session.state.step, len(session.state.val_history), session.notes)
    session.notes.append(f"resumed at epoch {session.state.epoch}, step {session.state.step}")
    pending = rd.pending_accum_note(session.state)
    if pending:
        session.notes.append(pending)


def checkpoint_of(session: TrainingSession, rng: dict[str, Any] | None = None,
                  rank_rngs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything a resume needs. ``rank_rngs``: every rank's RNG state (several processes);
    ``diagnosis``: the run's latest verdict (the loop keeps it up to date)."""
    rng = rng if rng is not None else capture_rng(session.device)
    extra: dict[str, Any] = {}
    if rank_rngs is not None and len(rank_rngs) > 1:
        extra["rng_ranks"] = rank_rngs
    elif session.ranks.distributed:  # a rescue after a process was lost: only rank 0's state is here
        extra["rng_ranks_lost"] = True
    return {
        "format_version": ckpt.FORMAT_VERSION,
        "model": session.model.state_dict(),
        "optimizer": session.optimizer.state_dict(),
        "early_stopping": session.early_stopping.state_dict(),
        "loop": {**asdict(session.state), "elapsed_seconds": session.elapsed_seconds(),
                 "time_budget": session.budget.state_dict() if session.budget is not None else None,
                 "last_verdict": session.diagnosis.to_state() if session.diagnosis else None},
        "rng": rank_rngs[0] if "rng_ranks" in extra else rng,
        **extra,
        "world_size": session.ranks.world_size,
        "config": session.cfg.to_dict(),
        "vocab": vocab_record(session.corpus.vocab),
        "tokenizer": session.corpus.vocab.record(),
        "untrained_ids": list(session.untrained_ids),  # never sampled, by `sample` either
        "data_sha256": session.corpus.sha256,
        "data_path": session.corpus.path,
        "data_bytes": rd.data_size(session.corpus.path),
        "precision": session.precision,  # what the run trains in (a resume keeps it unless told)
        # how the split was chosen (--micro-batch auto)
        "memory": memory_record(session.cfg, session.fit, session.memory_budget, session.ranks.world_size),
        # fp16's loss scale and its growth count: a resume scales exactly as the unbroken run
        "grad_scaler": session.loss_scaling.state_dict() if session.loss_scaling is not None else None,
    }
