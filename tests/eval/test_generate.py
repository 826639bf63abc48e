"""Batched generation / scoring and the whole eval pipeline, on a tiny random Llama built offline (no download)."""

import json

import pytest
import torch
import yaml

from blockfp8.cli.main import main
from blockfp8.eval.config import parse_config
from blockfp8.eval.generate import Timing, generate_greedy, score_continuations
from blockfp8.eval.runner import evaluate

CORPUS = [
    "Question: Tom has 3 apples and buys 12 more. How many apples does he have?\n"
    "Answer: 3 + 12 = 15. So the answer is 15.\n\n",
    "In my palm is a clear stone, and inside it is a small ivory statuette of a guardian angel.",
]


@pytest.fixture(scope="module")
def tiny():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(CORPUS * 20, trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, bos_token_id=None, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a larger init spreads the logits: no near-ties for greedy decoding to trip on
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model, tok


def test_continuation_scores_match_an_unpadded_forward(tiny):
    model, tok = tiny
    texts = [("Tom has 3 apples and", " buys"), ("In my palm", " is a clear stone"), ("Q", " 15"),
             ("inside it is a small ivory statuette of a guardian", " angel")]
    pairs = [(tok(c).input_ids, tok(t).input_ids) for c, t in texts]
    timing = Timing()
    batched = score_continuations(model, pairs, pad=tok.pad_token_id, batch_size=3, device="cpu", timing=timing)
    assert timing.items == 4 and timing.prompt_tokens == sum(len(c) + len(t) for c, t in pairs)
    for (ctx, cont), got in zip(pairs, batched, strict=True):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0].float(), -1)
        pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
        want = logprobs[pos, torch.tensor(cont)].double().sum().item()
        assert got.loglik == pytest.approx(want, abs=1e-4), (ctx, cont)
        assert got.greedy == bool((logprobs[pos].argmax(-1) == torch.tensor(cont)).all())
        assert got.argmax_ids == logprobs[pos].argmax(-1).tolist() and got.num_tokens == len(cont)


def test_greedy_continuation_is_scored_as_correct(tiny):
    model, tok = tiny
    ctx = tok("Tom has 3 apples").input_ids
    with torch.no_grad():
        nxt = int(model(torch.tensor([ctx])).logits[0, -1].argmax())
    other = (nxt + 1) % len(tok)
    right, wrong = score_continuations(model, [(ctx, [nxt]), (ctx, [other])], pad=0, batch_size=2, device="cpu")
    assert right.greedy and not wrong.greedy and right.loglik > wrong.loglik


def _greedy_without_cache(model, tok, prompt, steps):
    ids = tok(prompt).input_ids
    out = []
    for _ in range(steps):
        with torch.no_grad():
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
    return tok.decode(out)


def test_batched_kv_cache_generation_matches_a_naive_loop(tiny):
    model, tok = tiny
    prompts = ["Question: Tom has 3 apples.\nAnswer:", "Answer:", "In my palm is a clear stone, and inside it"]
    timing = Timing()
    gens = generate_greedy(model, tok, prompts, max_new_tokens=12, stop="\u2603", batch_size=2, device="cpu",
                           timing=timing)
    for prompt, g in zip(prompts, gens, strict=True):
        assert g.text == _greedy_without_cache(model, tok, prompt, 12), prompt
        assert g.prompt_tokens == len(tok(prompt).input_ids) and 0 <= g.generated_tokens <= 12
    assert timing.items == 3 and timing.generated_tokens == sum(g.generated_tokens for g in gens)


def test_generation_is_cut_at_the_stop_string(tiny):
    model, tok = tiny
    full = generate_greedy(model, tok, ["Answer:"], max_new_tokens=12, stop="\u2603", batch_size=1, device="cpu")[0]
    assert len(full.text) > 3
    stop = full.text[2:4]  # a piece of what the model generates: it must stop there and drop it
    cut = generate_greedy(model, tok, ["Answer:"], max_new_tokens=12, stop=stop, batch_size=1, device="cpu")[0]
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.generated_tokens <= full.generated_tokens


def _cfg(task, n, **extra):
    variants = [{"name": "base", "accuracy_threshold": 0.0}, {"name": "again", "accuracy_threshold": 1.0}]
    return parse_config({"model": "smollm2", "task": task, "num_questions": n, "variants": variants,
                         "bootstrap_samples": 50, **extra})


