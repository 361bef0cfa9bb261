"""benchmarks/README.md's tables (and docs/threads.md's), generated from the result JSONs instead of copied by hand.

A generated table stands between ``<!-- table: NAME -->`` and ``<!-- /table -->`` in one of :data:`DOCUMENTS`; NAME
is a key of :data:`TABLES`, which says which result file(s) it reads and which renderer (a ``<name>_table``
function of the benchmark script that wrote them) renders it.

    python -m benchmarks.tables           # rewrite every generated table from benchmarks/results/
    python -m benchmarks.tables --check   # exit 1 if a generated table differs from what its JSON gives
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks import envelope

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
DOCUMENTS = (README, HERE.parent / "docs" / "threads.md")  # the documents with generated tables
RESULTS = HERE / "results"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def grouped(n: float, sep: str = " ") -> str:
    """``n`` rounded to an integer, thousands separated by ``sep``: 1048576 -> '1 048 576'."""
    return f"{round(n):,}".replace(",", sep)


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.0f}"


def percent(new: float, old: float, digits: int = 1) -> str:
    """How much more ``new`` is than ``old``: '+8.5%'."""
    return f"{100 * (new - old) / old:+.{digits}f}%"


def _from(script: str, table: str, *args) -> Callable[..., str]:
    """The renderer ``<table>_table`` of ``benchmarks/<script>.py``, imported when used (the scripts import this
    module for its helpers)."""
    def render(*payloads: dict) -> str:
        module = importlib.import_module(f"benchmarks.{script}")
        return getattr(module, f"{table}_table")(*payloads, *args)

    return render


# name -> (result file(s) under benchmarks/results/, renderer of their envelopes, in that order)
TABLES: dict[str, tuple[str | tuple[str, ...], Callable[..., str]]] = {
    "operator_vs_attention": ("operator_vs_attention.json", _from("operator_vs_attention", "runs")),
    "operator_vs_attention.ratios": ("operator_vs_attention.json", _from("operator_vs_attention", "ratios")),
    "longest_context": ("longest_context.json", _from("longest_context", "runs")),
    "sp_block.weak": ("sp_block.json", _from("sp_block", "sweep", "weak")),
    "sp_block.strong": ("sp_block.json", _from("sp_block", "sweep", "strong")),
    "sp_block.traffic": ("sp_block.json", _from("sp_block", "traffic")),
    "sp_block_chunk4096": ("sp_block_chunk4096.json", _from("sp_block", "sweeps")),
    "fft_efficiency": ("fft_efficiency.json", _from("fft_efficiency", "runs")),
    "fft_efficiency.before_after": ("fft_efficiency.json", _from("fft_efficiency", "before_after")),
    "loader_throughput.delivery": ("loader_throughput.json", _from("loader_throughput", "delivery")),
    "loader_throughput.steps": ("loader_throughput.json", _from("loader_throughput", "steps")),
    "accuracy.ablation": ("accuracy.json", _from("accuracy", "ablation")),
    "accuracy.nbody_runs": ("accuracy.json", _from("accuracy", "nbody_runs")),
    "accuracy.nbody": ("accuracy.json", _from("accuracy", "nbody", "nbody")),
    "accuracy.nbody_paper_budget": ("accuracy.json", _from("accuracy", "nbody", "nbody_paper_budget")),
    "accuracy.recall_runs": ("accuracy.json", _from("accuracy", "recall_runs")),
    "accuracy.recall": ("accuracy.json", _from("accuracy", "recall")),
    "accuracy.long_65536": ("accuracy.json", _from("accuracy", "long", True)),
    "accuracy.long": ("accuracy.json", _from("accuracy", "long")),
    "local_cost": (("local_cost_mmap/longest_context.json", "local_cost_chunked/longest_context.json",
                    "local_cost_1m_before/longest_context.json", "local_cost_1m/longest_context.json",
                    "local_cost_1m_sp2/longest_context.json"), _from("longest_context", "local_cost")),
    "thread_policy": ("thread_policy.json", _from("thread_policy", "summary")),
    "thread_policy.kernels": ("thread_policy_kernels/thread_policy.json", _from("thread_policy", "summary")),
    "md_training": ("md_training.json", _from("md_throughput", "training")),
    "md_throughput": ("md_throughput.json", _from("md_throughput", "throughput")),
    "md_local_rule": (("md_local_rule_recipe.json", "md_local_rule_before.json"), _from("md_local_rule", "rule")),
    "step_efficiency": ("step_efficiency.json", _from("step_efficiency", "summary")),
    "step_efficiency.native": ("step_native/step_efficiency.json", _from("step_efficiency", "summary")),
    "step_efficiency.compact": ("step_compact/step_efficiency.json", _from("step_efficiency", "summary")),
    "step_efficiency.fused_mlp": ("step_fused_mlp/step_efficiency.json", _from("step_efficiency", "summary")),
    "geometric_product": ("geometric_product.json", _from("geometric_product", "rows")),
    "step_before_after": (tuple(f"step_before_after/{tree}_round{i}.json" for tree in ("before_334a46c", "after")
                                for i in (1, 2)), _from("longest_context", "before_after")),
}

# A block's body never crosses another marker: an empty placeholder (opening line, closing line) is filled in
# place instead of swallowing the text up to the next table's end.
_BLOCK = re.compile(r"(<!-- table: (?P<name>[\w.-]+) -->\n)(?P<body>(?:(?!<!-- /?table).)*?)\n?<!-- /table -->", re.S)


def render(text: str, results: Path = RESULTS) -> str:
    """``text`` with every generated table replaced by what its result file gives."""
    def table(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise KeyError(f"a document names a generated table {name!r} that benchmarks/tables.py does not know")
        files, renderer = TABLES[name]
        files = (files,) if isinstance(files, str) else files
        return match[1] + renderer(*(envelope.read(results / f) for f in files)) + "\n<!-- /table -->"

    return _BLOCK.sub(table, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 where a table is stale")
    args = ap.parse_args(argv)
    stale = []
    for doc in DOCUMENTS:
        text = doc.read_text()
        new = render(text)
        if new != text:
            stale.append(doc)
            if not args.check:
                doc.write_text(new)
    if args.check and stale:
        for doc in stale:
            print(f"{doc}: a generated table differs from its JSON; run python -m benchmarks.tables")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
