"""Export a run's checkpoint to a plain PyTorch file: `python launch/export.py runs/NAME [--tag T] [--out F]`.

Training already exports its final checkpoint to runs/NAME/model.pt; this exports any
other (default: the latest complete one). Load it with
`dist_hyena.train.export.load_exported(F)` — no DeepSpeed needed.
"""

import argparse
import json
import sys
from pathlib import Path

from dist_hyena.config import HyenaConfig
from dist_hyena.train.checkpoint import complete_tags
from dist_hyena.train.export import export_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="runs/<run name>")
    parser.add_argument("--tag", help="checkpoint tag, e.g. step_00000100 (default: the latest complete one)")
    parser.add_argument("--out", type=Path, help="output file (default: RUN_DIR/model_<tag>.pt)")
    args = parser.parse_args(argv)
    root = args.run_dir / "checkpoints"
    tags = complete_tags(root)
    tag = args.tag or (tags[-1] if tags else None)
    if tag not in tags:
        print(f"error: no complete checkpoint {tag or ''} under {root}; complete ones: {tags}", file=sys.stderr)
        return 2
    model_cfg = HyenaConfig(**json.loads((args.run_dir / "config.json").read_text())["model"])
    out = export_checkpoint(root, tag, model_cfg, args.out or args.run_dir / f"model_{tag}.pt")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
