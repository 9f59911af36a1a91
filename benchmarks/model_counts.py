"""Parameters and GFLOPs (HRNet's convention) of the networks, and the overhead of PSA.

    python benchmarks/model_counts.py            # prints the Markdown tables the README shows

GFLOPs = convolution multiply-adds / 2^30, as `deep-high-resolution-net.pytorch:
lib/utils/utils.py::get_model_summary` counts them (attention blocks count their reference 1x1
convolutions at full resolution). `executed GMACs` are the multiply-adds psa_jax runs (all convs and
dot products in the traced program, / 1e9): PSA's pooled-vector evaluation makes PSA_p much cheaper
than its reference structure.
"""

from __future__ import annotations

import argparse

from psa_jax.models import pose_hrnet, seg_hrnet, summary

POSE_CASES = [("w32", (256, 192)), ("w32", (384, 288)), ("w48", (256, 192)), ("w48", (384, 288))]


def pose_rows():
    rows = []
    for width, hw in POSE_CASES:
        base = summary(pose_hrnet(width), hw)
        rows.append((f"pose HRNet-{width.upper()}", f"{hw[0]}x{hw[1]}", "none", base, None))
        for att in ("psa_p", "psa_s"):
            s = summary(pose_hrnet(width, attention=att), hw)
            rows.append((f"pose HRNet-{width.upper()}", f"{hw[0]}x{hw[1]}", att, s, base))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skip_seg", action="store_true", help="skip the 1024x2048 segmentation network")
    args = parser.parse_args()
    print("| model | input | attention | params | GFLOPs | + params | + GFLOPs | executed GMACs |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = pose_rows()
    if not args.skip_seg:
        seg = summary(seg_hrnet(48), (1024, 2048))
        rows.append(("seg HRNetV2-W48 (19 classes)", "1024x2048", "none", seg, None))
    for name, inp, att, s, base in rows:
        dp = f"+{(s['params'] - base['params']) / 1e6:.2f}M ({100 * (s['params'] / base['params'] - 1):.1f}%)" \
            if base else ""
        dg = f"+{s['gflops'] - base['gflops']:.2f} ({100 * (s['gflops'] / base['gflops'] - 1):.1f}%)" if base else ""
        print(f"| {name} | {inp} | {att} | {s['params']:,} | {s['gflops']:.2f} | {dp} | {dg} | "
              f"{s['executed_gmacs']:.2f} |")


if __name__ == "__main__":
    main()
