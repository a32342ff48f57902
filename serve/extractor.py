"""``Extractor``: medner from Python (a notebook, a pipeline), against a running ``medner serve``.

    from medner import Extractor
    ner = Extractor(url="http://127.0.0.1:8000/v1", corpus="ncbi-disease")
    ner.extract("Aspirin-induced asthma in a patient with hypertension.")
    # -> {"text", "entities": [{"text", "type", "start", "end"}], "dropped": [], "status": "ok", ...}
    ner.extract_many(["...", "..."])

The same contract and results as ``medner extract`` (it is the same client).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from medner.data.registry import get_corpus
from medner.data.windows import WINDOW_TOKENS
from medner.inference.server_client import ExtractClient
from medner.prompts.contract import grounded_mode, task_for


class Extractor:
    def __init__(
        self,
        url: str = "http://127.0.0.1:8000/v1",
        corpus: str | None = "ncbi-disease",
        labels: Sequence[str] | dict | None = None,
        lang: str = "en",
        model: str = "ner",
        grounded: bool | str = True,
        api_key: str | None = None,
        prompt_version: str | None = None,
        window_tokens: int = WINDOW_TOKENS,
        concurrency: int = 8,
        instruction: str | None = None,
    ):
        """``corpus``: a registered label set (its language too); or ``labels`` (names or {name: description}) with
        ``lang``. ``api_key``: default ``MEDNER_API_KEY``. The prompt version is the served model's trained one.
        ``instruction``: ask in your own words ("Which diseases are mentioned?"; ``{text}`` marks the text's place)."""
        self.client = ExtractClient(
            url,
            model,
            api_key=api_key or os.environ.get("MEDNER_API_KEY"),
            concurrency=concurrency,
            window_tokens=window_tokens,
            grounded=grounded_mode(grounded),
        )
        self.client.check_server()
        c = get_corpus(corpus) if (corpus and not labels) else None
        self.task = task_for(c, labels, lang, prompt_version=self.client.task_version(prompt_version), instruction=instruction)

    def extract(self, text: str) -> dict:
        """One text -> its grounded result."""
        return self.client.extract([text], self.task)[0]

    def extract_many(self, texts: Sequence[str] | Sequence[dict], progress: bool = False) -> list[dict]:
        """Many texts (or ``{"id", "text"}`` dicts, ids passed through), ``concurrency`` in flight, results in order."""
        return self.client.extract(texts, self.task, progress=progress)
