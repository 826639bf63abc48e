"""Which programs load a block-FP8 folder: transformers' whole-block rule and the block size that satisfies it."""

from blockfp8.formats.consumers import check_consumers, dividing_block

SMOLLM2 = {  # SmolLM2-135M's linear shapes: hidden 576, k/v 192, intermediate 1536
    "q_proj.weight": (576, 576), "k_proj.weight": (192, 576), "gate_proj.weight": (1536, 576),
    "down_proj.weight": (576, 1536),
}


def test_ragged_shapes_are_named_with_a_dividing_block():
    c = check_consumers(SMOLLM2, (128, 128))
    assert not c.transformers_ok and c.checked == 4
    assert set(c.ragged) == {"q_proj.weight", "k_proj.weight", "gate_proj.weight", "down_proj.weight"}
    assert c.suggested_block == (64, 64)
    text = "\n".join(c.lines())
    assert "NOT loadable by transformers: 4 of 4" in text and "--block 64,64 divides every shape" in text
    assert c.as_dict()["transformers"] == "refuses: ragged blocks"


def test_whole_blocks_load_everywhere():
    c = check_consumers(SMOLLM2, (64, 64))
    assert c.transformers_ok and c.suggested_block is None
    assert "loads with: transformers (quant_method fp8): all 4 quantized weights are whole [64, 64] blocks" in c.lines()


def test_dividing_block():
    assert dividing_block([(4096, 7168), (2112, 7168)]) == (64, 128)
    assert dividing_block([(1024, 1024)]) == (128, 128)  # capped at what the fast kernels take
    assert dividing_block([(100, 128)]) is None  # 4 is below the smallest Triton tile
