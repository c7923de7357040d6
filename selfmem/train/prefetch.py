"""Micro-batches collated ahead of the step that trains on them, in a background thread.

Collating (padding token ids into tensors) is Python work on the host; done on the main
thread it stalls the device between steps, and a pageable copy to a GPU waits for the
host. The prefetcher collates the next few micro-batches while the current one trains,
into pinned memory on a GPU, so that its copy to the device can be non-blocking.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

Tensors = dict[str, torch.Tensor]
_END = object()  # the thread's last item: no more batches


def to_device(tensors: Tensors, device: torch.device, non_blocking: bool = False) -> Tensors:
    """``tensors`` moved to ``device`` (a no-op for those already there)."""
    return {name: tensor.to(device, non_blocking=non_blocking) for name, tensor in tensors.items()}


class Prefetcher:
    """Yields ``collate(batch)`` for each of ``batches`` in order, moved to ``device``.

    With ``ahead`` > 0 one background thread collates up to ``ahead`` batches ahead of the
    consumer (into pinned memory when ``device`` is a GPU); with 0 each batch is collated
    when asked for, on the calling thread, as before the prefetcher. Either way the batches
    and their order are the same, so training is too. An error while collating is raised
    by ``next``. Use it in a ``with`` block: leaving it (the epoch's end, ``train.max_steps``,
    an exception) stops the thread, whatever it is doing.
    """

    def __init__(self, batches: Iterable[Any], collate: Callable[[Any], Tensors], device: torch.device,
                 ahead: int) -> None:
        self.collate, self.device = collate, device
        self.pin = device.type == "cuda"
        self.batches = iter(batches)
        self.thread = None
        if ahead > 0:
            self.queue: queue.Queue = queue.Queue(maxsize=ahead)
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._fill, name="selfmem-prefetch", daemon=True)
            self.thread.start()

    def _prepare(self, batch: Any) -> Tensors:
        tensors = self.collate(batch)
        return {name: tensor.pin_memory() for name, tensor in tensors.items()} if self.pin else tensors

    def _fill(self) -> None:
        # every put follows a check of the stop, so that after ``close`` empties the queue
        # at most one more put happens, and it finds room
        try:
            for batch in self.batches:
                if self.stop.is_set():
                    return
                self.queue.put(self._prepare(batch))
            last: Any = _END
        except Exception as error:  # handed to the consumer, which raises it
            last = error
        if not self.stop.is_set():
            self.queue.put(last)

    def __iter__(self) -> Iterator[Tensors]:
        return self

    def __next__(self) -> Tensors:
        if self.thread is None:
            tensors = self._prepare(next(self.batches))
        else:
            tensors = self.queue.get()
            if tensors is _END:
                raise StopIteration
            if isinstance(tensors, Exception):
                raise tensors
        # from pinned memory the copy is queued on the device's stream and the host goes on
        return to_device(tensors, self.device, non_blocking=self.pin)

    def close(self) -> None:
        """Stop the thread and wait for it (a put it is blocked in finds room once the queue is emptied)."""
        if self.thread is None:
            return
        self.stop.set()
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
