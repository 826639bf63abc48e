"""Will this model lose accuracy if its FP8 layers run with UE8M0 scales (DeepGEMM on Blackwell)? Runs the
calibrated audit and a short end-to-end comparison on the embedded SmolLM2-135M (default) or any transformers
model folder (--model), and/or the checkpoint level on an FP8 checkpoint (--checkpoint); prints the verdict with
the numbers behind it and what blockfp8 would select on Hopper and on Blackwell; writes the report folder
(report.json, report.md, bits_lost.png, scale_inflation.png). CPU is fine: SmolLM2 takes about two minutes on
two cores. Exit 0 (1 with --strict when the verdict is unsafe; 1 on a bad checkpoint; 2 usage)."""

from __future__ import annotations

import argparse
import sys

ARCHES = (("Hopper", "sm_90"), ("Blackwell", "sm_100"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    from blockfp8.cli.audit_cmd import _positive, add_model_arguments, add_threshold_arguments

    p.add_argument("--model", default=None, help="embedded model (smollm2, the default) or a transformers folder")
    p.add_argument("--checkpoint", metavar="PATH", help="also audit this FP8 (or bf16) safetensors checkpoint")
    p.add_argument("--calib", type=_positive, default=16, metavar="N", help="calibration windows (default 16)")
    p.add_argument("--eval", type=_positive, default=32, metavar="N", help="held-out windows (default 32)")
    add_model_arguments(p)
    p.add_argument("--out", default="reports/check", metavar="DIR",
                   help="report folder (default ./reports/check; with --model too, the checkpoint's goes to "
                        "DIR/checkpoint)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a verdict is unsafe")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_threshold_arguments(p)


def selection_lines(report: dict) -> list[str]:
    """What the policy picks for this model's worst layer on a Hopper and a Blackwell plan, fed the verdict."""
    from blockfp8 import platform
    from blockfp8.audit.verdict import evidence
    from blockfp8.backends.base import GemmProblem
    from blockfp8.backends.guard import guard_verdict
    from blockfp8.backends.select import BackendUnavailableError, NoBackendError, resolve
    from blockfp8.config import AuditVerdict, BlockFP8Config

    s = report["summary"]
    worst = next(r for r in report["layers"] if r["name"] == s["worst_layer"])
    n, k = worst["shape"]
    audit = AuditVerdict(ue8m0_ok=s["verdict"] == "safe", evidence=evidence(report),
                         model_type=report.get("model_type"))
    config = BlockFP8Config(model_type=report.get("model_type"), audit=audit,
                            weight_block_size=tuple(report["block_size"]))
    lines = [f"what blockfp8 would select for {s['worst_layer']} (N={n}, K={k}) with this verdict:"]
    for label, arch in ARCHES:
        plat = platform.detect(arch=arch)
        try:
            d = resolve(GemmProblem(n, k, tuple(report["block_size"])), config, plat)
            pick = f"{d.backend} with {d.weight_scale_fmt} weight / {d.act_scale_fmt} activation scales"
        except (BackendUnavailableError, NoBackendError) as exc:
            pick = f"nothing runs here ({str(exc).splitlines()[0]})"
        g = guard_verdict(config.model_type, plat, audit)
        if g.source == "audit":
            guard = ("DeepGEMM kept off where installed (its kernel takes only UE8M0 here)" if g.blocks_deep_gemm
                     else "DeepGEMM allowed with UE8M0 scales")
        else:
            guard = g.reason
        lines.append(f"  {label:9s} {arch:7s}: {pick}; guard: {guard}")
    return lines


def _print_model_summary(report: dict) -> None:
    from blockfp8.audit import report as rep

    s = report["summary"]
    calib = report.get("calibration") or {}
    print(f"\n== {report['model']} ({report.get('model_type')}): {report['level']} audit, {s['layers']} linear layers, "
          f"{calib.get('tokens', 0)} calibration tokens ==")
    print(f"GEMM output SNR: float32 scales {s['mean_bits_fp32']:.2f} bits, UE8M0 {s['mean_bits_ue8m0']:.2f} bits "
          f"(mean over layers); lost per layer: mean {s['mean_bits_lost']:.3f}, max {s['max_bits_lost']:.3f} "
          f"({s['worst_layer']}); {s['unsafe_layers']} layers above {s['thresholds']['layer_bits_lost']:g} bit")
    top = sorted(report["layers"], key=lambda r: -r["bits_lost"])[:5]
    if top and "act_crest" in top[0]:
        print(rep.format_table(
            ["layer", "bits_lost", "act_bits_lost", "weight_bits_lost", "act_crest", "outlier_ch", "group_dom"],
            [[r["name"], r["bits_lost"], r["act_bits_lost"], r["weight_bits_lost"], r["act_crest"],
              r["act_outlier_channels"], r["act_group_dominance"]] for r in top], floatfmt=".3g"))
    e2e = report.get("e2e")
    if e2e:
        d, f, u, b = e2e["ue8m0_vs_fp32"], e2e["fp32"], e2e["ue8m0"], e2e["base"]
        print(f"end to end on {e2e['tokens']} held-out tokens (95% bootstrap intervals over {e2e['windows']} windows):")
        print(f"  perplexity: unquantized {b['ppl_base']:.3f}, FP8/float32 {f['ppl_fp32']:.3f}, FP8/UE8M0 "
              f"{u['ppl_ue8m0']:.3f}: UE8M0 {100 * d['ppl_increase']:+.2f}% [{100 * d['ppl_increase_ci'][0]:+.2f}, "
              f"{100 * d['ppl_increase_ci'][1]:+.2f}] over float32")
        print(f"  KL to unquantized: float32 {f['kl_fp32']:.4f}, UE8M0 {u['kl_ue8m0']:.4f} "
              f"({100 * d['kl_increase']:+.1f}% [{100 * d['kl_increase_ci'][0]:+.1f}, "
              f"{100 * d['kl_increase_ci'][1]:+.1f}]); top-1 agreement {f['top1_fp32']:.4f} vs {u['top1_ue8m0']:.4f}")
    print("\n".join(rep.verdict_lines(report)))


def run(args: argparse.Namespace) -> int:
    from blockfp8.audit import report as rep
    from blockfp8.audit import run as levels
    from blockfp8.audit.verdict import VerdictError
    from blockfp8.cli.args import UsageError
    from blockfp8.cli.audit_cmd import load_model, resolve_device, thresholds_from_args
    from blockfp8.formats.errors import CheckpointError
    from blockfp8.models import ModelError

    try:
        thresholds = thresholds_from_args(args)
    except VerdictError as exc:
        raise UsageError(str(exc)) from None
    device = resolve_device(args.device)
    progress = not args.no_progress and sys.stderr.isatty()
    model_name = args.model or (None if args.checkpoint else "smollm2")
    reports = []
    try:
        if args.checkpoint:
            ck = levels.audit_checkpoint(args.checkpoint, thresholds=thresholds, device=device, measure_read=True,
                                         progress=progress)
            ck["run"]["command"] = "blockfp8 check " + " ".join(sys.argv[2:])
            reports.append((ck, f"{args.out}/checkpoint" if model_name else args.out))
        if model_name:
            model, tokenizer = load_model(model_name, device, args.dtype)
            mr = levels.audit_model(model, tokenizer, model_name, calib=args.calib, seq_len=args.seq_len,
                                    eval_windows=args.eval, thresholds=thresholds, device=device,
                                    batch_tokens=args.batch_tokens, n_boot=args.bootstrap, progress=progress)
            mr["run"]["command"] = "blockfp8 check " + " ".join(sys.argv[2:])
            reports.append((mr, args.out))
    except ModelError as exc:
        print(f"blockfp8 check: error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, ValueError) as exc:
        print(f"blockfp8 check: error: {exc}", file=sys.stderr)
        return 1
    for report, folder in reports:
        if report["level"] == "checkpoint":
            s = report["summary"]
            speed = report["run"].get("speed", {})
            print(f"\n== checkpoint {report['model']}: {s['layers']} tensors ({report['checkpoint']['kind']}) ==")
            print(f"requantizing the scales to UE8M0: bits lost per tensor mean {s['mean_bits_lost']:.3f}, max "
                  f"{s['max_bits_lost']:.3f} ({s['worst_layer']}); audit at {speed.get('audit_over_read_rate', 0):.2f}x"
                  " the rate of reading the tensors")
            print("\n".join(rep.verdict_lines(report)))
        else:
            _print_model_summary(report)
        print("\n".join(selection_lines(report)))
        for path in rep.write_report_folder(report, folder):
            print(f"wrote {path}")
    unsafe = any(r["summary"]["verdict"] == "unsafe" for r, _ in reports)
    return 1 if args.strict and unsafe else 0
