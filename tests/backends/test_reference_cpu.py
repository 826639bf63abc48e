"""The reference backend's CPU path: a dequantized weight cached once, the same bits as gemm_reference."""

import torch

from blockfp8.backends.base import BackendId
from blockfp8.config import BlockFP8Config
from blockfp8.nn import BlockFP8Linear
from blockfp8.quant import reference as ref


def test_cpu_layer_caches_the_dequantized_weight_and_matches_gemm_reference():
    torch.manual_seed(0)
    linear = torch.nn.Linear(320, 192, bias=True)  # ragged blocks on both axes
    layer = BlockFP8Linear.from_linear(linear, BlockFP8Config(linear_backend="reference"))
    assert layer.decision.backend == BackendId.REFERENCE
    cached = layer.prepared.extra["dequantized"]
    assert torch.equal(cached, ref.dequantize_weight(layer.weight, layer.weight_scale_inv, (128, 128)))
    x = torch.randn(3, 5, 320, dtype=torch.bfloat16)
    got = layer(x)
    x_q, x_s = ref.quantize_act(x.reshape(-1, 320).float(), 128, "float32")
    want = ref.gemm_reference(x_q, x_s, layer.weight, layer.weight_scale_inv, (128, 128), torch.float32,
                              layer.bias).reshape(3, 5, 192).to(torch.bfloat16)
    assert torch.equal(got, want)
    layer.prepared.extra.pop("dequantized")  # the operator path gives the same bits
    assert torch.equal(layer(x), got)
