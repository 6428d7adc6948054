//! Quick per-op timings (batch 128, f32): `cargo run --release -p secateur-kernels --example conv_timing`.
//! `CONV_TIMING_OPS_ONLY=1` times the three ops alone; `CONV_TIMING_SHAPE=256x7x7` one input shape.
use candle_core::{Device, Tensor};
use secateur_kernels::conv::{conv2d_input_grad, conv2d_weight_grad, conv2d_with, ConvParams};
use std::time::Instant;

fn time<F: FnMut()>(name: &str, mut f: F) {
    f();
    let reps = 10;
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    println!("{name:40} {:8.3} ms", t.elapsed().as_secs_f64() * 1e3 / reps as f64);
}

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    // (input channels, plane side, output channels, kernel side, padding, stride)
    for (c, hw, o, k, pad, s) in [
        (1, 28, 6, 5, 2, 1),
        (6, 14, 16, 5, 0, 1),
        (16, 32, 16, 3, 1, 1),
        (32, 16, 32, 3, 1, 1),
        (64, 8, 64, 3, 1, 1),
        // ResNet-20's first convolutions of stages 2 and 3 (stride 2)
        (16, 32, 32, 3, 1, 2),
        (32, 16, 64, 3, 1, 2),
        // ResNet-20's stage 3 on 28×28 inputs (the shipped Fashion-MNIST subset): 7×7 planes
        (64, 7, 64, 3, 1, 1),
        // VGG-11 on 28×28 inputs (models/src/arch/vgg.rs): 14, 7, 3 and 1 pixels a side
        (64, 14, 128, 3, 1, 1),
        (128, 7, 256, 3, 1, 1),
        (256, 7, 256, 3, 1, 1),
        (256, 3, 512, 3, 1, 1),
        (512, 3, 512, 3, 1, 1),
        (512, 1, 512, 3, 1, 1),
    ] {
        // CONV_TIMING_SHAPE=16x32x32 times only the shapes whose input is that
        if std::env::var("CONV_TIMING_SHAPE").is_ok_and(|v| v != format!("{c}x{hw}x{hw}")) {
            continue;
        }
        let p = ConvParams::new(s, pad, 1, 1);
        let x = Tensor::randn(0f32, 1.0, (128, c, hw, hw), &dev)?;
        let w = Tensor::randn(0f32, 0.1, (o, c, k, k), &dev)?;
        let y = conv2d_with(&x, &w, p)?;
        let stride = if s == 1 { String::new() } else { format!(" s{s}") };
        println!("-- {c}x{hw}x{hw} -> {o} k{k} p{pad}{stride}");
        time("fwd", || drop(conv2d_with(&x, &w, p).unwrap()));
        time("input grad", || drop(conv2d_input_grad(&y, &w, p, (hw, hw)).unwrap()));
        time("weight grad", || drop(conv2d_weight_grad(&x, &y, p, (k, k)).unwrap()));
        let yv = candle_core::Var::from_tensor(&y)?;
        time("loss backward only (no conv)", || {
            drop(yv.as_tensor().backward().unwrap())
        });
        let xv = candle_core::Var::from_tensor(&x)?;
        let wv = candle_core::Var::from_tensor(&w)?;
        if std::env::var("CONV_TIMING_OPS_ONLY").is_ok() {
            continue;
        }
        time("fwd+bwd secateur", || {
            let y = conv2d_with(xv.as_tensor(), wv.as_tensor(), p).unwrap();
            drop(y.backward().unwrap())
        });
        time("fwd+bwd candle", || {
            let y = xv.as_tensor().conv2d(wv.as_tensor(), pad, s, 1, 1).unwrap();
            drop(y.backward().unwrap())
        });
    }
    Ok(())
}
