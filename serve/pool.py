"""Several ``medner serve`` replicas behind one ``medner api``: requests are spread round-robin over the
replicas that answer; one that fails (refused connection, dropped mid-request, 5xx) is skipped until it
answers ``GET /v1/models`` again, probed at most every ``recheck_s`` seconds, so a dead replica costs one
failed attempt, not one per request.
"""

from __future__ import annotations

import itertools
import logging
import time

import httpx

log = logging.getLogger(__name__)


class UpstreamPool:
    def __init__(self, urls: list[str], api_key: str | None = None, recheck_s: float = 2.0):
        if not urls:
            raise ValueError("no upstream URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.recheck_s = recheck_s
        self.down: dict[str, float] = {}  # url -> when it was last found down
        self._turn = itertools.count()
        self.served: dict[str, int] = {u: 0 for u in self.urls}  # requests answered per replica

    def mark_down(self, url: str, why: str = "") -> None:
        if url not in self.down:
            log.warning("upstream %s is down%s; skipping it until it answers /v1/models", url, f" ({why})" if why else "")
        self.down[url] = time.monotonic()

    def answered(self, url: str) -> None:
        self.served[url] += 1

    def mark_up(self, url: str) -> None:
        if self.down.pop(url, None) is not None:
            log.info("upstream %s is back", url)

    async def _answers(self, url: str) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(f"{url}/models", headers=self.headers)).status_code == 200
        except httpx.HTTPError:
            return False

    async def candidates(self) -> list[str]:
        """Replicas to try for one request, in order: the healthy ones from the next in turn, then any down
        replica whose recheck time has come and that answers ``/v1/models`` again."""
        k = next(self._turn) % len(self.urls)
        order = self.urls[k:] + self.urls[:k]
        healthy = [u for u in order if u not in self.down]
        now = time.monotonic()
        for u in order:
            if u in self.down and now - self.down[u] >= self.recheck_s:
                if await self._answers(u):
                    self.mark_up(u)
                    healthy.append(u)
                else:
                    self.down[u] = now
        return healthy

    async def status(self) -> dict[str, bool]:
        return {u: await self._answers(u) for u in self.urls}
