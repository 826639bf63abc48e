"""Shows why GPU quantizer checks use the reference on CPU: torch on CUDA divides by a Python scalar as a
multiplication by the reciprocal, so quant.reference on CUDA tensors is not correctly rounded, while the Triton
quantizer (div_rn) matches the CPU reference bit for bit. Run on a GPU machine: python3 benchmarks/diag_quant.py"""
import torch

from blockfp8.kernels.triton import act_quant as triton_quant
from blockfp8.quant import reference as R

torch.manual_seed(0)
x = torch.randn(4099, 7168, device="cuda", dtype=torch.bfloat16) * 7
for fmt in ("float32", "ue8m0"):
    q, s = triton_quant.quantize_act(x, 128, fmt)
    for where, xr in (("cuda", x), ("cpu", x.cpu())):
        qr, sr = R.quantize_act(xr, 128, fmt)
        bad = int((q.view(torch.uint8).cpu() != qr.view(torch.uint8).cpu()).sum())
        print(f"fmt={fmt} reference on {where}: scales equal={torch.equal(s.cpu(), sr.cpu())} q mismatches={bad}")
