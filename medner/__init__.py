"""medner: medical named-entity recognition with instruction-tuned LLMs.

``from medner import Extractor`` — extraction from Python against a running server (see the README);
``from medner import to_spacy`` — a result as a spaCy ``Doc`` (optional extra ``medner[spacy]``).
"""

__all__ = ["Extractor", "to_spacy"]


def __getattr__(name: str):
    # lazy: `import medner` stays light for the CLI and the stages
    if name == "Extractor":
        from medner.serve.extractor import Extractor

        return Extractor
    if name == "to_spacy":
        from medner.spacy_bridge import to_spacy

        return to_spacy
    raise AttributeError(f"module 'medner' has no attribute {name!r}")
