"""One hand-written DDP + AMP training loop, shared by the generator and the selector.

Read top to bottom: set-up (DDP, precision, optimizer, resume), then epochs of global steps
(optionally with compiled layers; micro-batches collated ahead by a background thread,
``no_sync`` accumulation, clipping, a non-finite guard), evaluation at each epoch end
(best-checkpoint keeping, early stop), and periodic, atomic checkpoints that resume exactly.

Exact resume needs no saved random state: dropout is reseeded from the seed and the
micro-batch's global number, and the data order is a function of (seed, epoch). Both
are independent of the number of ranks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist
from torch import nn
from torch.fx.experimental import _config as fx_config
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from selfmem.common.config import TrainConfig
from selfmem.common.cpu_memory import release_freed_memory
from selfmem.common.digest import fingerprint
from selfmem.common.distributed import DistEnv, agreed, all_gather, on_main
from selfmem.common.io import (
    atomic_directory,
    atomic_open,
    discard_partial,
    json_line,
    one_line,
    recover_directory,
)
from selfmem.common.records import CheckpointError
from selfmem.models.linear import weights_updated
from selfmem.train.prefetch import Prefetcher

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
TRAIN_LOG = "train_log.jsonl"
# train keys a checkpoint does not depend on: bookkeeping, the limits that a rerun may raise
# to continue a run (a finished one, or one stopped by non-finite steps), and how fast a step
# runs (compiled or eager differ by rounding only)
RESUME_FREE = ("train.save_every", "train.log_every", "train.max_steps", "train.max_epochs", "train.patience",
               "train.max_nonfinite", "train.prefetch", "train.compile")
# the train keys that split a step among the processes: a checkpoint records the step's size
# they give (as train.global_batch) instead, so that it resumes on any split of the same step
STEP_SPLIT = ("train.accumulate", "train.global_batch")
# below this loss scale the GradScaler no longer guards fp16's range (it shrinks gradients):
# a step that still overflows belongs to a diverging run, not to routine overflow handling
SCALE_FLOOR = 1.0


class TrainTask(Protocol):
    """What the loop needs from a model family: data, loss, evaluation, saving."""

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's micro-batches (example indices), identical on every rank."""

    def num_targets(self, batch: list[int]) -> int:
        """How many loss terms the summed loss of ``batch`` adds up (e.g. target tokens)."""

    def num_tokens(self, batch: list[int]) -> int:
        """Tokens processed for ``batch`` (for the tokens/s figure)."""

    def collate(self, batch: list[int]) -> dict[str, torch.Tensor]:
        """The tensors ``loss`` needs for ``batch``, on the CPU. Called ahead of the step, on
        another thread (``Prefetcher``): it must not draw from torch's global random generator."""

    def loss(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Summed (not averaged) loss of a micro-batch collated by ``collate``, moved to the device."""

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Dev figures, the same on every rank; key "metric" is maximised."""

    def save_model(self, model: torch.nn.Module, directory: Path) -> None:
        """Write the model as the stage's artifact into ``directory`` (rank 0 only)."""


@dataclass
class TrainState:
    """Where a run is, saved in its checkpoint: what an exact resume needs besides the weights."""

    step: int = 0  # optimizer steps taken, over all epochs
    epoch: int = 0
    step_in_epoch: int = 0  # steps of this epoch taken: a resume skips its first micro-batches
    best_metric: float = -math.inf  # the kept model's dev metric
    best_at_epoch_end: float = -math.inf  # what the next epoch end must beat
    bad_epochs: int = 0  # epoch ends in a row without a better metric (train.patience)
    nonfinite_steps: int = 0  # counted non-finite steps in a row, as last read from the device
    evaluated_step: int = -1  # the step of the last evaluation; -1: none yet


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: "auto" is bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def inverse_sqrt_schedule(warmup_steps: int) -> Callable[[int], float]:
    """Linear warmup to the peak, then decay with 1/sqrt(step) (Vaswani et al.).

    The factor at step 0 is 0, so the first update has learning rate 0 (fairseq's
    default warmup_init_lr); the peak is reached at step ``warmup_steps``.
    """
    warmup = max(1, warmup_steps)
    return lambda step: min(step / warmup, math.sqrt(warmup / max(step, 1)))


def parameters_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the bytes of every tensor of the model's state dict (parameters and buffers):
    equal digests mean bit-identical models."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def compiled_steps(enabled: bool) -> Iterator[None]:
    """The global settings compiled steps run under, undone after them (none unless ``enabled``).

    ``torch.use_deterministic_algorithms`` (warnings only): inductor then compiles scatters
    and index updates to aten's deterministic kernels, where its own would add with atomics in
    parallel, in an order that varies from run to run (the bits of the weights with it; the
    embedding's gradient was one while the whole model was compiled). New tensors are not
    filled first (the mode's default, a write of every allocation that only code reading
    garbage would need). No duck sizing: dynamo would give dimensions of equal size one symbol
    when it compiles (a bucketed source and target length, or as many rows, meet often) and
    recompile once they differ.
    """
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        with fx_config.patch(use_duck_shape=False):
            yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = fill


@contextmanager
def compiled_layers(model: nn.Module, enabled: bool) -> Iterator[None]:
    """``model``'s repeated layers (the members of each ``nn.ModuleList``) run compiled in this
    context, eager again after it (nothing changes unless ``enabled``).

    One compiled forward per layer class, with dynamic shapes, serves every layer of that
    class (PyTorch >= 2.5 makes their weights the graph's inputs), so compiling costs about
    one encoder and one decoder layer whatever the depth: on a CPU, 17 s for transformer-base
    where the whole model took 47 s (`bench/compile_time.py`), and the whole transformer-base
    had not compiled after three minutes on a 16-core GPU machine. The embeddings, the output
    projection and the loss run eager. Each layer's ``forward`` is shadowed by an instance
    attribute, deleted on the way out, so the weights' names and what evaluation runs stay
    those of the eager model; a layer that already has an instance ``forward`` (another
    library's hook) is left as it is.
    """
    if not enabled:
        yield
        return
    compiled: dict[type, Callable] = {}
    patched: list[nn.Module] = []
    try:
        for stack in model.modules():
            if not isinstance(stack, nn.ModuleList):
                continue
            for layer in stack:
                if "forward" in vars(layer):  # patched already (a layer in two lists), or hooked
                    continue
                kind = type(layer)
                if kind not in compiled:
                    compiled[kind] = torch.compile(kind.forward, dynamic=True)
                layer.forward = functools.partial(compiled[kind], layer)
                patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.forward


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process: first compiles and recompiles alike."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def micro_batches_per_step(config: TrainConfig, world_size: int) -> int:
    """Micro-batches in one optimizer step over all ranks: ``train.global_batch``, each rank
    accumulating its share, or ``world_size x train.accumulate`` where it is null."""
    total = config.global_batch
    if total is None:
        return world_size * config.accumulate
    if total < 1:
        raise ValueError(f"train.global_batch must be at least 1 micro-batch (or null), got {total}")
    if config.accumulate != 1:
        raise ValueError(f"train.global_batch ({total}) and train.accumulate ({config.accumulate}) both set the "
                         f"micro-batches per step: leave train.accumulate at 1 (each process then accumulates "
                         f"train.global_batch / processes) or set train.global_batch=null")
    if total % world_size:
        raise ValueError(f"train.global_batch = {total} micro-batches per step cannot be shared by {world_size} "
                         f"processes: start a number of processes that divides {total}")
    return total


def counts_as_nonfinite(scaler: torch.amp.GradScaler) -> bool | torch.Tensor:
    """Whether a step with non-finite gradients counts towards ``train.max_nonfinite``.

    Always without a GradScaler. With one (fp16), skipping the step and halving the scale is
    its routine handling of an overflow, frequent at the start of a run: such a step counts
    only once the scale it was taken with is below ``SCALE_FLOOR``. Once the scaler has
    scaled a loss the answer is a tensor on its device, so the step need not wait for it.
    """
    if not scaler.is_enabled():
        return True
    scale = scaler._get_scale_async()  # None before the first scaled loss
    return scaler.get_scale() < SCALE_FLOOR if scale is None else scale < SCALE_FLOOR


class NonfiniteGuard:
    """The non-finite guard, decided on the device so that a step never waits for it.

    A step whose gradient norm is not finite is skipped: the fused optimizer skips its
    update where ``found_inf`` is 1, as it does under a GradScaler. The consecutive
    counted skips (``counts_as_nonfinite``) and the step at which they reached
    ``train.max_nonfinite`` stay on the device; ``check``, called where the loop reads the
    device anyway (log, checkpoint, epoch end), stops the run naming that step. Every step
    after it is skipped too, so the model stays as it was when the run should have stopped.
    """

    def __init__(self, consecutive: int, limit: int, device: torch.device) -> None:
        self.limit = limit
        self.consecutive = torch.tensor(consecutive, device=device)
        self.stopped_at = torch.tensor(-1, device=device)

    def step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, grad_norm: torch.Tensor,
             step: int) -> None:
        """The optimizer's step (gradients already unscaled), skipped where it must be."""
        nonfinite = ~torch.isfinite(grad_norm)
        optimizer.grad_scale, optimizer.found_inf = None, (nonfinite | (self.stopped_at >= 0)).float()
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
        weights_updated()  # the fused step moves no version counter (see selfmem.models.linear)
        counted = nonfinite & counts_as_nonfinite(scaler)
        self.consecutive = torch.where(counted, self.consecutive + 1,
                                       torch.where(nonfinite, self.consecutive, 0))
        self.stopped_at = torch.where((self.stopped_at < 0) & counted & (self.consecutive >= self.limit), step,
                                      self.stopped_at)

    def check(self, state: TrainState) -> None:
        """Record the count in ``state``; raise if the run reached ``train.max_nonfinite``."""
        state.nonfinite_steps = int(self.consecutive)
        stopped_at = int(self.stopped_at)
        if stopped_at >= 0:
            raise RuntimeError(
                f"stopping: {self.limit} consecutive steps with non-finite gradients at step {stopped_at} "
                f"(lower train.lr, raise train.warmup_steps, or use train.precision=fp32)"
            )


