"""The dataset card `evol export` writes as README.md: the Hugging Face Hub's YAML header and a body
that records where the data came from (models and their hashes, operations, rounds, rules and their
counts, versions, the resolved config).

    evol export runs/tiny --out exports/tiny && head -40 exports/tiny/README.md

The header's `configs` name each config's data file (one per C<k>, the largest the default, and the
evolution tree), `dataset_info` its features and sizes; `license` is left empty with a comment,
since only the user knows what the seeds and the models allow.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from pipeline.config.evolve import OPERATIONS
from pipeline.core.records import RULES

RULE_MEANINGS = {
    "too_long": "the evolution, verdict or answer prompt did not fit the model's context",
    "no_information_gain": "empty or unchanged evolution, or the equality model judged it EQUAL to its parent",
    "copied_prompt_words": "the instruction repeats the evolution prompt's own labels or phrases",
    "refusal_short": 'the answer says "sorry" in fewer than `evolve.refusal_max_words` words',
    "stopwords_only": "the answer is nothing but punctuation and stop words",
    "near_duplicate": "the same or nearly the same text as an instruction already kept (MinHash)",
    "contaminated": "overlaps an instruction of the test set (n-gram or MinHash)",
}

TREE_COLUMNS = {
    "id": "`<seed id>@r<k>` for round k's evolution, the seed's own id in round 0",
    "parent_id": "the item it was evolved from (null for a seed)",
    "root_id": "the seed at the start of its lineage",
    "round": "0 for the seeds, 1..M for evolutions",
    "operation": "the evolution operation, or `seed`",
    "instruction": "the evolved instruction (or the seed)",
    "response": "the answer; null when the attempt was eliminated before it was answered",
    "status": "`kept` or `eliminated`",
    "kept": "status == kept",
    "elimination_rule": "the first rule that fired (null when kept)",
    "elimination_detail": "why, in one sentence",
    "elimination_match": "for near_duplicate the kept twin's id, for contaminated the test item's id",
    "verdict": "the equality check: `equal`, `different` or `unparsed` (rounds >= 1)",
    "verdict_text": "the equality model's raw reply",
    "evolver_model": "the model that wrote the instruction",
    "equality_model": "the model that gave the verdict",
    "responder_model": "the model that wrote the answer (`seed file` when the seed came with one)",
    "answer_finish_reason": "`stop`, `length` or `too_long`",
}


def size_category(rows: int) -> str:
    """The Hub's size_categories bucket for a row count."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "1M<n<10M" if rows < 10_000_000 else "n>10M"


def card_header(configs: dict[str, dict]) -> str:
    """The YAML between the card's --- lines, as datasets and the Hub read it."""
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    sets = [name for name, written in configs.items() if not written["tree"]]
    infos = {}
    for name, written in configs.items():
        splits = SplitDict()
        splits.add(SplitInfo(name="train", num_bytes=written["num_bytes"], num_examples=written["rows"]))
        infos[name] = DatasetInfo(
            features=written["features"],
            splits=splits,
            download_size=written["file_bytes"],
            dataset_size=written["num_bytes"],
            config_name=name,
        )
    data = DatasetCardData(
        task_categories=["text-generation"],
        size_categories=[size_category(max(configs[name]["rows"] for name in sets))],
        tags=["synthetic", "evol-instruct", "evol-local"],
        configs=[
            {
                "config_name": name,
                "data_files": [{"split": "train", "path": written["path"]}],
                **({"default": True} if name == sets[-1] else {}),
            }
            for name, written in configs.items()
        ],
    )
    DatasetInfosDict(infos).to_dataset_card_data(data)
    return (
        "license:  # fill in what your seeds and models allow (e.g. apache-2.0, cc-by-nc-4.0); the Hub asks for one\n"
        "language:\n- en  # the language of the seeds: change it if yours are not English\n" + data.to_yaml()
    )


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _exporter_version() -> str:
    try:
        return version("evol-local")
    except PackageNotFoundError:
        return "unknown (not installed)"


def dataset_card(run, configs: dict[str, dict], fmt: str) -> str:
    """The whole README.md. `run` is the pipeline.export.RunData read from the run directory;
    `configs` maps each config to what was written: rows, num_bytes, file_bytes, path, features, and
    `tree` (True for the evolution tree, which comes last)."""
    stats = run.stats
    name = run.run_manifest.get("run") or run.run_dir.name
    body = f"""
# {name}: an Evol-Instruct data set evolved offline with evol-local

Instructions evolved from {stats.get("seeds")} seeds over {stats.get("rounds_done")} rounds of Evol-Instruct
(WizardLM's method) with local models, each answered by a local model and kept or eliminated by the rules
below. Exported by `evol export` from the run directory `{run.run_dir.name}` as {fmt}; nothing was uploaded.

{_configs_and_columns(configs)}

{_how_it_was_made(stats, run.evolve_manifest)}

{_versions_and_config(run)}
"""
    return f"---\n{card_header(configs).rstrip()}\n---\n{body}"


