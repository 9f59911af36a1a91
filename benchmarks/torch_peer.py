"""One PyTorch peer case in its own process (run with benchmarks/.venv-torch/bin/python).

    benchmarks/.venv-torch/bin/python benchmarks/torch_peer.py --model pose_w32 --attention psa_p \
        --batch 8 --input 256x192 [--steps 5] [--warmup 2] [--mode both|train|infer] [--out result.json]

The peer is an implementation written elsewhere: timm's `hrnet_w32` / `hrnet_w48`
(`timm/models/hrnet.py`, features of the highest-resolution stage-4 branch, `out_indices=(1,)`)
with a 1x1 conv (+bias) to 17 heatmaps, as the pose HRNet's `final_layer`. With `--attention
psa_p|psa_s` the official PSA (`DeLightCMU/PSA: semantic-segmentation/network/PSA.py`, re-created
in `psa_jax/torch_reference/psa.py` and checked there against NumPy) is inserted after
conv1-BN-ReLU of every stage 2-4 BasicBlock, through the block's `aa` slot, which timm's
`BasicBlock.forward` applies right after `act1` (104 blocks in W32).

`--model seg_w48_ocr`: HRNetV2-W48-OCR (HRNet-Seg `seg_hrnet_ocr.py`) as re-created in
`psa_jax/torch_reference/hrnet_seg.py` (`HRNetOCRSeg`, the module structure the parity tests check
ours against; no independent PyTorch implementation of it is installable here), pixel
cross-entropy on the OCR logits at 1/4 resolution, as `jax_peer.py`.

Note: timm's last stage-4 module fuses into all four branches (classification needs them); the
pose HRNet fuses into branch 0 only. The peer therefore does a little more work than ours (its
extra fuse convolutions are counted in `executed_gmacs` of the JSON).

Train step: `model.train()`, MSE to zero heatmaps, `torch.optim.Adam(lr=1e-3)`, `zero_grad` /
`backward` / `step`. Inference: `model.eval()` under `torch.inference_mode()`. Default NCHW
memory format and thread count (as a user would run it). Timing and RSS as in `jax_peer.py`.

On a GPU (`--device cuda`, the default where one is visible) the peer runs as a performance-minded
PyTorch user would: bf16 autocast (`--amp`, the counterpart of the JAX peer's bf16 compute with fp32
parameters), channels_last tensors and `cudnn.benchmark`; every timed call ends in
`torch.cuda.synchronize()`, and `peak_device_mb` is `torch.cuda.max_memory_allocated()` of the
train phase.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from peer_io import emit, peak_rss_mb  # noqa: E402  (benchmarks/, this script's folder)


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="pose_w32", help="pose_w32 | pose_w48")
    p.add_argument("--attention", default="none", choices=("none", "psa_p", "psa_s"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input", default="256x192")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--infer_steps", type=int, default=None)
    p.add_argument("--mode", default="both", choices=("both", "train", "infer"))
    p.add_argument("--flops", action="store_true", help="count conv/linear MACs per image with forward hooks")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: cuda when visible")
    p.add_argument("--amp", default="auto", choices=("auto", "none", "bfloat16"),
                   help="autocast dtype (auto: bfloat16 on cuda, none on cpu)")
    p.add_argument("--out", default=None)
    return p.parse_args(argv)


def build_peer(width: int, attention: str, num_keypoints: int = 17):
    """timm HRNet-W{width} trunk (+ official PSA in stage 2-4 BasicBlocks) + 1x1 heatmap head."""
    import timm
    import torch
    from timm.models.resnet import BasicBlock
    from torch import nn

    trunk = timm.create_model(f"hrnet_w{width}", pretrained=False, features_only=True, feature_location="",
                              out_indices=(1,))
    inserted = 0
    if attention != "none":
        from psa_jax.torch_reference.psa import make_psa
        for stage in (trunk.stage2, trunk.stage3, trunk.stage4):
            for module in stage.modules():
                if isinstance(module, BasicBlock):
                    planes = module.conv1.out_channels
                    module.aa = make_psa(attention, planes)
                    inserted += 1

    class Peer(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = trunk
            self.final_layer = nn.Conv2d(width, num_keypoints, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.final_layer(self.trunk(x)[0])

    return Peer(), inserted


def count_macs(model, x) -> int:
    """Conv and linear multiply-adds of one forward pass (hooks; matmuls inside PSA included)."""
    import torch
    from torch import nn
    total = [0]

    def conv_hook(m, inputs, out):
        total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    handles = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    orig = torch.matmul

    def matmul(a, b):
        out = orig(a, b)
        total[0] += out.numel() * a.shape[-1]
        return out

    torch.matmul = matmul
    try:
        with torch.inference_mode():
            model.eval()(x)
    finally:
        torch.matmul = orig
        for h in handles:
            h.remove()
    return total[0]


def main(argv=None) -> dict:
    args = _parse(argv)
    import torch
    import timm

    kind, _, width = args.model.partition("_")
    if args.model not in ("pose_w32", "pose_w48", "seg_w48_ocr"):
        raise SystemExit(f"the PyTorch peer covers pose_w32, pose_w48 and seg_w48_ocr, not {args.model!r}")
    h, w = (int(v) for v in args.input.lower().split("x"))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device == "cuda"
    amp = ("bfloat16" if cuda else "none") if args.amp == "auto" else args.amp
    torch.manual_seed(0)
    if kind == "pose":
        model, inserted = build_peer(int(width[1:]), args.attention)
        target = torch.zeros(args.batch, 17, h // 4, w // 4)
    else:
        from psa_jax.torch_reference.hrnet_seg import HRNetOCRSeg
        model = HRNetOCRSeg(num_classes=19, width=48, attention=None if args.attention == "none" else args.attention)
        inserted = 0 if args.attention == "none" else sum(1 for m in model.modules() if type(m).__name__.startswith("PSA"))
        target = torch.randint(0, 19, (args.batch, -(-h // 4), -(-w // 4)))
    images = torch.randn(args.batch, 3, h, w)
    if cuda:
        torch.backends.cudnn.benchmark = True
        model = model.to(device, memory_format=torch.channels_last)
        images = images.to(device).contiguous(memory_format=torch.channels_last)
        target = target.to(device)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def autocast():
        return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp == "bfloat16")

    result: dict = {"framework": "pytorch", "model": args.model, "attention": args.attention, "batch": args.batch,
                    "input": f"{h}x{w}", "dtype": "float32" if amp == "none" else f"{amp} autocast",
                    "torch": torch.__version__, "timm": timm.__version__, "device": device,
                    "threads": torch.get_num_threads(), "psa_blocks": inserted,
                    "params": sum(p.numel() for p in model.parameters())}
    if cuda:
        result["device_name"] = torch.cuda.get_device_name()
        result["memory_format"] = "channels_last"

    if args.mode in ("both", "train"):
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        times, cpu = [], []
        for i in range(args.warmup + args.steps):
            t, c = time.perf_counter(), time.process_time()
            opt.zero_grad(set_to_none=True)
            with autocast():
                out = model(images)
            if kind == "pose":
                loss = torch.mean((out.float() - target) ** 2)
            else:  # [aux, cls] logits; the loss on the OCR (cls) logits, as jax_peer.py
                loss = torch.nn.functional.cross_entropy(out[1].float(), target)
            loss.backward()
            opt.step()
            loss_value = loss.detach().item()  # copies to the host: waits for the step
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
        if loss_value != loss_value:
            raise SystemExit("train step produced NaN")
        result.update(train_step_s=statistics.median(times), train_img_s=args.batch / statistics.median(times),
                      train_step_times=times, train_cpu_s=statistics.median(cpu), peak_rss_mb=peak_rss_mb())
        if cuda:
            result["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2 ** 20
        del opt

    if args.mode in ("both", "infer"):
        model.eval()
        times, cpu = [], []
        with torch.inference_mode(), autocast():
            for i in range(args.warmup + (args.infer_steps or args.steps)):
                t, c = time.perf_counter(), time.process_time()
                model(images)
                sync()
                if i >= args.warmup:
                    times.append(time.perf_counter() - t)
                    cpu.append(time.process_time() - c)
        result.update(infer_img_s=args.batch / statistics.median(times), infer_step_times=times,
                      infer_cpu_s=statistics.median(cpu))
        result.setdefault("peak_rss_mb", peak_rss_mb())
    result["peak_rss_total_mb"] = peak_rss_mb()
    if args.flops:
        result["executed_gmacs"] = count_macs(model, images[:1].float()) / 1e9
    return emit(result, args.out)


if __name__ == "__main__":
    main()
