"""Serving-engine settings that follow an audit verdict (``blockfp8 audit ... --emit vllm|sglang``).

Flag and variable names checked against the engines' sources and docs (2026-11):

* vLLM: ``VLLM_USE_DEEP_GEMM=0`` turns DeepGEMM off for dense and MoE layers (every release that has DeepGEMM);
  ``--linear-backend {auto,cutlass,triton,deep_gemm,flashinfer_*,marlin,torch,...}`` picks the dense FP8 GEMM
  (added by vllm-project/vllm PR 39538, first released in v0.20.0) and ``--moe-backend`` the MoE one.
* SGLang: ``SGLANG_ENABLE_JIT_DEEPGEMM=0`` (older releases read ``SGL_ENABLE_JIT_DEEPGEMM``) turns DeepGEMM off;
  ``--fp8-gemm-backend {auto,deep_gemm,cutlass,triton,flashinfer_cutlass,flashinfer_trtllm,flashinfer_deepgemm,aiter}``
  picks the block-FP8 GEMM (as listed by ``sglang serve --help`` in v0.5.12).

Only Blackwell needs them: there DeepGEMM's block-scaled MMA takes only UE8M0 scales. On Hopper DeepGEMM uses
float32 scales and may stay on. Neither engine picks a dense GEMM backend per layer (one ``--linear-backend`` /
``--fp8-gemm-backend`` and one DeepGEMM switch for the whole model), so a per-layer plan cannot be expressed: the
output says so and emits the whole-model choice the verdict gives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blockfp8.audit.report import AuditReport

ENGINES = ("vllm", "sglang")


def emit(engine: str, report: AuditReport) -> str:
    if engine not in ENGINES:
        raise ValueError(f"--emit {engine!r}: valid values: {', '.join(ENGINES)}")
    s = report.summary
    model = report.model
    head = [f"# blockfp8 audit verdict for {model}: {s.verdict} (mean {s.mean_bits_lost:.3f} bit lost per "
            f"layer, max {s.max_bits_lost:.3f} in {s.worst_layer})"]
    plan = report.plan
    if plan and plan["float32_layers"]:
        lost = ("its UE8M0 layers lose the fast kernel" if not report.safe
                else f"its {len(plan['float32_layers'])} float32 layers lose their protection")
        head.append(f"# The audit's per-layer plan ({len(plan['float32_layers'])} layers on float32 scales, "
                    f"{100 * plan['ue8m0_flop_share']:.1f}% of GEMM FLOPs on UE8M0) cannot be expressed in {engine}: "
                    f"it takes one GEMM backend for every dense layer. Emitting the whole-model choice; {lost}. "
                    "blockfp8's own layers follow the plan (`blockfp8 explain --audit`).")
    if report.safe:
        return "\n".join(head + [f"# UE8M0 is acceptable: keep the {engine} defaults (DeepGEMM may run with UE8M0 "
                                 "scales on Blackwell); nothing to set."])
    head.append("# UE8M0 is harmful: keep DeepGEMM off where it takes only UE8M0 scales (Blackwell SM100/SM120); on "
                "Hopper it uses float32 scales and may stay on.")
    if engine == "vllm":
        return "\n".join(head + [
            "# vLLM >= 0.20 (--linear-backend from PR 39538); VLLM_USE_DEEP_GEMM also covers the MoE layers.",
            "export VLLM_USE_DEEP_GEMM=0",
            f"vllm serve {model} --linear-backend cutlass",
        ])
    return "\n".join(head + [
        "# SGLang >= 0.5.12 (--fp8-gemm-backend); older releases read SGL_ENABLE_JIT_DEEPGEMM=0 instead.",
        "export SGLANG_ENABLE_JIT_DEEPGEMM=0",
        f"python -m sglang.launch_server --model-path {model} --fp8-gemm-backend cutlass",
    ])
