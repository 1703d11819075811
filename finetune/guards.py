"""Callbacks that guard a training run: a signal stops it cleanly, a non-finite number stops it loudly.

`StopOnSignal`: SIGTERM or SIGINT (Slurm preemption, a spot instance reclaimed, Ctrl-C) asks the
trainer to save a checkpoint at the end of the current optimizer step and stop; the run then ends
with `Interrupted` (exit code 75, EX_TEMPFAIL: "try again later") naming the `--resume` command. A
second signal stops at once. Under several processes every rank agrees on the step to stop at (the
flag is all-reduced at each step end), so the checkpoint is one consistent state.

`StopOnNonFinite`: a NaN or infinite gradient norm (what a NaN or infinite loss produces) stops the
run with a `TrainingError` naming the step, before the optimizer applies it, so no checkpoint with
broken weights is ever written after the last good one.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from finetune.errors import FtError, TrainingError
from finetune.notices import notice

# sysexits.h EX_TEMPFAIL: the run did not fail, it was stopped and can be continued.
INTERRUPTED_EXIT_CODE = 75
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A launcher forwards the signal it receives (torchrun sends SIGTERM to every worker, a terminal
# sends SIGINT to the whole process group), so one request can arrive twice within moments. Only a
# signal later than this counts as the second one that stops at once.
REPEAT_WINDOW_S = 2.0


class Interrupted(FtError):
    """Training was stopped by a signal after saving a checkpoint; `--resume` continues it."""

    exit_code = INTERRUPTED_EXIT_CODE


def interrupted(message: str) -> Interrupted:
    """The error a stopped run ends with. A worker of `ft run --nproc N` exits 0 with it, so the
    launcher does not report a failure; the parent, which forwarded the signal, returns 75."""
    err = Interrupted(message)
    if os.environ.get("FT_LAUNCHED") == "1":  # finetune.launch.LAUNCHED_ENV (launch imports this module)
        err.exit_code = 0
    return err


class StoppedAtOnce(FtError):
    """A second signal: stop immediately, without saving the current step."""

    exit_code = 128 + signal.SIGTERM  # 143, the conventional "terminated" status


class StopOnSignal(TrainerCallback):
    """Turns SIGTERM/SIGINT into "save at the end of this step, then stop"."""

    def __init__(self, stopped: Callable[[str, int], FtError]) -> None:
        self.stopped = stopped  # (signal name, saved step) -> the error the run ends with
        self.requested: str | None = None  # name of the first signal received
        self.stopped_at: int | None = None  # the step whose checkpoint was saved
        self._first_at = 0.0
        self._previous: dict[int, Any] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python lets only the main thread install handlers; a notebook thread keeps defaults
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.requested is None:
            self.requested, self._first_at = name, time.monotonic()
            notice(f"{name} received: saving a checkpoint at the end of the current step, then stopping "
                   f"(send it again to stop at once, without saving)")
            return
        if time.monotonic() - self._first_at < REPEAT_WINDOW_S:
            return  # the same request forwarded by a launcher, not a second one
        self.restore()
        raise StoppedAtOnce(f"{name} received twice: stopped at once; the current step was not saved. "
                            f"`--resume` continues from the last checkpoint.")

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if _any_rank(self.requested is not None, args.device):
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        # End the run here, right after the checkpoint is complete: not every trainer's loop honours
        # should_training_stop (TRL's PPO loop does not), and nothing after this point is wanted.
        if self.stopped_at is not None and self.requested is not None:
            self.restore()
            raise self.stopped(self.requested, self.stopped_at)

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.restore()

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _any_rank(flag: bool, device: Any) -> bool:
    """True on every rank when it is true on any: all ranks must stop at the same step."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    # nccl reduces CUDA tensors only; gloo takes CPU ones. args.device is the rank's own device.
    tensor = torch.tensor([1 if flag else 0], device=device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


class StopOnNonFinite(TrainerCallback):
    """Stops before an optimizer step whose gradients are NaN or infinite (the loss was, or the
    weights have diverged). Gradients are reduced across ranks by then, so every rank stops alike."""

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        import torch

        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).item()
        if not math.isfinite(norm):
            raise _non_finite(state.global_step + 1, f"gradient norm is {norm}", args)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
        # Trainer replaces a NaN loss by the running mean when it logs, so the gradients above are
        # the reliable signal; an objective that logs its own loss (PPO, GRPO) is checked here.
        for key, value in (logs or {}).items():
            if "loss" in key and isinstance(value, float) and not math.isfinite(value):
                raise _non_finite(state.global_step, f"{key} is {value}", args, before_update=False)


def _non_finite(step: int, what: str, args: Any, *, before_update: bool = True) -> TrainingError:
    from pathlib import Path

    from finetune.resume import checkpoints

    found = checkpoints(Path(args.output_dir).parent)  # args.output_dir is the run's checkpoints/
    kept = f"the last good checkpoint is kept: {found[0]}" if found else "no checkpoint was written"
    when = "Stopped before applying it" if before_update else "Stopped before saving it"
    return TrainingError(
        f"training diverged at step {step}: {what}. {when}; {kept}. Lower training.learning_rate (now "
        f"{args.learning_rate:g}), keep training.max_grad_norm set, or check the data and precision (fp16 "
        f"overflows where bf16 does not).")
