//! The workspace's patched candle backward pass (`third_party/candle-core/PATCHES.md`): a tensor's
//! first gradient contribution is stored as it is instead of being added to a tensor of zeros.
//! Each test computes gradients whose closed form is known, through the paths the patch changes
//! (one use, several uses, a residual sum) and the ones it leaves to upstream's `zeros + g`
//! (narrowed and broadcast views, transposes, a variable handed back as a gradient), and checks
//! the values and that every stored gradient is contiguous from the start of a storage of exactly
//! its size, the layout upstream gives. The second-order test runs in a child process with double
//! backpropagation on.

use candle_core::{CpuStorage, Device, Result, Storage, Tensor, Var};

fn t2(rows: usize, cols: usize, f: impl Fn(usize) -> f64) -> Tensor {
    let v: Vec<f64> = (0..rows * cols).map(f).collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

/// Values of `got` and `want` equal to `tol`, and `got` laid out as upstream lays out gradients.
fn check(got: &Tensor, want: &Tensor, tol: f64, what: &str) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let g = got.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let w = want.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}[{i}]: {a} against {b}");
    }
    let (storage, layout) = got.storage_and_layout();
    assert!(
        layout.is_contiguous() && layout.start_offset() == 0,
        "{what}: layout {layout:?}"
    );
    let len = match &*storage {
        Storage::Cpu(CpuStorage::F64(v)) => v.len(),
        _ => panic!("{what}: f64 CPU storage expected"),
    };
    assert_eq!(
        len,
        got.elem_count(),
        "{what}: storage of {len} for {} elements",
        got.elem_count()
    );
}

fn grad_of(loss: &Tensor, x: &Var) -> Tensor {
    loss.backward().unwrap().get(x.as_tensor()).expect("a gradient").clone()
}

#[test]
fn one_use_and_several_uses() -> Result<()> {
    let x = Var::from_tensor(&t2(3, 4, |i| 0.3 * i as f64 - 1.1))?;
    let c = t2(3, 4, |i| (i as f64).sin());
    // one use: ∂/∂x Σ x ⊙ c = c
    check(&grad_of(&(x.as_tensor() * &c)?.sum_all()?, &x), &c, 1e-15, "one use");
    // three uses, one of them a residual sum: Σ (x ⊙ x + 3x + (x + c) ⊙ c) → 2x + 3 + c
    let y = ((x.as_tensor() * x.as_tensor())? + (x.as_tensor() * 3.0)?)?;
    let y = (y + ((x.as_tensor() + &c)? * &c)?)?;
    let want = ((x.as_tensor() * 2.0)? + 3.0)?.add(&c)?;
    check(&grad_of(&y.sum_all()?, &x), &want, 1e-14, "several uses");
    Ok(())
}

#[test]
fn views_take_upstream_path() -> Result<()> {
    let a = Var::from_tensor(&t2(2, 3, |i| i as f64))?;
    let b = Var::from_tensor(&t2(4, 3, |i| 1.0 - i as f64))?;
    let w = t2(6, 3, |i| 0.5 + (i as f64).cos());
    // cat along rows: ∂/∂a = w[..2] and ∂/∂b = w[2..], narrowed views of the incoming gradient
    let z = Tensor::cat(&[a.as_tensor(), b.as_tensor()], 0)?;
    let g = (z * &w)?.sum_all()?.backward()?;
    check(
        g.get(a.as_tensor()).unwrap(),
        &w.narrow(0, 0, 2)?,
        0.0,
        "cat, first part",
    );
    check(
        g.get(b.as_tensor()).unwrap(),
        &w.narrow(0, 2, 4)?,
        0.0,
        "cat, second part",
    );

    // a transpose: ∂/∂x Σ xᵀ ⊙ v = vᵀ, a transposed view of v
    let x = Var::from_tensor(&t2(3, 5, |i| 0.1 * i as f64))?;
    let v = t2(5, 3, |i| (i as f64) * 0.25 - 2.0);
    check(
        &grad_of(&(x.as_tensor().t()? * &v)?.sum_all()?, &x),
        &v.t()?.contiguous()?,
        0.0,
        "transpose",
    );

    // a broadcast: ∂/∂r Σ (r ⊕ m) ⊙ m over a row r broadcast to 4 rows = column sums of m
    let r = Var::from_tensor(&t2(1, 3, |i| i as f64))?;
    let m = t2(4, 3, |i| (i as f64).sqrt());
    let loss = (r.as_tensor().broadcast_add(&m)? * &m)?.sum_all()?;
    check(&grad_of(&loss, &r), &m.sum_keepdim(0)?, 1e-14, "broadcast");
    // the same row reached once through a reshape (a contiguous view of its own storage)
    let loss = (r.as_tensor().reshape(3)? * m.get(0)?)?.sum_all()?;
    check(&grad_of(&loss, &r), &m.get(0)?.reshape((1, 3))?, 0.0, "reshape");
    Ok(())
}

