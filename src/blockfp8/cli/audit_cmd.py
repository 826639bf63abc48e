"""Measure what UE8M0 (power-of-two) block scales cost compared with float32 scales, layer by layer, and give a
verdict (safe / unsafe for UE8M0) backed by the numbers. Three levels, each usable alone:

  blockfp8 audit PATH                         checkpoint: requantizing an FP8 checkpoint's scales to UE8M0
                                              (a bf16 checkpoint is quantized both ways); streams tensor by tensor
  blockfp8 audit --model M --weights-only     weights of a transformers model quantized both ways
  blockfp8 audit --model M --calib N [--e2e]  calibrated: each linear layer's GEMM output SNR on N windows of real
                                              text; --e2e adds KL / top-1 / perplexity on held-out text with
                                              bootstrap intervals

`torchrun --nproc-per-node N -m blockfp8 audit PATH` splits a checkpoint's tensors across ranks and writes one
report. The calibrated and end-to-end levels simulate FP8 GEMMs with blockfp8.quant.reference (the numerics our
kernels are tested against). Exit 0 (1 with --strict when the verdict is unsafe; 1 on a bad checkpoint; 2 usage).
"""

from __future__ import annotations

import argparse
import sys


def _block(text: str) -> tuple[int, int]:
    try:
        bn, bk = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--block {text!r}: expected two integers like 128,128") from None
    if bn <= 0 or bk <= 0:
        raise argparse.ArgumentTypeError(f"--block {text!r}: block sizes must be positive")
    return bn, bk


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be positive")
    return v


THRESHOLD_FLAGS = {
    "layer_bits_lost": "a layer is unsafe above this many bits lost",
    "mean_bits_lost": "the model is unsafe above this mean bits lost per layer",
    "unsafe_layer_share": "the model is unsafe when more than this share of layers is unsafe",
    "ppl_increase": "the model is unsafe when UE8M0 raises perplexity over float32 scales by more (relative)",
    "kl_increase": "the model is unsafe when UE8M0 raises the KL to the unquantized model by more (relative)",
}


def add_threshold_arguments(p: argparse.ArgumentParser) -> None:
    from_defaults = {"layer_bits_lost": 0.25, "mean_bits_lost": 0.10, "unsafe_layer_share": 0.10,
                     "ppl_increase": 0.01, "kl_increase": 0.25}  # == audit.verdict.Thresholds() (a test keeps them so)
    g = p.add_argument_group("thresholds (defaults from our measurements: docs/audit.md)")
    for name, text in THRESHOLD_FLAGS.items():
        g.add_argument(f"--{name.replace('_', '-')}", type=float, default=None, metavar="X",
                       help=f"{text} (default {from_defaults[name]:g})")


