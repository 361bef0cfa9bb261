"""benchmarks/README.md's tables, generated from the result JSONs instead of copied by hand.

A generated table stands between ``<!-- table: NAME -->`` and ``<!-- /table -->`` in the README; NAME is a key of
:data:`TABLES`, which says which result file it reads and how it renders it.

    python -m benchmarks.tables           # rewrite every generated table from benchmarks/results/
    python -m benchmarks.tables --check   # exit 1 if a generated table differs from what its JSON gives
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks import envelope

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
RESULTS = HERE / "results"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def fft_efficiency(payload: dict) -> str:
    """Every measured op: its time, the bare FFTs' time, the efficiency and the rate."""
    rows = [[r["op"], r["mode"], r["n"], r["fft_length"], f"{r['conv_s'] * 1e3:.2f}", f"{r['bare_fft_s'] * 1e3:.2f}",
             f"{r['efficiency']:.2f}", f"{r['conv_gflops']:.2f}"] for r in payload["runs"]]
    return markdown_table(["op", "mode", "N", "FFT length", "conv (ms)", "bare FFTs (ms)", "efficiency",
                           "conv GFLOP/s"], rows)


def _accuracy(section: str, *args) -> Callable[[dict], str]:
    """A renderer of one of accuracy.py's tables (imported when used: accuracy.py imports this module)."""
    def render(payload: dict) -> str:
        from benchmarks import accuracy

        return getattr(accuracy, f"{section}_table")(payload, *args)

    return render


def _md(table: str) -> Callable[[dict], str]:
    def render(payload: dict) -> str:
        from benchmarks import md_throughput

        return getattr(md_throughput, f"{table}_table")(payload)

    return render


# name -> (result file under benchmarks/results/, renderer of its envelope)
TABLES: dict[str, tuple[str, Callable[[dict], str]]] = {
    "fft_efficiency": ("fft_efficiency.json", fft_efficiency),
    "accuracy.ablation": ("accuracy.json", _accuracy("ablation")),
    "accuracy.nbody_runs": ("accuracy.json", _accuracy("nbody_runs")),
    "accuracy.nbody": ("accuracy.json", _accuracy("nbody", "nbody")),
    "accuracy.nbody_paper_budget": ("accuracy.json", _accuracy("nbody", "nbody_paper_budget")),
    "accuracy.recall_runs": ("accuracy.json", _accuracy("recall_runs")),
    "accuracy.recall": ("accuracy.json", _accuracy("recall")),
    "accuracy.long": ("accuracy.json", _accuracy("long")),
    "md_training": ("md_training.json", _md("training")),
    "md_throughput": ("md_throughput.json", _md("throughput")),
}

_BLOCK = re.compile(r"(<!-- table: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(\n<!-- /table -->)", re.S)


def render(text: str, results: Path = RESULTS) -> str:
    """``text`` with every generated table replaced by what its result file gives."""
    def table(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise KeyError(f"README names a generated table {name!r} that benchmarks/tables.py does not know")
        file, renderer = TABLES[name]
        return match[1] + renderer(envelope.read(results / file)) + match[4]

    return _BLOCK.sub(table, text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 where a table is stale")
    args = ap.parse_args(argv)
    text = README.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{README}: a generated table differs from its JSON; run python -m benchmarks.tables")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