def _configs_and_columns(configs: dict[str, dict]) -> str:
    """What each config holds, how to load it, and what its columns mean."""
    sets = [name for name, written in configs.items() if not written["tree"]]
    tree = next(name for name, written in configs.items() if written["tree"])
    largest = sets[-1]
    set_rows = [
        [f"`{n}`", configs[n]["rows"], f"`{configs[n]['path']}`", _describe(n, configs[n]["tree"])]
        for n in (*sets, tree)
    ]
    return f"""## Configs

{_table(["config", "rows", "file", "what"], set_rows)}

`C<k>` is what `evol run` fine-tunes its model C<k> on; `{largest}` is the default config.

```python
from datasets import load_dataset

train = load_dataset("path/to/this/folder", "{largest}", split="train")   # or the Hub repo id
# TRL takes the rows as they are: SFTTrainer(model=..., train_dataset=train)  ("messages" column)
tree = load_dataset("path/to/this/folder", "{tree}", split="train")
```

## Columns

`C<k>`: `messages` (a user turn with the instruction, an assistant turn with the answer), `id`, `round`
(0 for a seed), `root_id` (the seed it descends from), `parent_id` (null for a seed), `operation`.

`{tree}`: one row per attempt of every round, kept or not.

{_table(["column", "meaning"], [[f"`{c}`", m] for c, m in TREE_COLUMNS.items()])}"""


def _how_it_was_made(stats: dict, manifest: dict) -> str:
    """The models with their hashes, the seeds and test set, and per round and rule what was kept."""
    rounds = stats.get("rounds") or []
    totals = stats.get("evolution_totals") or {}
    eliminated = totals.get("eliminated") or {}
    models = (manifest.get("inputs") or {}).get("models") or {}
    model_rows = [
        [role, f"`{pair[0]}`", f"`{pair[1]}`"] if isinstance(pair, list) else [role, f"`{pair}`", ""]
        for role, pair in models.items()
    ] or [[role, f"`{model}`", ""] for role, model in (manifest.get("models") or {}).items()]
    round_rows = [
        [
            r["round"],
            r["attempted"],
            r["kept"],
            f"{r['kept_pct']}%",
            r.get("training_set_size"),
            *[r["eliminated"].get(rule, 0) for rule in RULES],
        ]
        for r in rounds
    ]
    operation_rows = [
        [f"`{op}`", *[f"{r['kept_operations'].get(op, 0)}/{r['operations'].get(op, 0)}" for r in rounds[1:]]]
        for op in OPERATIONS
    ]
    rule_rows = [[f"`{rule}`", eliminated.get(rule, 0), RULE_MEANINGS.get(rule, "")] for rule in RULES]
    return f"""## How it was made

Models (the content hash is evol-local's hash of the model directory's files):

{_table(["role", "model", "content hash"], model_rows)}

Seeds: `{stats.get("seeds_file")}` ({stats.get("seed_format")} format, {stats.get("seeds")} seeds, content hash
`{(manifest.get("inputs") or {}).get("seeds")}`). Test set for decontamination: `{stats.get("testset")}`
({stats.get("test_instructions")} instructions).

Rounds (attempted, kept, the C<k> size, and the attempts each rule eliminated):

{_table(["round", "attempted", "kept", "kept %", "C<k> rows", *RULES], round_rows)}

Operations, kept/attempted per round:

{_table(["operation", *[f"round {r['round']}" for r in rounds[1:]]], operation_rows)}

Elimination rules (a rejected attempt names the first rule that fired), eliminated in the evolution rounds
1..{stats.get("rounds_done")} ({totals.get("kept")} of {totals.get("attempted")} evolutions kept; round 0's seeds are in the table above):

{_table(["rule", "eliminated", "meaning"], rule_rows)}"""


def _versions_and_config(run) -> str:
    """Which code and packages evolved and exported the data, the resolved config, and the license note."""
    manifest, run_manifest = run.evolve_manifest, run.run_manifest
    versions = manifest.get("versions") or run_manifest.get("versions") or {}
    return f"""## Versions

- evol-local {versions.get("evol-local", "unknown")} at git `{manifest.get("git_sha")}` evolved the data
  (run started at git `{run_manifest.get("git_sha")}`); exported by evol-local {_exporter_version()}.
- {", ".join(f"{k} {v}" for k, v in versions.items() if k != "evol-local")}.
- Evolution started {manifest.get("started")}, finished {manifest.get("finished")}
  ({manifest.get("seconds")} s), stage key `{manifest.get("key")}`.

## Resolved config

From the run's `{run.config_source}`:

```yaml
{run.config_yaml.rstrip()}
```

## License

Not set: fill in `license:` in the header above with what the seeds' and the models' licenses allow."""


def _describe(config: str, tree: bool) -> str:
    if tree:
        return "every attempt of every round, kept or eliminated, with its verdict, answer and rule"
    k = int(config[1:])
    return "the seeds" if k == 0 else f"the seeds plus the survivors of round{'s 1..' if k > 1 else ' '}{k}"
