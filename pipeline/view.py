"""`evol view`: every attempt of a run's evolution in one self-contained page, runs/<name>/data.html.

    evol view runs/tiny        # writes runs/tiny/data.html; open it from disk (file://), no server
    (evol run writes it too, with the report: pipeline/report.py calls write_viewer)

The page holds, for every seed, its lineage over the rounds: each attempt's operation, the evolved
instruction, the equality verdict and the model's raw reply, the answer, and kept or the rule that
eliminated it (with the kept twin of a near-duplicate or the test item of a contaminated one). It
filters by round, operation, outcome and rule, searches the text, links each item to its parent and
children, and shows the counts per round and rule beside evolve/stats.json's, marking any that differ.

Everything is inside the file: the attempts as one compact JSON object in a <script
type="application/json"> block (columns, not objects: one array per field, with the repeated strings
such as operations, rules and model names as indices into small vocabularies), and the page's own CSS
and JS from view_page.html beside this module. No network, no framework: a Content-Security-Policy
allows only the page's own script (by its hash) and blocks every fetch. Text from the model is data:
the JSON is made safe inside the script element here, and the page inserts it with textContent only.
It stays fast at 52K seeds because it filters over typed arrays and renders 50 rows a page
(BENCHMARKS.md, "Data viewer").
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections import Counter
from pathlib import Path

from pipeline.core.jsonio import InputError, atomic_open, read_json
from pipeline.core.paths import RunDir
from pipeline.core.records import KEPT, RULES, elimination_match, iter_attempts, round_files

VIEW_FILE = "data.html"
TEMPLATE = Path(__file__).with_name("view_page.html")
_DATA_MARK, _TITLE_MARK, _SCRIPT_OPEN = "/*@DATA@*/", "@TITLE@", "<script id='viewer'>"

# Columns of the page's data whose values repeat: stored as an index into D.vocab[name] (-1: none).
VOCAB_COLUMNS = ("op", "verdict", "vtext", "evolver", "equality", "responder", "finish")


def check_run(run_dir: str | Path) -> tuple[Path, dict]:
    """The run directory and its evolve/stats.json, or one sentence saying why there is nothing to view."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run directory.")
    stats_file = RunDir(run_dir).evolve_stats
    if not stats_file.parent.is_dir() or not round_files(run_dir):
        raise InputError(
            f"{run_dir} is not a run directory: it has no evolve/round_0.jsonl; give the folder `evol run` "
            f"or `evol evolve --out` wrote (runs/<name>)."
        )
    if not stats_file.is_file():
        raise InputError(
            f"{run_dir}: the evolution has not finished (evolve/stats.json is missing); view it once "
            f"`evol evolve` has ended."
        )
    stats = read_json(stats_file)
    last = stats.get("rounds_done") if isinstance(stats, dict) else None
    if not isinstance(last, int) or last < 0 or len(round_files(run_dir, last)) != last + 1:
        raise InputError(
            f"{stats_file}: rounds_done is {last!r} but evolve/round_0.jsonl..round_{last}.jsonl are "
            f"not all there; not a finished `evol evolve` run."
        )
    return run_dir, stats


def view_data(run_dir: str | Path) -> dict:
    """The page's data: one array per field over every attempt (round order, then file order)."""
    run_dir, stats = check_run(run_dir)
    columns: dict[str, list] = {
        name: [] for name in ("id", "parent", "round", "op", "rule", "ins", "resp", "detail", "match", *VOCAB_COLUMNS)
    }
    vocab: dict[str, dict[str, int]] = {name: {} for name in VOCAB_COLUMNS}
    rules = {rule: i for i, rule in enumerate(RULES)}
    index: dict[str, int] = {}
    orphans: dict[int, str] = {}  # row -> a parent id that is not in the run (never, for a run evolve wrote)

    def code(name: str, value: str | None) -> int:
        if value is None:
            return -1
        return vocab[name].setdefault(value, len(vocab[name]))

    for row, record in enumerate(iter_attempts(run_dir, stats["rounds_done"])):
        index[record.id] = row
        parent = -1 if record.parent_id is None else index.get(record.parent_id, -2)
        if parent == -2:
            orphans[row] = record.parent_id
        columns["id"].append(record.id)
        columns["parent"].append(parent)
        columns["round"].append(record.round)
        columns["rule"].append(-1 if record.kept else rules.setdefault(record.elimination_rule or "?", len(rules)))
        columns["ins"].append(record.instruction)
        columns["resp"].append(record.response)
        columns["detail"].append(record.elimination_detail)
        columns["match"].append(elimination_match(record))
        columns["op"].append(code("op", record.operation))
        columns["verdict"].append(code("verdict", record.verdict))
        columns["vtext"].append(code("vtext", record.verdict_text))
        columns["evolver"].append(code("evolver", record.evolver_model))
        columns["equality"].append(code("equality", record.equality_model))
        columns["responder"].append(code("responder", record.responder_model))
        columns["finish"].append(code("finish", record.answer_finish_reason))
    return {
        "run": run_dir.resolve().name,
        "rules": list(rules),
        "vocab": {name: list(values) for name, values in vocab.items()},
        "orphans": orphans,
        "stats": stats_counts(stats),
        **columns,
    }


