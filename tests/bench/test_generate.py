"""The generate benchmark runs transformers' generate with a static cache on bf16 and quantize_model'd variants
(CPU, a 2-layer model of the same shapes; the GPU numbers come from `blockfp8 bench generate`)."""

import pytest

from blockfp8.bench import generate


@pytest.mark.slow
def test_generate_bench_runs_both_variants(monkeypatch):
    monkeypatch.setitem(generate.SMOLLM2_135M, "num_hidden_layers", 2)
    monkeypatch.setitem(generate.SMOLLM2_135M, "vocab_size", 1000)
    rows = generate.bench_generate(modes=("eager",), prompt=8, new_tokens=3, reps=1, device="cpu", log=lambda *_: None)
    assert [(r["variant"], r["mode"], r["tokens"]) for r in rows] == [("bf16", "eager", 3), ("blockfp8", "eager", 3)]
    assert all(r["ms"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert rows[0]["speedup_vs_bf16"] == 1.0
