"""Run directory, manifest, caching, model store, engine and the `evol` command line.

Importing this package makes the process offline: models are local paths, nothing is downloaded.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# vLLM's INFO lines drown the progress bars; EVOL_VERBOSE=1 brings them back.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if os.environ.get("EVOL_VERBOSE") else "WARNING")
