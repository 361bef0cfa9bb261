"""Loader throughput: StreamingLoader vs a plain sequential read of the same store files.

    python benchmarks/loader_throughput.py [--store PATH] [--n-tokens 65536] [--samples 64]

Makes a recall store (cheap to generate at any length) unless --store names an existing
one, then times one epoch of the loader (shuffled, with the background thread and with
DataLoader workers, and as one SP rank of 4) against (a) reading every chunk file's bytes
in order and (b) zarr decoding every array in order. Prints JSON: tokens/s and MB/s
(decoded float32 bytes delivered; for the raw read, bytes read from disk).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import zarr  # noqa: E402

from dist_hyena.data import StreamingLoader, generate_store  # noqa: E402


def _time_loader(store: Path, batch_size: int, **kw) -> dict:
    loader = StreamingLoader(store, "train", batch_size, **kw)
    start = time.perf_counter()
    tokens = nbytes = 0
    for batch in loader:
        tokens += batch["x"].shape[0] * batch["x"].shape[1]
        nbytes += sum(t.numel() * t.element_size() for k, t in batch.items() if k != "index")
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "MB_per_s": nbytes / seconds / 1e6,
        "tokens": tokens,
        **{k: v for k, v in kw.items() if k in ("num_workers", "sp_size")},
    }


def _time_raw_files(store: Path, split: str) -> dict:
    files = sorted(p for p in (store / split).rglob("c/**/*") if p.is_file())
    start = time.perf_counter()
    nbytes = sum(len(p.read_bytes()) for p in files)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "MB_per_s": nbytes / seconds / 1e6, "files": len(files), "bytes": nbytes}


def _time_zarr_sequential(store: Path, split: str) -> dict:
    group = zarr.open_group(store, mode="r")[split]
    attrs = zarr.open_group(store, mode="r").attrs.asdict()
    start = time.perf_counter()
    nbytes = sum(np.asarray(group[name][:]).nbytes for name in attrs["arrays"])
    seconds = time.perf_counter() - start
    tokens = attrs["splits"][split] * attrs["n_tokens"]
    return {"seconds": seconds, "tokens_per_s": tokens / seconds, "MB_per_s": nbytes / seconds / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=None, help="existing store to read (default: make one)")
    parser.add_argument("--n-tokens", type=int, default=65536, help="tokens per sample of the generated store")
    parser.add_argument("--samples", type=int, default=64, help="train samples of the generated store")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the worker run")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            start = time.perf_counter()
            store = generate_store(
                "recall",
                Path(tmp) / "recall",
                seed=0,
                n_tokens=args.n_tokens,
                train=args.samples,
                val=0,
                test=0,
                samples_per_chunk=4,
                tokens_per_chunk=max(1, args.n_tokens // 4),
            )
            generation_s = time.perf_counter() - start
        else:
            generation_s = None
        attrs = zarr.open_group(store, mode="r").attrs.asdict()
        result = {
            "store": {
                "task": attrs["task"],
                "n_tokens": attrs["n_tokens"],
                "train": attrs["splits"]["train"],
                "samples_per_chunk": attrs["samples_per_chunk"],
                "tokens_per_chunk": attrs["tokens_per_chunk"],
                "generation_s": generation_s,
            },
            "raw_sequential_file_read": _time_raw_files(store, "train"),
            "zarr_sequential_decode": _time_zarr_sequential(store, "train"),
            "loader_thread": _time_loader(store, args.batch_size, num_workers=0),
            "loader_workers": _time_loader(store, args.batch_size, num_workers=args.workers),
            "loader_sp_rank_of_4": _time_loader(store, args.batch_size, sp_rank=0, sp_size=4),
            "loader_unshuffled": _time_loader(store, args.batch_size, shuffle=False),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
