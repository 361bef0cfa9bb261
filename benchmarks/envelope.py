"""One envelope for every result JSON in benchmarks/results/.

    {"benchmark": name, "schema_version": 1, "machine": {...}, "config": {...}, "command": "...", "runs": [...],
     ...the benchmark's own sections (tables, summaries, references)}

``runs`` lists every measured point (a timed configuration, a training run) with what it measured; where a
benchmark keeps its points in named sections, each point carries its ``section``. ``config`` holds the settings
the script ran with, ``command`` the command line that wrote the file (null in results written before the
envelope existed). :func:`write` checks the envelope and the sections a script names before writing;
:func:`read` returns any result file in the envelope, upgrading one of the earlier format in memory.

    python -m benchmarks.envelope benchmarks/results/*.json   # rewrite earlier-format files in the envelope
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

SCHEMA_VERSION = 1
KEYS = ("benchmark", "schema_version", "machine", "config", "command", "runs")
_TYPES = {"benchmark": str, "schema_version": int, "machine": dict, "config": dict, "command": (str, type(None)),
          "runs": list}


def command_line(argv: list[str] | None = None) -> str:
    """How this process was started, as a shell would take it."""
    return shlex.join([Path(sys.executable).name, *(sys.argv if argv is None else argv)])


def _points(sections: dict) -> list:
    """The measured points of a payload of the earlier format: its ``runs`` or ``rows``, else every list of
    points in its sections, each tagged with the section it is in."""
    for key in ("runs", "rows"):
        if isinstance(sections.get(key), list):
            return sections[key]
    points = []
    for name, section in sections.items():
        if isinstance(section, dict):
            lists = [v for k, v in section.items() if k in ("runs", "rows") and isinstance(v, list)]
        else:
            lists = [section] if isinstance(section, list) else []
        points += [{"section": name, **p} for items in lists for p in items if isinstance(p, dict)]
    return points


def wrap(benchmark: str, sections: dict, *, machine: dict, config: dict | None = None,
         command: str | None = None, runs: list | None = None) -> dict:
    """The envelope around a benchmark's own ``sections`` (which keep their keys)."""
    body = {k: v for k, v in sections.items() if k not in KEYS}
    return {"benchmark": benchmark, "schema_version": SCHEMA_VERSION, "machine": machine,
            "config": config if config is not None else sections.get("config", {}), "command": command,
            "runs": runs if runs is not None else _points(sections), **body}


def sections(payload: dict) -> dict:
    """A result's own sections (and its name and machine): what a script that extends a result starts from."""
    return {k: v for k, v in payload.items() if k not in KEYS or k in ("benchmark", "machine")}


def check(payload: dict, required: tuple[str, ...] = ()) -> None:
    """Raise ValueError unless ``payload`` is an envelope holding the sections ``required``."""
    missing = [k for k in (*KEYS, *required) if k not in payload]
    if missing:
        raise ValueError(f"{payload.get('benchmark', '?')} result lacks {missing}")
    wrong = [k for k, t in _TYPES.items() if not isinstance(payload[k], t)]
    if wrong or payload["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"{payload['benchmark']} result: bad envelope field(s) {wrong or ['schema_version']}")


def write(path: Path, payload: dict, required: tuple[str, ...] = ()) -> Path:
    check(payload, required)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def upgrade(payload: dict) -> dict:
    """A result of the earlier format (no ``schema_version``) in the envelope; an envelope as it is."""
    if "schema_version" in payload:
        return payload
    sections = {k: v for k, v in payload.items() if k != "commands"}
    commands = payload.get("commands")
    command = "; ".join(commands) if isinstance(commands, list) else commands
    return wrap(payload["benchmark"], sections, machine=payload.get("machine", {}), command=command)


def read(path: Path) -> dict:
    payload = upgrade(json.loads(Path(path).read_text()))
    check(payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", type=Path, nargs="+", help="result JSONs to rewrite in the envelope")
    for path in ap.parse_args(argv).files:
        old = json.loads(path.read_text())
        if "schema_version" not in old:
            write(path, upgrade(old))
            print(f"{path}: now in the envelope")
    return 0


if __name__ == "__main__":
    sys.exit(main())