def test_gsm8k_pipeline_counts_invalid_answers_and_compares(tiny):
    cfg = _cfg("gsm8k", 5, num_fewshot=1, max_new_tokens=8, batch_size=2)
    res = evaluate(cfg, device="cpu", model_and_tokenizer=tiny)
    base, again = res["variants"]["base"], res["variants"]["again"]
    assert base["n"] == 5 and 0.0 <= base["invalid_rate"] <= 1.0
    assert len(base["per_item"]["invalid"]) == 5 and base["per_item"]["ids"] == [0, 1, 2, 3, 4]
    assert base["invalid_rate"] == base["per_item"]["invalid"].count("1") / 5
    for s in base["samples"]:  # invalid -> no prediction, never an exception
        assert (s["flexible"] is None) == (not any(ch.isdigit() for ch in s["generation"]))
    # the same model twice: identical outcomes, McNemar p = 1, zero difference
    assert base["per_item"] == again["per_item"]
    comp = res["comparisons"][0]
    assert comp["baseline"] == "base" and comp["variant"] == "again"
    assert comp["mcnemar"]["p_value"] == 1.0 and comp["accuracy_diff"] == 0.0
    assert base["passed"] and (again["passed"] == (again["accuracy"] >= 1.0 - 0.08))
    assert res["passed"] == (base["passed"] and again["passed"])


def test_lambada_pipeline_reports_perplexity_and_bootstrap(tiny):
    res = evaluate(_cfg("lambada", 6, batch_size=4), device="cpu", model_and_tokenizer=tiny, limit=4)
    base = res["variants"]["base"]
    assert res["config"]["num_questions"] == 4 and base["n"] == 4 and len(base["per_item"]["loglik"]) == 4
    import math

    assert base["perplexity"] == pytest.approx(math.exp(-sum(base["per_item"]["loglik"]) / 4), rel=1e-5)
    comp = res["comparisons"][0]
    assert comp["bootstrap_perplexity"]["ratio"] == 1.0 and comp["bootstrap_perplexity"]["diff_ci"] == [0.0, 0.0]
    tp = base["throughput"]
    assert tp["questions"] == 4 and tp["questions_per_s"] > 0 and tp["tokens_per_s"] > 0


def test_cli_on_a_model_folder_writes_json_markdown_and_samples(tiny, tmp_path, capsys):
    model, tok = tiny
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = {"model": str(folder), "task": "lambada", "num_questions": 5, "dtype": "float32", "batch_size": 2,
           "bootstrap_samples": 20,
           "variants": [{"name": "base", "accuracy_threshold": 0.0},
                        {"name": "strict", "accuracy_threshold": 1.0, "tolerance": 0.0}]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out_json, out_md, out_samples = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "s.jsonl"
    rc = main(["eval", str(path), "--device", "cpu", "--json", str(out_json), "--markdown", str(out_md),
               "--samples", str(out_samples), "--quiet"])
    res = json.loads(out_json.read_text())
    strict_ok = res["variants"]["strict"]["accuracy"] == 1.0
    assert rc == (0 if strict_ok else 1)  # exit 1 when a variant is below threshold - tolerance
    assert "samples" not in res["variants"]["base"] and res["command"].startswith("blockfp8 eval")
    table = out_md.read_text()
    assert table in capsys.readouterr().out and "| base |" in table and "| strict |" in table
    rows = [json.loads(line) for line in out_samples.read_text().splitlines()]
    assert len(rows) == 10 and {r["variant"] for r in rows} == {"base", "strict"}
    assert main(["eval", str(path), "--variants", "nope", "--quiet"]) == 1


def test_task_warmups_run_on_a_full_batch(tiny):
    """The untimed warm-up (run on CUDA before timing) goes through the same code paths without error."""
    from blockfp8.eval.runner import _TASKS

    model, tok = tiny
    for task, extra in (("gsm8k", {"num_fewshot": 1, "max_new_tokens": 4}), ("lambada", {})):
        cfg = _cfg(task, 3, batch_size=2, **extra)
        runner = _TASKS[task](cfg, tok, 3)
        runner.warmup(model, tok, device="cpu", batch_size=2)
