"""Benchmark plumbing on CPU: shapes, CSV rows, summaries, the dispatch table, the CLI without a GPU."""

import json

import pytest

from blockfp8.backends import dispatch
from blockfp8.bench import gemm, results, shapes


def test_grid_is_the_42_deepseek_cells():
    cells = shapes.gemm_grid()
    assert len(cells) == 42 and len(set(cells)) == 42
    assert (1, 2112, 7168) in cells and (4096, 7168, 16384) in cells


def test_gemm_bytes_counts_operands_scales_and_output():
    m, n, k = 1, 2112, 7168
    expected = m * k + n * k + 4 * (m * 56 + 17 * 56) + 2 * m * n
    assert shapes.gemm_bytes(m, n, k) == expected


def test_rows_summary_and_csv_round_trip(tmp_path):
    env = {"gpu": "X", "torch": "t", "cuda": "c", "triton": "tr", "date": "d", "commit": "abc"}
    rows = []
    for m in (1, 4096):
        times = {"scaled_mm": [10.0, 12.0, 11.0], "triton": [5.0, 5.5, 6.0], "bf16": [20.0, 20.0, 20.0]}
        rows += gemm.rows_for_shape(m, 2112, 7168, times, env)
    tri = [r for r in rows if r["variant"] == "triton"][0]
    assert tri["us"] == 5.5 and tri["speedup_vs_scaled_mm"] == pytest.approx(2.0)
    s = gemm.summarize(rows)
    assert s["triton"]["decode_geomean"] == pytest.approx(2.0) and s["triton"]["cells"] == 2
    path = tmp_path / "r" / "gemm.csv"
    results.append_csv(path, rows)
    results.append_csv(path, rows[:1])
    back = results.read_csv(path)
    assert len(back) == len(rows) + 1 and back[0]["gpu"] == "X" and back[0]["commit"] == "abc"
    assert set(back[0]) == set(results.FIELDS)
    assert "speedup_vs_scaled_mm" in results.table(rows, gemm.TABLE_COLS).splitlines()[0]


def test_geomean_ignores_missing():
    assert results.geomean([2.0, 8.0, float("nan")]) == pytest.approx(4.0)


def test_dispatch_picks_only_among_candidates(tmp_path):
    table = {"GPU": {"2112,7168": {"1": {"backend": "triton"}, "4096": {"backend": "scaled_mm"}}}}
    assert dispatch.pick(1, 2112, 7168, ("scaled_mm", "triton"), gpu="GPU", table=table) == "triton"
    assert dispatch.pick(3, 2112, 7168, ("scaled_mm", "triton"), gpu="GPU", table=table) == "triton"  # bucket 16 -> 1
    assert dispatch.pick(8192, 2112, 7168, ("scaled_mm", "triton"), gpu="GPU", table=table) == "scaled_mm"
    # the table's choice is not allowed by the decision: the policy's first candidate
    assert dispatch.pick(1, 2112, 7168, ("deepgemm", "scaled_mm"), gpu="GPU", table=table) == "deepgemm"
    # unknown shape or GPU: the policy's first candidate
    assert dispatch.pick(1, 7, 7, ("scaled_mm", "triton"), gpu="GPU", table=table) == "scaled_mm"
    assert dispatch.pick(1, 2112, 7168, ("triton",), gpu="other", table=table) == "triton"
    with pytest.raises(ValueError, match="no candidate"):
        dispatch.pick(1, 2112, 7168, (), gpu="GPU", table=table)
    path = tmp_path / "d.json"
    dispatch.merge_write(path, "GPU", {"576,7168": {"1": {"backend": "triton"}}})
    dispatch.merge_write(path, "GPU", {"576,7168": {"16": {"backend": "scaled_mm"}}})
    assert set(json.loads(path.read_text())["GPU"]["576,7168"]) == {"1", "16"}


def test_shipped_tables_are_consistent():
    from blockfp8.backends import triton_gemm

    gemm_table = triton_gemm.load_tuned()
    disp = dispatch.load_table()
    for gpu, per in disp.items():
        for nk, buckets in per.items():
            for b, entry in buckets.items():
                assert entry["backend"] in ("triton", "scaled_mm", "deepgemm"), (gpu, nk, b)
                if entry["backend"] == "triton":
                    assert b in gemm_table[gpu][nk], f"dispatch picks triton without a tuned config: {gpu} {nk} {b}"


def test_candidate_configs_cover_both_regimes():
    assert all(c["kernel"] == "ptr" for c in gemm.candidate_configs(1))
    assert any(c["SPLIT_K"] > 1 for c in gemm.candidate_configs(64))
    assert any(c["kernel"] == "tma" for c in gemm.candidate_configs(4096))


def test_bench_cli_needs_a_gpu(capsys):
    import torch

    from blockfp8.cli.main import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", "gemm", "--m", "1", "--nk", "576x7168"]) == 1
    assert main(["tune", "--m", "1"]) == 1
    assert "needs a CUDA GPU" in capsys.readouterr().out
