"""How much each layer's UE8M0 error moves the model's output: a Fisher-weighted output error per layer, the
ranking the per-layer plan searches over (``scale_plan``).

Bits lost (the calibrated level) say how much of a layer's *own* output SNR UE8M0 costs, not how much that error
matters downstream. Here, on the selection windows, one forward and one backward pass give for every linear layer
its output error ``d_f = gemm_reference(quantize_act(x, f), quantize_weight(W, f)) - x @ W.T`` in each scale
format ``f`` and the gradient ``g`` of the next-token loss (summed over the window) with respect to that layer's
output. To second order, the loss change an error ``d`` causes at token ``t`` has size ``(g_t . d_t)^2`` (the
empirical Fisher), so a layer's score in format ``f`` is ``sum_t (g_t . d_t)^2`` and its UE8M0 sensitivity is
``score_ue8m0 - score_float32``: what keeping it on float32 scales is worth. Cross terms between layers and
tokens are ignored; the plan is always measured end to end afterwards, never trusted on this estimate alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from blockfp8.audit.weights import UNQUANTIZED_LINEARS, linear_modules
from blockfp8.quant import reference as ref


class _Layer:
    def __init__(self, module: torch.nn.Linear, block: tuple[int, int], name: str):
        self.w = module.weight.detach().float()
        self.wq = {f: ref.quantize_weight(self.w, block, f, name=name) for f in ref.SCALE_FMTS}
        self.block = block
        self.score = dict.fromkeys(ref.SCALE_FMTS, 0.0)

    def hook(self, module, inputs, output) -> None:
        x = inputs[0].detach().float()
        x2 = x.reshape(-1, x.shape[-1])
        y = x2 @ self.w.t()
        errors = {}
        for f in ref.SCALE_FMTS:
            xq, xs = ref.quantize_act(x2, self.block[1], f)
            errors[f] = ref.gemm_reference(xq, xs, *self.wq[f], self.block, out_dtype=torch.float32) - y

        def take(grad: torch.Tensor) -> None:
            g = grad.detach().float().reshape(-1, grad.shape[-1])
            for f, d in errors.items():
                self.score[f] += float(((g * d).sum(-1).double() ** 2).sum())
            errors.clear()

        if output.requires_grad:
            output.register_hook(take)


def fisher_sensitivity(model: torch.nn.Module, ids: torch.Tensor, block: Sequence[int] = (128, 128), *,
                       batch_size: int = 2, skip: Sequence[str] = UNQUANTIZED_LINEARS) -> dict[str, float]:
    """Per layer name, ``score_ue8m0 - score_float32`` over the windows ``ids`` (module order)."""
    block = ref.normalize_block_size(block)
    named = linear_modules(model, skip)
    layers = {n: _Layer(m, block, n) for n, m in named}
    handles = [m.register_forward_hook(layers[n].hook) for n, m in named]
    embed = model.get_input_embeddings()
    device = next(model.parameters()).device
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:  # gradients flow to the activations only: no weight .grad is written
        p.requires_grad_(False)
    try:
        for i in range(0, ids.shape[0], batch_size):
            x = ids[i : i + batch_size].to(device)
            with torch.enable_grad():
                inputs = embed(x).detach().requires_grad_(True)  # weights stay frozen; activations carry gradients
                logits = model(inputs_embeds=inputs, use_cache=False).logits.float()
                loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                         x[:, 1:].reshape(-1), reduction="sum")
                loss.backward()
            del logits, loss, inputs
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)
    return {n: layer.score["ue8m0"] - layer.score["float32"] for n, layer in layers.items()}
