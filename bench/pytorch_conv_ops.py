"""PyTorch's side of `kernels/examples/conv_timing.rs`: per-op convolution timings (batch 128, f32).

    bench/.venv/bin/python bench/pytorch_conv_ops.py [--threads 2] [--reps 10]

For each shape of the Rust example: the forward convolution, the input gradient and the weight
gradient, each as the ATen call that PyTorch's autograd makes in training
(`aten.convolution_backward` with one output requested), mean ms over `--reps` calls after one
untimed call, as the Rust example reports them. Same shapes, same order, same output format.
"""

import argparse
import time

import torch

# (input channels, plane side, output channels, kernel side, padding, stride)
SHAPES = [
    (1, 28, 6, 5, 2, 1),
    (6, 14, 16, 5, 0, 1),
    (16, 32, 16, 3, 1, 1),
    (32, 16, 32, 3, 1, 1),
    (64, 8, 64, 3, 1, 1),
    (16, 32, 32, 3, 1, 2),
    (32, 16, 64, 3, 1, 2),
    (64, 7, 64, 3, 1, 1),
    (64, 14, 128, 3, 1, 1),
    (128, 7, 256, 3, 1, 1),
    (256, 7, 256, 3, 1, 1),
    (256, 3, 512, 3, 1, 1),
    (512, 3, 512, 3, 1, 1),
    (512, 1, 512, 3, 1, 1),
]


def timed(name, f, reps):
    f()
    t = time.perf_counter()
    for _ in range(reps):
        f()
    print(f"{name:40} {(time.perf_counter() - t) * 1e3 / reps:8.3f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for c, hw, o, k, pad, s in SHAPES:
        x = torch.randn(a.batch, c, hw, hw)
        w = torch.randn(o, c, k, k) * 0.1
        with torch.no_grad():
            y = torch.nn.functional.conv2d(x, w, stride=s, padding=pad)
        g = torch.randn_like(y)
        stride = "" if s == 1 else f" s{s}"
        print(f"-- {c}x{hw}x{hw} -> {o} k{k} p{pad}{stride}")

        def bwd(mask):
            return torch.ops.aten.convolution_backward(
                g, x, w, None, [s, s], [pad, pad], [1, 1], False, [0, 0], 1, mask
            )

        with torch.no_grad():
            timed("fwd", lambda: torch.nn.functional.conv2d(x, w, stride=s, padding=pad), a.reps)
            timed("input grad", lambda: bwd([True, False, False]), a.reps)
            timed("weight grad", lambda: bwd([False, True, False]), a.reps)


if __name__ == "__main__":
    main()
