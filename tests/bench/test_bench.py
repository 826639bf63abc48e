"""Benchmark plumbing on CPU: shapes, CSV rows, summaries, the dispatch table, the CLI without a GPU."""


import pytest

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


def test_environment_fills_the_machine_columns(tmp_path):
    env = results.environment()
    assert list(env) == ["gpu", "torch", "cuda", "triton", "date", "commit"]
    assert set(env) <= set(results.FIELDS) and env["gpu"] and env["commit"]
    assert len(env["date"]) == len("2026-01-01T00:00:00Z") and env["date"].endswith("Z")
    results.append_csv(tmp_path / "x.csv", [{"bench": "b", **env}])
    assert [p.name for p in tmp_path.iterdir()] == ["x.csv"]  # no temporary file left beside it


def test_geomean_ignores_missing():
    assert results.geomean([2.0, 8.0, float("nan")]) == pytest.approx(4.0)


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
    assert "error: needs a CUDA GPU" in capsys.readouterr().err


def test_gemm_case_offers_cute_only_where_its_backend_runs(monkeypatch):
    """The GEMM bench and `tune` time the CuTe DSL kernel where the policy could pick it, and its `auto` picks
    among the same candidates as the policy."""
    from blockfp8.backends.cute import CuteBackend
    from blockfp8.bench import peers

    case = peers.GemmCase(4, 256, 256, device="cpu")
    assert case.dense_candidates() == ("scaled_mm", "triton")  # no GPU here (and the DSL hidden by conftest)
    assert callable(case.variants(("cute",))["cute"])  # nothing compiles until it is called
    monkeypatch.setattr(CuteBackend, "is_supported", lambda self, platform: (True, "stub"))
    assert case.dense_candidates() == ("scaled_mm", "cute", "triton")
    assert peers.GemmCase(4, 100, 256, device="cpu").dense_candidates() == ("scaled_mm", "triton")  # N % 8


def test_layer_variants_take_turns_and_report_the_median(monkeypatch):
    from blockfp8.bench import layer, timing

    order = []
    clock = {"a": iter([5.0, 1.0, 3.0, 2.0, 4.0]), "b": iter([10.0] * 5)}

    def wall_us(fn, reps, warmup=3):
        assert reps == 2  # 10 reps over 5 rounds
        order.append(fn)
        return next(clock[fn])

    monkeypatch.setattr(timing, "wall_us", wall_us)
    us = layer._interleaved({"a": ("a", 1), "b": ("b", 2)}, reps=10)
    assert us == {"a": 3.0, "b": 5.0}  # the median round; "b" replays two layer calls per call
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]  # each round starts one variant later


def test_a_layer_variant_that_raises_is_reported_not_fatal(monkeypatch):
    import math

    from blockfp8.bench import layer, timing

    def wall_us(fn, reps, warmup=3):
        if fn == "bad":
            raise RuntimeError("no kernel image")
        return 2.0

    monkeypatch.setattr(timing, "wall_us", wall_us)
    logged = []
    us = layer._interleaved({"bad": ("bad", 1), "good": ("good", 1)}, reps=10, log=logged.append, where="eager M=1")
    assert us["good"] == 2.0 and math.isnan(us["bad"])
    assert logged == ["layer bad eager M=1: RuntimeError: no kernel image"]  # once, not once per round
