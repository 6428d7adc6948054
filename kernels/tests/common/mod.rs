//! Shared helpers of the kernel tests: seeded random tensors, a naive reference convolution and
//! the list of odd convolution shapes.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use secateur_kernels::conv::ConvParams;

/// A tensor of uniform(−1, 1) entries from a seeded generator.
pub fn rand_t(shape: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    Tensor::from_vec(v, shape, &Device::Cpu)?.to_dtype(dtype)
}

/// One test case: input shape, kernel shape, parameters.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub x: [usize; 4],
    pub w: [usize; 4],
    pub p: ConvParams,
}

fn sq(s: usize, p: usize, d: usize, g: usize) -> ConvParams {
    ConvParams::new(s, p, d, g)
}

/// Odd shapes: batch 1, 1×1 and 7×7 kernels, stride 2, padding 3, dilation 2, groups 2 and
/// depthwise, non-square inputs, channel counts 1 and 3.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "b1 c1 3x3 p1 on 9x13",
            x: [1, 1, 9, 13],
            w: [2, 1, 3, 3],
            p: sq(1, 1, 1, 1),
        },
        Case {
            name: "1x1",
            x: [2, 3, 9, 13],
            w: [4, 3, 1, 1],
            p: sq(1, 0, 1, 1),
        },
        Case {
            name: "1x1 stride 2",
            x: [2, 3, 9, 13],
            w: [4, 3, 1, 1],
            p: sq(2, 0, 1, 1),
        },
        Case {
            name: "7x7 stride 2 pad 3",
            x: [2, 3, 11, 10],
            w: [2, 3, 7, 7],
            p: sq(2, 3, 1, 1),
        },
        Case {
            name: "groups 2",
            x: [3, 4, 9, 13],
            w: [6, 2, 3, 3],
            p: sq(1, 1, 1, 2),
        },
        Case {
            name: "dilation 2 pad 2",
            x: [2, 3, 13, 9],
            w: [5, 3, 3, 3],
            p: sq(1, 2, 2, 1),
        },
        Case {
            name: "depthwise stride 2",
            x: [2, 4, 10, 12],
            w: [4, 1, 3, 3],
            p: sq(2, 1, 1, 4),
        },
        Case {
            name: "5x5 pad 2 (LeNet)",
            x: [3, 2, 8, 8],
            w: [3, 2, 5, 5],
            p: sq(1, 2, 1, 1),
        },
        Case {
            name: "5x5 no pad",
            x: [2, 3, 9, 9],
            w: [4, 3, 5, 5],
            p: sq(1, 0, 1, 1),
        },
        Case {
            name: "3x5 kernel stride 2",
            x: [2, 3, 9, 13],
            w: [4, 3, 3, 5],
            p: sq(2, 1, 1, 1),
        },
        Case {
            name: "stride 3 pad 1 dil 2 groups 3",
            x: [2, 3, 14, 11],
            w: [3, 1, 3, 3],
            p: sq(3, 1, 2, 3),
        },
        // Small output planes. Up to 16 pixels with one group: one product per (output pixel,
        // tap) that reads the input (`conv_taps`), here on 4×4 and 3×3 planes and with stride
        // and dilation ...
        Case {
            name: "4x4 planes, per-tap products",
            x: [6, 3, 4, 4],
            w: [5, 3, 3, 3],
            p: sq(1, 1, 1, 1),
        },
        Case {
            name: "3x3 planes, per-tap products",
            x: [10, 4, 3, 3],
            w: [6, 4, 3, 3],
            p: sq(1, 1, 1, 1),
        },
        Case {
            name: "4x3 planes, stride 2 dilation 2, per-tap products",
            x: [3, 3, 7, 6],
            w: [4, 3, 3, 3],
            p: sq(2, 2, 2, 1),
        },
        // ... above 16 pixels the im2col path packs several samples into one product
        // (`samples_per_product`), here in blocks of 3 (25-pixel planes) ...
        Case {
            name: "5x5 planes, samples in blocks of 3",
            x: [6, 3, 5, 5],
            w: [5, 3, 3, 3],
            p: sq(1, 1, 1, 1),
        },
        // ... 1×1 planes under a padded 3×3 kernel (VGG-11's last stage on 28×28 inputs) ...
        Case {
            name: "1x1 planes, 3x3 pad 1",
            x: [3, 8, 1, 1],
            w: [4, 8, 3, 3],
            p: sq(1, 1, 1, 1),
        },
        // ... and groups, with blocks of 8 and 2 forward and chunks of 3, 3, 3, 1 for the weights
        Case {
            name: "3x3 planes, groups 2, ten samples",
            x: [10, 4, 3, 3],
            w: [6, 2, 3, 3],
            p: sq(1, 1, 1, 2),
        },
    ]
}

