"""GPU kernels and their launchers, nothing else: no Decision, no tuned tables, no probing of the GPU model.

``kernels/triton`` holds the Triton kernels (block-FP8 GEMM, the fused 1 x 128 activation quantizer, the fused
MoE), ``scaled_mm`` the one call of torch's cuBLASLt blockwise GEMM, ``deepgemm`` the calls into DeepGEMM, and
``act_quant`` the activation quantizer every GPU backend shares. Launchers take what to run (tile config, scale
layout, which quantizer) from their caller; ``blockfp8.backends`` decides it once per layer. Optional libraries
(triton, deep_gemm) are imported inside functions, so importing this package never imports them.
"""
