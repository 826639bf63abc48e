"""Print Python/torch/Triton/CUDA versions, the GPU and its SM capability, and which optional libraries import."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from blockfp8.cli.args import KNOWN_ARCHES, add_output_arguments, arch

    add_output_arguments(p, "the versions and platform")
    p.add_argument("--arch", type=arch, help=f"pretend to be this SM capability ({', '.join(KNOWN_ARCHES)}); "
                                             "overrides BLOCKFP8_ARCH")


def run(args: argparse.Namespace) -> int:
    from blockfp8 import __version__, platform
    from blockfp8.backends.deepgemm import DeepGemmBackend
    from blockfp8.cli.args import write_json_output
    from blockfp8.kernels import deepgemm

    plat = platform.detect(arch=args.arch)
    # What automatic choice sees: on a real GPU this runs DeepGEMM's smoke GEMM in a child process.
    dg_ok, dg_why = DeepGemmBackend().is_supported(plat)
    dg_info = {"usable": dg_ok, "reason": dg_why, "version": deepgemm.version()}
    info = {"blockfp8": __version__, **plat.as_dict(), "deep_gemm": dg_info}
    if args.json is not None:
        wrote = write_json_output(args.json, info)
        if wrote:
            print(f"wrote {wrote}")
        return 0
    print(f"blockfp8   {__version__}")
    print(f"python     {plat.python_version}")
    print(f"torch      {plat.torch_version} (CUDA {plat.cuda_version or 'none'})")
    print(f"triton     {plat.triton_version or 'not installed'}")
    print(f"device     {plat.describe()}")
    print(f"family     {plat.family if plat.family is not None else '-'}")
    libs = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in plat.libraries.items())
    print(f"libraries  {libs}")
    version = f" {dg_info['version']}" if dg_info["version"] else ""
    print(f"deep_gemm  {'usable' if dg_ok else 'not usable'}{version}: {dg_why}")
    return 0
