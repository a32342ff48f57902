"""Batching across concurrent requests for an in-process model (the token-classification ``/predict``).

Requests are queued; one worker takes whatever is waiting (up to ``max_batch`` texts, after at most
``max_wait_s`` for company) and runs the model once for all of them in a worker thread, so the event loop
keeps accepting requests while the CPU works and a burst of requests costs a few forward passes, not one each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence


class Batcher:
    def __init__(self, fn: Callable[[Sequence[str]], list[dict]], max_batch: int = 32, max_wait_s: float = 0.005):
        self.fn, self.max_batch, self.max_wait_s = fn, max_batch, max_wait_s
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.batches = 0  # forward batches run (for tests and logs)

    async def submit(self, text: str) -> dict:
        if self.queue is None:
            self.queue = asyncio.Queue()
            self.worker = asyncio.create_task(self._run())
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((text, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.queue is not None  # made by submit() before it starts this worker
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(items) < self.max_batch:
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time())))
                except asyncio.TimeoutError:
                    break
            items = [(t, f) for t, f in items if not f.cancelled()]  # requests that timed out meanwhile
            if not items:
                continue
            self.batches += 1
            try:
                results = await loop.run_in_executor(None, self.fn, [t for t, _ in items])
            except Exception as e:  # one bad batch fails its requests, never the worker
                for _, f in items:
                    if not f.done():
                        f.set_exception(e)
                continue
            for (_, f), res in zip(items, results):
                if not f.done():
                    f.set_result(res)
