"""Kernels written in CuTe DSL (``nvidia-cutlass-dsl``, an optional dependency: ``pip install blockfp8[cute]``).

Importing this package imports nothing from ``cutlass``; :mod:`.gemm` does, on its first launch. Kernels are
compiled once per process and configuration (about a second each) and take any M, N, K afterwards.
"""
