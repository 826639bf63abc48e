"""A fake `deep_gemm` for CPU tests: it imports and exposes DeepGEMM's entry points, so the policy sees DeepGEMM as
installed. Every call is recorded in CALLS and then fails: a test can prove a kernel was (or was never) reached."""

CALLS: list[str] = []


def _kernel(name):
    def kernel(*args, **kwargs):
        CALLS.append(name)
        raise RuntimeError(f"fake deep_gemm.{name} called: this is a CPU test stand-in, it computes nothing")

    kernel.__name__ = name
    return kernel


fp8_gemm_nt = _kernel("fp8_gemm_nt")
m_grouped_fp8_gemm_nt_contiguous = _kernel("m_grouped_fp8_gemm_nt_contiguous")
m_grouped_fp8_gemm_nt_masked = _kernel("m_grouped_fp8_gemm_nt_masked")


def get_mk_alignment_for_contiguous_layout():  # a query, not a kernel: answers like DeepGEMM on SM90
    return 128