/// Cases with per-axis parameters (no candle reference; checked against [`naive_conv`]).
pub fn rect_cases() -> Vec<Case> {
    vec![
        Case {
            name: "rect params",
            x: [2, 2, 9, 13],
            w: [3, 2, 3, 5],
            p: ConvParams {
                stride: (1, 2),
                padding: (2, 1),
                dilation: (1, 2),
                groups: 1,
            },
        },
        Case {
            name: "rect params groups 2",
            x: [1, 4, 10, 7],
            w: [2, 2, 4, 2],
            p: ConvParams {
                stride: (2, 1),
                padding: (0, 3),
                dilation: (2, 1),
                groups: 2,
            },
        },
    ]
}

/// Direct-loop reference convolution in f64.
pub fn naive_conv(x: &Tensor, w: &Tensor, p: ConvParams) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, cg, kh, kw) = w.dims4()?;
    let xv: Vec<f64> = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let wv: Vec<f64> = w.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let oh = (h + 2 * p.padding.0 - p.dilation.0 * (kh - 1) - 1) / p.stride.0 + 1;
    let ow = (wd + 2 * p.padding.1 - p.dilation.1 * (kw - 1) - 1) / p.stride.1 + 1;
    let og = o / p.groups;
    let mut y = vec![0f64; n * o * oh * ow];
    for ni in 0..n {
        for oi in 0..o {
            let gi = oi / og;
            for i in 0..oh {
                for j in 0..ow {
                    let mut s = 0.0;
                    for ci in 0..cg {
                        let cc = gi * cg + ci;
                        for a in 0..kh {
                            for b in 0..kw {
                                let iy = (i * p.stride.0 + a * p.dilation.0) as isize - p.padding.0 as isize;
                                let ix = (j * p.stride.1 + b * p.dilation.1) as isize - p.padding.1 as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                s += wv[((oi * cg + ci) * kh + a) * kw + b]
                                    * xv[((ni * c + cc) * h + iy as usize) * wd + ix as usize];
                            }
                        }
                    }
                    y[((ni * o + oi) * oh + i) * ow + j] = s;
                }
            }
        }
    }
    let _ = c;
    Tensor::from_vec(y, (n, o, oh, ow), &Device::Cpu)
}

/// Largest absolute difference between two tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    a.to_dtype(DType::F64)?
        .sub(&b.to_dtype(DType::F64)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()
}

/// Largest absolute entry.
pub fn max_abs(a: &Tensor) -> Result<f64> {
    a.to_dtype(DType::F64)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

/// Asserts `a ≈ b` within `tol · max(1, |b|_∞)`.
pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    let d = max_abs_diff(a, b).unwrap();
    let s = max_abs(b).unwrap().max(1.0);
    assert!(d <= tol * s, "{what}: max |diff| = {d:e} (scale {s:e}, tol {tol:e})");
}

/// Sum of all elements as f64.
pub fn sum_f64(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// `⟨a, b⟩` as f64.
pub fn dot(a: &Tensor, b: &Tensor) -> f64 {
    sum_f64(&a.mul(b).unwrap())
}

/// A fresh variable holding a copy of `t`.
pub fn var(t: &Tensor) -> Var {
    Var::from_tensor(&t.copy().unwrap()).unwrap()
}
