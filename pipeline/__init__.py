"""Run directory, manifest, caching, model store, engine and the `evol` command line.

Importing this package makes the process offline: models are local paths, nothing is downloaded.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# Nor does anything report home: vLLM sends usage statistics to its server from every engine (and
# `evol serve`'s server) unless told not to, Ray sends its own, the hub library its telemetry.
# tests/test_offline_bundle.py logs every attempt to leave the machine.
os.environ["VLLM_NO_USAGE_STATS"] = "1"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# vLLM's INFO lines drown the progress bars; EVOL_VERBOSE=1 brings them back.
os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if os.environ.get("EVOL_VERBOSE") else "WARNING")