/// A residual block `y = x + w ⊙ x ⊙ x`, `f = Σ y²`: gradient and Hessian-vector product in
/// closed form, the latter by double backpropagation through the patched accumulation.
#[test]
fn residual_second_order() -> Result<()> {
    if !secateur_kernels::double_backprop::run_test_in_child(concat!(module_path!(), "::residual_second_order")) {
        return Ok(());
    }
    let x0 = t2(2, 3, |i| 0.2 * i as f64 - 0.4);
    let w = t2(2, 3, |i| 0.7 - 0.1 * i as f64);
    let v = t2(2, 3, |i| if i % 2 == 0 { 1.0 } else { -1.0 });
    let x = Var::from_tensor(&x0)?;
    let y = (x.as_tensor() + (&w * x.as_tensor())?.mul(x.as_tensor())?)?;
    let g = y.sqr()?.sum_all()?.backward()?;
    let gx = g.get(x.as_tensor()).unwrap().clone();
    // f' = 2y (1 + 2wx); f'' (diagonal) = 2 (1 + 2wx)² + 4 y w
    let y0 = (&x0 + (&w * &x0)?.mul(&x0)?)?;
    let dy = ((&w * &x0)? * 2.0)?.affine(1.0, 1.0)?;
    check(&gx, &((&y0 * &dy)? * 2.0)?, 1e-13, "gradient");
    let h = (&gx * &v)?.sum_all()?.backward()?;
    let hv = h.get(x.as_tensor()).unwrap();
    let diag = ((dy.sqr()? * 2.0)? + ((&y0 * &w)? * 4.0)?)?;
    check(hv, &(diag * &v)?, 1e-13, "Hessian-vector product");
    Ok(())
}

/// A first contribution that is itself a variable (a custom op may return one of its inputs as a
/// gradient) is copied, not stored: an optimiser that updates the variable in place must not
/// change the stored gradient.
#[test]
fn a_variable_is_not_stored_as_a_gradient() -> Result<()> {
    let w = Var::from_tensor(&t2(2, 2, |i| 1.0 + i as f64))?;
    let x = Var::from_tensor(&t2(2, 2, |i| -(i as f64)))?;
    // `PassW` computes x ⊙ w and hands back `w` itself as x's gradient (right for a summed output)
    let y = x.as_tensor().apply_op2(w.as_tensor(), PassW)?;
    let g = y.sum_all()?.backward()?;
    let gx = g.get(x.as_tensor()).unwrap().clone();
    check(&gx, w.as_tensor(), 0.0, "gradient equal to w");
    w.set(&t2(2, 2, |_| 0.0))?;
    check(
        &gx,
        &t2(2, 2, |i| 1.0 + i as f64),
        0.0,
        "gradient after w changed in place",
    );
    Ok(())
}

/// `x ⊙ w` (f64, contiguous) whose backward returns the variable `w` itself as the gradient of `x`.
struct PassW;

impl candle_core::CustomOp2 for PassW {
    fn name(&self) -> &'static str {
        "pass-w"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &candle_core::Layout,
        s2: &CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(CpuStorage, candle_core::Shape)> {
        let (a, b) = (s1.as_slice::<f64>()?, s2.as_slice::<f64>()?);
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("pass-w: contiguous inputs only")
        };
        let out: Vec<f64> = a[a0..a1].iter().zip(&b[b0..b1]).map(|(x, w)| x * w).collect();
        Ok((CpuStorage::F64(out), l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, w: &Tensor, _res: &Tensor, _grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(w.clone()), None))
    }
}