def thresholds_from_args(args: argparse.Namespace):
    from blockfp8.audit.verdict import Thresholds

    given = {k: getattr(args, k) for k in THRESHOLD_FLAGS if getattr(args, k, None) is not None}
    return Thresholds(**given)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seq-len", type=_positive, default=128, metavar="L", help="tokens per text window (default 128)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="model dtype: auto = bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--batch-tokens", type=_positive, default=2048, metavar="T",
                   help="tokens per forward pass (default 2048)")
    p.add_argument("--bootstrap", type=_positive, default=2000, metavar="B", help="bootstrap resamples (default 2000)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("path", nargs="?", help="checkpoint: a safetensors file or a model folder (FP8 or bf16)")
    what.add_argument("--model", help="embedded model name (smollm2) or a transformers model folder")
    p.add_argument("--weights-only", action="store_true", help="with --model: audit the weights alone")
    p.add_argument("--calib", type=_positive, metavar="N", help="with --model: N calibration windows (default 16)")
    p.add_argument("--e2e", action="store_true", help="with --calib: also compare end to end on held-out text")
    p.add_argument("--eval", type=_positive, default=None, metavar="N",
                   help="held-out windows for --e2e (default 2x --calib)")
    add_model_arguments(p)
    p.add_argument("--block", type=_block, default=None, metavar="BN,BK",
                   help="weight block size (default: the checkpoint's, else 128,128)")
    p.add_argument("--measure-read", action="store_true",
                   help="checkpoint: also time merely reading the same tensors and report the rate ratio")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--report", metavar="DIR", help="write report.json, report.md and PNG plots into DIR")
    p.add_argument("--top", type=int, default=0, metavar="N", help="print only the N layers that lose most")
    p.add_argument("--emit", choices=("vllm", "sglang"), help="print the serving settings that follow the verdict")
    p.add_argument("--strict", action="store_true", help="exit 1 when the verdict is unsafe")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threshold_arguments(p)


def resolve_device(text: str) -> str:
    import torch

    from blockfp8.cli.args import UsageError

    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {text}: no CUDA GPU is available")
    if text != "cpu" and not text.startswith("cuda"):
        raise UsageError(f"--device {text!r}: expected auto, cpu, cuda or cuda:N")
    return text


def load_model(name: str, device: str, dtype: str):
    import torch

    from blockfp8.models import load_causal_lm

    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return load_causal_lm(name, dtype=getattr(torch, dtype), device=device)


def print_report(report: dict, top: int = 0) -> None:
    from blockfp8.audit import report as rep

    rows = report["layers"]
    shown = sorted(rows, key=lambda r: -r["bits_lost"])[:top] if top else rows
    level = report["level"]
    headers = ["layer", "bits_fp32", "bits_ue8m0", "bits_lost", "verdict"]
    keys = {
        "checkpoint": ["rel_err_ue8m0", "scale_inflation_mean", "pow2_block_share"],
        "weights": ["rel_err_fp32", "rel_err_ue8m0", "scale_inflation_mean", "scale_inflation_max"],
    }.get(level, ["act_bits_lost", "weight_bits_lost", "act_crest", "act_outlier_channels", "act_group_dominance"])
    table = [[r["name"], r["bits_fp32"], r["bits_ue8m0"], r["bits_lost"], r["verdict"], *(r[k] for k in keys)]
             for r in shown]
    print(f"{level} audit of {report['model']}: block {report['block_size']}, {len(rows)} layers")
    print(rep.format_table(headers + keys, table))
    s = report["summary"]
    print(f"\nsummary: mean bits float32 {s['mean_bits_fp32']:.3f}, UE8M0 {s['mean_bits_ue8m0']:.3f}; bits lost mean "
          f"{s['mean_bits_lost']:.3f}, max {s['max_bits_lost']:.3f} ({s['worst_layer']}); {s['unsafe_layers']} of "
          f"{s['layers']} layers unsafe")
    e2e = report.get("e2e")
    if e2e:
        print(f"end to end ({e2e['windows']} x {e2e['seq_len']} held-out tokens, 95% bootstrap intervals):")
        b = e2e["base"]
        print(f"  unquantized        perplexity {b['ppl_base']:.3f}")
        for v, label in (("fp32", "FP8 float32 scales"), ("ue8m0", "FP8 UE8M0 scales ")):
            d = e2e[v]
            print(f"  {label} perplexity {d[f'ppl_{v}']:.3f}  KL {d[f'kl_{v}']:.4f} "
                  f"[{d[f'kl_{v}_ci'][0]:.4f}, {d[f'kl_{v}_ci'][1]:.4f}]  top-1 {d[f'top1_{v}']:.4f}")
        d = e2e["ue8m0_vs_fp32"]
        print(f"  UE8M0 vs float32: perplexity {100 * d['ppl_increase']:+.2f}% [{100 * d['ppl_increase_ci'][0]:+.2f}, "
              f"{100 * d['ppl_increase_ci'][1]:+.2f}], KL {100 * d['kl_increase']:+.1f}% "
              f"[{100 * d['kl_increase_ci'][0]:+.1f}, {100 * d['kl_increase_ci'][1]:+.1f}]")
    speed = report.get("run", {}).get("speed")
    if speed:
        print(f"speed: read {speed['read_gb_per_s']:.2f} GB/s, audit {speed['audit_gb_per_s']:.2f} GB/s: the audit "
              f"runs at {speed['audit_over_read_rate']:.2f}x the rate of merely reading "
              f"({speed['bytes'] / 1e6:.1f} MB)")
    print("\n".join(rep.verdict_lines(report)))


def write_outputs(report: dict, args: argparse.Namespace) -> None:
    from blockfp8.audit import report as rep

    if args.json:
        print(f"wrote {rep.write_json_atomic(args.json, report)}")
    if args.report:
        for path in rep.write_report_folder(report, args.report):
            print(f"wrote {path}")


def run(args: argparse.Namespace) -> int:
    from blockfp8.audit import distributed, emit
    from blockfp8.audit import run as levels
    from blockfp8.audit.verdict import VerdictError
    from blockfp8.cli.args import UsageError
    from blockfp8.formats.errors import CheckpointError
    from blockfp8.models import ModelError

    if bool(args.path) == bool(args.model):
        raise UsageError("give either a checkpoint PATH or --model NAME_OR_PATH")
    if args.path and (args.weights_only or args.calib or args.e2e):
        raise UsageError("--weights-only, --calib and --e2e go with --model, not with a checkpoint PATH")
    if args.weights_only and (args.calib or args.e2e):
        raise UsageError("--weights-only excludes --calib and --e2e")
    if args.e2e and not args.calib:
        args.calib = 16
    try:
        thresholds = thresholds_from_args(args)
    except VerdictError as exc:
        raise UsageError(str(exc)) from None
    device = resolve_device(args.device)
    progress = not args.no_progress and sys.stderr.isatty()
    command = "blockfp8 audit " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["audit"] else None
    dist = None
    try:
        if args.path:
            dist = distributed.init(device)
            report = levels.audit_checkpoint(
                args.path, block=args.block, thresholds=thresholds, device=device, measure_read=args.measure_read,
                progress=progress and (dist is None or dist.is_main), dist=dist)
            if report is None:  # a rank other than 0: rank 0 writes the report
                return 0
        else:
            model, tokenizer = load_model(args.model, device, args.dtype)
            block = args.block or (128, 128)
            if args.weights_only:
                report = levels.audit_model_weights(model, args.model, block=block, thresholds=thresholds,
                                                    device=device, progress=progress)
            else:
                calib = args.calib or 16
                report = levels.audit_model(
                    model, tokenizer, args.model, calib=calib, seq_len=args.seq_len,
                    eval_windows=(args.eval or 2 * calib) if args.e2e else 0, block=block, thresholds=thresholds,
                    device=device, batch_tokens=args.batch_tokens, n_boot=args.bootstrap, progress=progress)
    except ModelError as exc:  # the model cannot be found or loaded: a usage problem
        print(f"blockfp8 audit: error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, ValueError) as exc:  # a bad checkpoint, bad data, a non-finite result
        print(f"blockfp8 audit: error: {exc}", file=sys.stderr)
        return 1
    finally:
        distributed.finish(dist)
    if command:
        report["run"]["command"] = command
    print_report(report, args.top)
    write_outputs(report, args)
    if args.emit:
        print(emit.emit(args.emit, report))
    return 1 if args.strict and report["summary"]["verdict"] == "unsafe" else 0
