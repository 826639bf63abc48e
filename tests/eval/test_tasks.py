"""Prompts and answer extraction of the eval harness (no model)."""

import gzip

import pytest

from blockfp8 import datasets as data
from blockfp8.eval import tasks


def test_gsm8k_prompt_follows_the_vllm_layout():
    shots = [data.FewShot("q1?", "a1. So the answer is 1."), data.FewShot("q2?", "a2. So the answer is 2.")]
    prompt = tasks.gsm8k_prompt("Q?", shots)
    assert prompt == (
        "Question: q1?\nAnswer: a1. So the answer is 1.\n\n"
        "Question: q2?\nAnswer: a2. So the answer is 2.\n\n"
        "Question: Q?\nAnswer:"
    )
    assert tasks.gsm8k_prompt("Q?", []) == "Question: Q?\nAnswer:"


def test_fewshot_exemplars_rebuild_the_stored_context():
    items, shots = data.load_gsm8k()
    # the 8-shot prompt we build is byte-identical to the one stored with the data
    import json

    with gzip.open(data.data_path("gsm8k"), "rt", encoding="utf-8") as f:
        row = json.loads(f.readline())
    assert tasks.gsm8k_prompt(items[0].question, shots) == row["request"]["context"]


@pytest.mark.parametrize(
    "text,flexible,strict",
    [
        (" 3 + 4 = 7. So the answer is 7.", 7, 7),
        (" She pays $1,200 in total.\n#### 1,200", 1200, 1200),
        (" It loses 10, so the change is -10.", -10, None),
        (" The answer is $18. Then 5 more", 5, 18),  # flexible takes the last integer, strict the marked one
        (" 2.5 hours", 5, None),  # vLLM convention: integers only, "2.5" -> last integer 5
        (" no digits here", None, None),
        ("", None, None),
    ],
)
def test_answer_extraction(text, flexible, strict):
    assert tasks.extract_flexible(text) == flexible
    assert tasks.extract_strict(text) == strict


def test_truncate_at_stop():
    assert tasks.truncate_at_stop(" 4. So the answer is 4.\n\nQuestion: next") == " 4. So the answer is 4.\n\n"
    assert tasks.truncate_at_stop("no stop") == "no stop"


class _SplitTokenizer:
    """Whitespace-splitting stand-in: each word (with its leading space) is one token id."""

    def __init__(self, merge_boundary=False):
        self.vocab: dict[str, int] = {}
        self.merge_boundary = merge_boundary

    def __call__(self, text, add_special_tokens=False):
        import re

        pieces = re.findall(r" ?\S+", text)
        if self.merge_boundary and len(pieces) >= 2:  # pretend the last two pieces merge into one token
            pieces = pieces[:-2] + [pieces[-2] + pieces[-1]]

        class Out:
            input_ids = [self.vocab.setdefault(p, len(self.vocab)) for p in pieces]

        return Out()


def test_lambada_continuation_tokens_split_at_the_context_boundary():
    tok = _SplitTokenizer()
    ctx, cont = tasks.lambada_target_tokens(tok, "the cat sat on the", "mat")
    assert len(ctx) == 5 and len(cont) == 1 and cont == tok(" mat").input_ids
    # when the joint tokenization does not start with the context's tokens, both are tokenized separately
    tok2 = _SplitTokenizer(merge_boundary=True)
    ctx2, cont2 = tasks.lambada_target_tokens(tok2, "a b c", "d")
    assert ctx2 == tok2("a b c").input_ids and cont2 == tok2(" d").input_ids