def _save_checkpoint(path: Path, model, optimizer, scheduler, scaler, state: TrainState,
                     depends_on: dict[str, Any]) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "state": asdict(state), "depends_on": depends_on,
             "fingerprint": fingerprint([depends_on])},
            f,
        )


def check_resumable(path: Path, saved: dict, depends_on: dict[str, Any]) -> None:
    """Refuse checkpoint ``saved`` if it was written under other values of the config keys it
    depends on, naming each key that differs; one from before checkpoints recorded them is
    resumed with a warning."""
    if "fingerprint" not in saved:
        # such a checkpoint was resumed unchecked before; in the lift, state.json has checked it
        log.warning("%s records no config (written by an older selfmem): resumed without checking that this "
                    "run's settings are the ones it was trained with", path)
        return
    if saved["fingerprint"] == fingerprint([depends_on]):
        return
    old = saved["depends_on"]

    def shown(values: dict[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "(not set)"  # a key of another selfmem version

    changes = [f"{key} was {shown(old, key)}, now {shown(depends_on, key)}"
               for key in sorted(old.keys() | depends_on.keys()) if shown(old, key) != shown(depends_on, key)]
    raise ValueError(
        f"{path} was trained under other settings: {'; '.join(changes)}. Start afresh under a new run.name (or "
        f"delete {path.parent}), or rerun with the settings it was trained with to continue it")


def _save_model(task: TrainTask, model: torch.nn.Module, out_dir: Path) -> None:
    """The new best model replaces the last one as one unit; the checkpoint and the log beside
    it are carried over."""
    with atomic_directory(out_dir, keep=(CHECKPOINT, TRAIN_LOG)) as staging:
        task.save_model(model, staging)


def _load_checkpoint(path: Path, device: torch.device) -> dict:
    """A checkpoint written by ``_save_checkpoint``; a damaged one is an error that names it."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:  # their messages name no file
        reason = one_line(str(e)).split(". ")[0] or type(e).__name__  # torch's first sentence says what
        raise CheckpointError(f"{path}: cannot read the training checkpoint, the file is damaged or cut short "
                         f"({reason}); delete it to train from the start") from None


def _trim_log(path: Path, state: TrainState) -> None:
    """Drop the log records that the training resumed from ``state`` (its checkpoint's, or a
    fresh one's) writes again, so the log reads as one uninterrupted run."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the crash
            continue
        # an evaluation the checkpoint does not hold (a crash while saving after it) comes
        # again; the closing parameter digest belongs to the run that ended
        again = record.get("step", 0) > state.step or ("eval" in record and record["step"] > state.evaluated_step)
        if not again and "params_sha256" not in record:
            kept.append(line + "\n")
    with atomic_open(path) as f:
        f.writelines(kept)


def fit(
    model: torch.nn.Module,
    task: TrainTask,
    config: TrainConfig,
    env: DistEnv,
    out_dir: Path,
    seed: int,
    lr_schedule: Callable[[int], float],
    depends_on: dict[str, Any] | None = None,
) -> TrainState:
    """Train ``model`` on ``task`` until max_epochs, max_steps or early stop; resume if possible.

    ``out_dir`` receives the checkpoint, the JSON-lines log and (through
    ``task.save_model``) the best model on dev. ``depends_on`` holds the config values the
    training depends on, by dotted key (``config_values``, less ``RESUME_FREE``): the
    checkpoint records them, and a checkpoint written under others is refused. Of the keys
    that split a step among the ranks (``STEP_SPLIT``) it records only the micro-batches per
    step, as ``train.global_batch``: the world size is free as long as the step stays the same.
    """
    per_step = micro_batches_per_step(config, env.world_size)
    depends_on = {**{key: value for key, value in (depends_on or {}).items() if key not in STEP_SPLIT},
                  "train.global_batch": per_step}
    on_main(lambda: recover_directory(out_dir))  # a crash while saving the best model
    out_dir.mkdir(parents=True, exist_ok=True)
    on_main(lambda: discard_partial(out_dir / CHECKPOINT))  # a kill while saving the checkpoint
    device = env.device
    model.to(device)
    # gradients as views into DDP's buckets: no copy into the buckets before the all-reduce
    # and none out of them after it
    ddp = DistributedDataParallel(model, gradient_as_bucket_view=True) if env.world_size > 1 else None
    train_model = ddp or model
    compiled_before = compiled_graphs() if config.compile else 0
    dtype = autocast_dtype(config.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    # fused: one kernel for all parameters, on GPUs and CPUs alike (the per-tensor
    # default costs a sixth of a small model's step time on a CPU)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=config.weight_decay, fused=True
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule)

    state = TrainState()
    checkpoint_path, log_path = out_dir / CHECKPOINT, out_dir / TRAIN_LOG
    if agreed(checkpoint_path.exists):  # every rank resumes, or none
        saved = _load_checkpoint(checkpoint_path, device)
        check_resumable(checkpoint_path, saved, depends_on)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        # a checkpoint from before best_at_epoch_end was kept apart: best_metric was it
        state = TrainState(**{"best_at_epoch_end": saved["state"]["best_metric"], **saved["state"]})
        log.info("resumed from %s at step %d (epoch %d)", checkpoint_path, state.step, state.epoch)
    max_steps = config.max_steps or math.inf
    guard = NonfiniteGuard(state.nonfinite_steps, config.max_nonfinite, device)

    def should_train() -> bool:
        return state.epoch < config.max_epochs and state.step < max_steps and state.bad_epochs < config.patience

    if not should_train() and state.evaluated_step == state.step:
        return state  # finished before, with these limits
    on_main(lambda: _trim_log(log_path, state))
    # the epoch length varies by a batch or so with the shuffle: a close estimate for the bar
    total = config.max_steps or config.max_epochs * (len(task.epoch_batches(state.epoch)) // per_step)
    progress = tqdm(total=total, initial=state.step, desc="train", unit="step", disable=not env.is_main)
    window_tokens, window_start = 0, time.perf_counter()

    def save() -> None:
        guard.check(state)
        on_main(lambda: _save_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler, state, depends_on))

    def write_log(record: dict) -> None:
        def append() -> None:
            # opened for each record: a new best model's directory takes the log's place
            with open(log_path, "a", encoding="utf-8") as log_file:
                log_file.write(json_line(record))

        on_main(append)

    def evaluate_and_keep_best(epoch_end: bool) -> None:
        """Keep the model if dev improved. Epoch ends are compared with epoch ends only (for the
        model kept and for patience), so a run cut by max_steps mid-epoch and continued makes
        an uninterrupted run's decisions: the cut's model is kept while it is the best so far,
        until an epoch end beats the epoch ends before it."""
        figures = task.evaluate(model)
        if epoch_end:
            improved = figures["metric"] > state.best_at_epoch_end
            if improved:
                state.best_at_epoch_end = figures["metric"]
            state.bad_epochs = 0 if improved else state.bad_epochs + 1
        else:
            improved = figures["metric"] > state.best_metric
        if improved:
            state.best_metric = figures["metric"]
            on_main(lambda: _save_model(task, model, out_dir))
        state.evaluated_step = state.step
        write_log({"step": state.step, "epoch": state.epoch, "eval": figures, "best": improved})
        log.info("epoch %d step %d: %s%s", state.epoch, state.step,
                 ", ".join(f"{k} {v:.3f}" for k, v in figures.items()), " (best)" if improved else "")

    while should_train():
        batches = task.epoch_batches(state.epoch)
        steps_in_epoch = len(batches) // per_step  # a last partial step is dropped
        if steps_in_epoch == 0:
            step_size = (f"train.global_batch {config.global_batch}" if config.global_batch is not None
                         else f"{env.world_size} ranks x train.accumulate {config.accumulate}")
            raise ValueError(f"an epoch has {len(batches)} micro-batches, fewer than one step needs "
                             f"({step_size}): lower the micro-batches' token budget (train.max_tokens; "
                             f"selector.max_tokens for the selector)")
        train_model.train()
        steps = [batches[s * per_step : (s + 1) * per_step] for s in range(steps_in_epoch)]
        # this rank's micro-batches of the rest of the epoch, in the order the steps take them
        ahead = (batch for step in steps[state.step_in_epoch:] for batch in env.share(step))
        # compiled layers: dynamic shapes, one graph for every batch size and (bucketed, see the
        # task's collate) length, where static ones would recompile for each new shape
        with (Prefetcher(ahead, task.collate, device, config.prefetch) as collated, compiled_steps(config.compile),
              compiled_layers(model, config.compile)):
            while state.step_in_epoch < steps_in_epoch and state.step < max_steps:
                # every rank knows the whole step, so the normaliser needs no communication
                num_targets = sum(task.num_targets(b) for b in steps[state.step_in_epoch])
                mine = env.share(steps[state.step_in_epoch])
                step_loss = torch.zeros((), device=device)
                for i, batch in enumerate(mine):
                    last = i == len(mine) - 1
                    # dropout seeded by the micro-batch's global number: the same masks whichever
                    # rank takes it, so results do not depend on the world size
                    torch.manual_seed(seed * 1_000_003 + state.step * per_step + env.rank + i * env.world_size)
                    with (nullcontext() if last or ddp is None else ddp.no_sync()):
                        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                            loss = task.loss(train_model, next(collated))
                        # DDP averages gradients over ranks: scale so the result is the global mean
                        scaler.scale(loss * env.world_size / num_targets).backward()
                    step_loss += loss.detach().float()
                    window_tokens += task.num_tokens(batch)
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
                # gradients are all-reduced, so every rank takes the same decision
                guard.step(optimizer, scaler, grad_norm, state.step)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                state.step += 1
                state.step_in_epoch += 1
                progress.update(1)
                release_freed_memory()  # batches of other sizes would grow a never-trimmed heap without end
                if state.step % config.log_every == 0:  # the step's loss and counters are read only here
                    guard.check(state)
                    if dist.is_initialized():
                        dist.all_reduce(step_loss)
                    loss_per_target = step_loss.item() / num_targets
                    elapsed = time.perf_counter() - window_start
                    tokens = torch.tensor(float(window_tokens), device=device)
                    if dist.is_initialized():
                        dist.all_reduce(tokens)
                    tokens_per_s = tokens.item() / max(elapsed, 1e-9)
                    lr = optimizer.param_groups[0]["lr"]
                    progress.set_postfix(loss=f"{loss_per_target:.3f}", tok_s=f"{tokens_per_s:.0f}", lr=f"{lr:.2e}")
                    compiles = {"compiles": compiled_graphs() - compiled_before} if config.compile else {}
                    write_log({"step": state.step, "epoch": state.epoch, "loss": loss_per_target, "lr": lr,
                               "grad_norm": float(grad_norm), "tokens_per_s": tokens_per_s, **compiles})
                    window_tokens, window_start = 0, time.perf_counter()
                if state.step % config.save_every == 0:
                    save()

        if state.step_in_epoch >= steps_in_epoch:
            guard.check(state)
            evaluate_and_keep_best(epoch_end=True)
            state.epoch += 1
            state.step_in_epoch = 0
            save()
            window_tokens, window_start = 0, time.perf_counter()  # tokens/s counts training only
            if state.bad_epochs >= config.patience:
                log.info("early stop: no better dev metric for %d epochs", state.bad_epochs)
    guard.check(state)
    if state.evaluated_step != state.step:  # stopped by max_steps, or a crash cut the last evaluation
        evaluate_and_keep_best(epoch_end=False)
    digests = all_gather(parameters_digest(model))
    write_log({"step": state.step, "params_sha256": digests})
    if len(set(digests)) > 1:
        raise RuntimeError(f"ranks finished with different parameters: {digests}")
    save()
    progress.close()
    # the heap's free memory, up to FREED_RESIDENT_LIMIT, was the steps' reuse: none of it to
    # what runs next in the process (the lift's decoding stages ran at 6 GB a rank after training)
    release_freed_memory(limit=0)
    return state
