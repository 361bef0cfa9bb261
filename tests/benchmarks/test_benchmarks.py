"""Smoke runs of the benchmark scripts (--quick): they run end to end and write the JSON the README reads.
The numbers themselves are measured by the scripts, not asserted here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    "operator_vs_attention": {"widths", "paper", "runs", "ratios_at_paper_n", "ratios_at_largest_common_n"},
    "longest_context": {"cap_gib", "paper_forward_tokens", "runs", "summary"},
    "fft_efficiency": {"rows"},
    "geometric_product": {"rows"},
    "sp_block": {"config", "runs", "summary"},
    "loader_throughput": {"long_context", "delivery_per_rank", "step_consumption_per_rank",
                          "ratio_delivery_over_consumption", "pipelined"},
    "accuracy": {"nbody", "recall", "long"},
    "thread_policy": {"runs", "summary"},
    "step_efficiency": {"trees", "runs", "summary"},
    "md_throughput": {"runs", "mpi_equals_serial", "loader", "step", "loader_over_step"},
}


@pytest.mark.timeout(420)
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_benchmark_quick_run_writes_its_json(name, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", "--out", str(tmp_path)],
                   env=env, check=True, capture_output=True, timeout=400)
    payload = json.loads((tmp_path / f"{name}.json").read_text())
    assert payload["benchmark"] == name
    assert EXPECTED[name] <= payload.keys()
    assert "machine" in payload
    if name == "operator_vs_attention":
        assert {r["mixer"] for r in payload["runs"] if r["fits"]} == {"hyena", "attention", "sdpa"}
        assert all(r["forward_s"] > 0 and r["forward_backward_peak_bytes"] > 0 for r in payload["runs"])
    if name == "thread_policy":
        assert {(s["policy"], s["workload"][:7]) for s in payload["summary"]} == {
            (p, "default") for p in ("package default", "1 thread")}
        assert all(s["alone_steps_per_s"] > 0 and s["beside_busy_steps_per_s"] > 0 for s in payload["summary"])
        assert {s["threads"] for s in payload["summary"] if s["policy"] == "1 thread"} == {1}
    if name == "step_efficiency":
        row, = payload["summary"]
        assert row["useful_flop_per_token"] > row["counted_flop_per_token"] > 0  # the product's terms are added
        assert 0 < row["fraction_of_matmul"] < 1 and row["step_s"] > 0
        assert row["dense_flop_per_token"] > row["useful_flop_per_token"]  # the MLPs skip their inputs' zeros
    if name == "longest_context":
        failed = [(r["variant"], r["sp"], r.get("error")) for r in payload["runs"] if not r["fits"]]
        assert not failed, failed
        assert all(r["bytes_per_token"] > 0 for r in payload["runs"])
        assert {(r["variant"], r["sp"]) for r in payload["runs"]} == {
            (v, sp) for v in ("plain", "checkpointing+mlp_chunks") for sp in (1, 2)}
    if name in ("fft_efficiency", "geometric_product"):
        assert payload["rows"] and all(v > 0 for r in payload["rows"] for k, v in r.items() if k.endswith("_s"))
    if name == "geometric_product":
        assert all(r["max_abs_diff"] < 1e-4 for r in payload["rows"])
    if name == "fft_efficiency":
        assert {r["op"] for r in payload["rows"]} == {"cross_conv", "cross_conv_before", "circular_conv"}
        assert all(r["max_rel_diff_vs_before"] < 1e-5 for r in payload["rows"] if r["op"] == "cross_conv")
    if name == "sp_block":
        assert all(r["fits"] for r in payload["runs"])
        assert {r["sweep"] for r in payload["runs"]} == {"weak", "strong"}
        assert {r["strategy"] for r in payload["runs"] if r["sp"] > 1} == {"channels", "fft"}
        # the script itself fails unless the ledger equals the closed form to the byte
        assert all(r["ledger_equals_theory"] for r in payload["runs"] if r["sp"] > 1)
        assert all(m > 0 for r in payload["runs"] for m in r["peak_rss_mib_per_rank"])
    if name == "loader_throughput":
        assert all(v["tokens_per_s"] > 0 for v in payload["delivery_per_rank"].values())
        assert all(s["tokens_per_s"] > 0 for s in payload["step_consumption_per_rank"])
        assert payload["pipelined"]["steps"] >= 2
    if name == "accuracy":  # every run went through the trainer and reports its metrics at best validation
        assert {r["mixer"] for r in payload["nbody"]["table"]} == {"hyena", "local", "egnn", "linear"}
        assert all(r["test_mse"] > 0 and r["best"]["step"] >= 1 for r in payload["nbody"]["runs"])
        assert {(r["mixer"], r["variant"]) for r in payload["recall"]["runs"]} == {
            (m, v) for m in ("hyena", "attention") for v in ("random", "fixed")}
        assert all(0 <= r["test_accuracy"] <= 1 for r in payload["recall"]["runs"])
        assert all(0 <= r["accuracy"] <= 1 for r in payload["long"]["rows"])
    if name in ("operator_vs_attention", "longest_context", "fft_efficiency", "sp_block", "accuracy"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
