"""The one training loop of `fsl train`, `fsl align` and `fsl adapt`.

Each job says what a step's loss is, what a validation point scores, how its weights are saved and
what else a resumed run needs (a `Trainable`); the loop does the rest the same way for all three:
resume from last/ (refused when it was trained with other settings), TensorBoard, the untrained start
scored as a candidate where the job has one, a stop at the first non-finite loss or weight before
anything of that step is saved, a validation point every `val_every` steps and at the end, best/ and
last/ written atomically, and a hook that a sweep's pruner reads (and may stop the run by raising)."""

from __future__ import annotations

import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm, trange

from fsl.errors import FslError
from fsl.inference.checkpoints import load_train_state, save_train_state

logger = logging.getLogger(__name__)


class Trainable(ABC):
    """One job's weights, data and objective, as the loop drives them."""

    name: str  # the run's, in messages and the progress bar
    task: str  # the command, in the progress bar and in messages: "train", "align", "adapt"

    @abstractmethod
    def parameters(self) -> list[torch.nn.Parameter]:
        """What the optimiser moves (checked finite after every step)."""

    @abstractmethod
    def loss(self, step: int) -> tuple[str, torch.Tensor]:
        """This step's loss on a fresh batch, and its name in TensorBoard (train/<name>)."""

    @abstractmethod
    def validate(self) -> dict[str, float]:
        """Figures on the held-out (validation or fold) episodes; "score" chooses the step, higher better."""

    @abstractmethod
    def save(self, folder: Path, step: int, figures: dict, start: dict | None) -> None:
        """The weights and their sidecar in `folder` (best/ or last/), as the job's readers load them."""

    @abstractmethod
    def state(self) -> dict:
        """What a resumed run needs besides the optimiser to go on as if never stopped (weights the
        checkpoint does not hold, the samplers' and augmentations' generators)."""

    @abstractmethod
    def load_state(self, state: dict, folder: Path) -> None:
        """Put back what `state` returned (and the weights saved in `folder`, last/)."""


@dataclass
class Schedule:
    steps: int
    val_every: int
    lr: float
    lr_name: str  # how the user sets it, for the message when a run diverges ("train.lr", "lr")


def non_finite(job: Trainable, loss: torch.Tensor) -> list[str]:
    """What is not finite after a step: the loss, or (three of) the weights."""
    bad = [] if torch.isfinite(loss) else [f"the loss is {loss.item()}"]
    return (
        bad + [f"weight {i} holds NaN/inf" for i, p in enumerate(job.parameters()) if not torch.isfinite(p).all()][:3]
    )


def run_loop(
    job: Trainable,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    folder: Path,
    runs: str | os.PathLike,
    identity: dict,
    resume: bool = True,
    progress: bool = True,
    start_is_candidate: bool = True,
    on_validation: Callable[[int, float], None] | None = None,
    hparams: dict | None = None,
    choose_step: bool = True,
) -> tuple[dict, dict | None]:
    """Train `job` for `schedule.steps`, resuming from `folder`/last unless `resume` is False; returns
    (the chosen step's figures with its "step", the untrained start's figures or None). `identity`:
    what the run is (its config, its catalog), saved with the state; a last/ saved for another is
    refused rather than continued. `hparams`: written to TensorBoard's hparams view with the best score.
    Without `choose_step` nothing is held out to choose with: every checkpoint is also best/, so the
    run's is its last step (the untrained start is no candidate)."""
    identity = plain(identity)  # as it reads back from the saved state
    state = load_train_state(folder / "last") if resume else None
    best, start, done = {"score": -math.inf, "step": 0}, None, 0
    with SummaryWriter(str(runs)) as writer:
        if state is not None:
            if any(state.get(key) != value for key, value in identity.items()) or "job" not in state:
                raise FslError(
                    f"{folder / 'last'} was saved by a run with other settings or another catalog; pass --restart "
                    "to start over"
                )
            job.load_state(state["job"], folder / "last")
            optimizer.load_state_dict(state["optimizer"])
            done, best, start = int(state["step"]), state["best"], state["start"]
            chosen = f"best validation score {best['score']:.4f} at step {best['step']}" if choose_step else "its last"
            logger.info(f"resuming {job.name} at step {done} ({chosen})")
        elif start_is_candidate and choose_step:  # a chosen step never loses to the untrained start
            start = job.validate()
            best = {**start, "step": 0}
            job.save(folder / "best", 0, start, start)
            for key, value in start.items():
                writer.add_scalar(f"val/{key}", value, 0)
            logger.info(f"{job.name}: step 0 (the untrained start), validation score {start['score']:.4f}")
        bar = trange(done + 1, schedule.steps + 1, desc=f"{job.task} {job.name}", disable=None if progress else True,
                     initial=done, total=schedule.steps)  # fmt: skip
        for step in bar:
            name, loss = job.loss(step)
            if not torch.isfinite(loss):  # before the step: nothing of it reaches the weights
                raise FslError(stopped(job, step, non_finite(job, loss), schedule))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            problems = non_finite(job, loss)
            if problems:
                raise FslError(stopped(job, step, problems, schedule))
            writer.add_scalar(f"train/{name}", loss.item(), step)
            writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
            if step % schedule.val_every and step != schedule.steps:
                continue
            figures = job.validate()
            for key, value in figures.items():
                writer.add_scalar(f"val/{key}", value, step)
            improved = not choose_step or figures["score"] > best["score"]
            if improved:
                best = {**figures, "step": step}
                job.save(folder / "best", step, figures, start)
            against = " (new best)" if improved else f" (best {best['score']:.4f} at step {best['step']})"
            scored = f"validation score {figures['score']:.4f}{against}" if choose_step else "saved (nothing held out)"
            (tqdm.write if progress else print)(
                f"{job.name}: step {step}/{schedule.steps}, {scored}; training loss {loss.item():.4f}"
            )
            job.save(folder / "last", step, figures, start)
            save_train_state(folder / "last", {"job": job.state(), "optimizer": optimizer.state_dict(), "step": step,
                                               "best": best, "start": start, **identity})  # fmt: skip
            if on_validation is not None and choose_step:
                on_validation(step, figures["score"])
        writer.add_scalar("val/chosen_step", best["step"], schedule.steps)  # 0: the untrained start won
        if hparams is not None:
            writer.add_hparams(hparams, {"hparam/best_val_score": best["score"]}, run_name="hparams")
    return best, start


def plain(value):
    """Tuples as lists, all the way down: a record that compares equal after a save and a load."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def stopped(job: Trainable, step: int, problems: list[str], schedule: Schedule) -> str:
    """Why a diverging run stopped, and what to change."""
    return (
        f"{job.task} {job.name} stopped at step {step}: {'; '.join(problems)}. Nothing of this step was saved "
        f"(best/ and last/ hold earlier steps). The likely cause is a learning rate too high "
        f"({schedule.lr_name} = {schedule.lr:g}); lower it (e.g. --restart with a 10x smaller one)"
    )