def stats_counts(stats: dict) -> list[dict]:
    """What the page shows beside its own counts: evolve/stats.json's attempts, kept and eliminations
    per rule, and operations, for each round."""
    return [
        {
            "round": r["round"],
            "attempted": r["attempted"],
            "kept": r["kept"],
            "eliminated": dict(r["eliminated"]),
            "operations": dict(r.get("operations") or {}),
        }
        for r in stats["rounds"]
    ]


def data_counts(data: dict) -> list[dict]:
    """The same counts tallied from the page's data, as the page does (and as stats.json's shape has them)."""
    rounds = sorted(set(data["round"]))
    out = {
        k: {"round": k, "attempted": 0, "kept": 0, "eliminated": Counter(), "operations": Counter()} for k in rounds
    }
    for k, rule, op in zip(data["round"], data["rule"], data["op"], strict=True):
        tally = out[k]
        tally["attempted"] += 1
        if rule < 0:
            tally["kept"] += 1
        else:
            tally["eliminated"][data["rules"][rule]] += 1
        if k:
            tally["operations"][data["vocab"]["op"][op]] += 1
    return [
        {
            **tally,
            "eliminated": {rule: tally["eliminated"].get(rule, 0) for rule in data["rules"]},
            "operations": dict(tally["operations"]),
        }
        for tally in out.values()
    ]


def count_differences(data: dict) -> list[str]:
    """Each count of the data that stats.json states differently, as 'round k rule: n here, m in stats.json'."""
    mine = {c["round"]: c for c in data_counts(data)}
    out = []
    for theirs in data["stats"]:
        k = theirs["round"]
        here = mine.get(k, {"attempted": 0, "kept": 0, "eliminated": {}, "operations": {}})
        pairs = [("attempted", here["attempted"], theirs["attempted"]), (KEPT, here["kept"], theirs["kept"])]
        pairs += [(rule, here["eliminated"].get(rule, 0), n) for rule, n in theirs["eliminated"].items()]
        pairs += [(op, here["operations"].get(op, 0), n) for op, n in theirs["operations"].items()]
        out += [f"round {k} {name}: {a} here, {b} in stats.json" for name, a, b in pairs if a != b]
    return out


def script_json(data) -> str:
    """Compact JSON that cannot end its <script> element early: every '<' (so '</script' and '<!--')
    and the two line separators JavaScript once treated as newlines are written as \\u escapes."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render(data: dict) -> tuple[str, str]:
    """The page split around where the data goes: (everything before, everything after)."""
    page = TEMPLATE.read_text(encoding="utf-8").replace(_TITLE_MARK, html.escape(f"Evolution data: {data['run']}"))
    # The Content-Security-Policy names the page's script by its hash: nothing else can run, even text
    # that slipped past the escaping, and no request leaves the page.
    script = page.split(_SCRIPT_OPEN, 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    page = page.replace("@SCRIPT_HASH@", f"sha256-{digest}")
    before, after = page.split(_DATA_MARK, 1)
    return before, after


def write_viewer(run_dir: str | Path) -> dict:
    """Write runs/<name>/data.html; returns its path, attempt count, size and the counts that differ
    from stats.json (none for a run evol evolve wrote)."""
    data = view_data(run_dir)
    before, after = render(data)
    path = Path(run_dir) / VIEW_FILE
    with atomic_open(path) as handle:
        handle.write(before)
        # One field at a time: the text of 52K seeds as one JSON string, escaped, would be several copies
        # of ~100M characters in memory at once.
        handle.write("{")
        for n, (name, value) in enumerate(data.items()):
            handle.write(("," if n else "") + script_json(name) + ":" + script_json(value))
        handle.write("}")
        handle.write(after)
    return {
        "path": path,
        "attempts": len(data["id"]),
        "seeds": sum(1 for k in data["round"] if k == 0),
        "rounds": max(data["round"], default=0),
        "bytes": path.stat().st_size,
        "differences": count_differences(data),
    }
