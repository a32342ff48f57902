"""medner: medical named-entity recognition with instruction-tuned LLMs.

``from medner import Extractor`` — extraction from Python against a running server (see the README).
"""

__all__ = ["Extractor"]


def __getattr__(name: str):
    # lazy: `import medner` stays light for the CLI and the stages
    if name == "Extractor":
        from medner.serve.extractor import Extractor

        return Extractor
    raise AttributeError(f"module 'medner' has no attribute {name!r}")
