//! Double backpropagation in candle, decided once per process.
//!
//! `H v = ∇_θ (∇_θ L · v)` (Pearlmutter 1994) needs the first gradient to keep its graph.
//! candle 0.11 detaches the gradient flowing into every node unless the environment variable
//! [`ENV_VAR`]` = 1` is set when a thread runs its **first** backward pass (it is read once per
//! thread into a thread-local). secateur never changes the environment while a program runs
//! (changing it while other threads may read it is unsound, and a variable switched on and off
//! around one computation races with other threads' first backward passes). Instead:
//!
//! - a program that needs Hessian–vector products starts with the variable set: in the shell
//!   (`CANDLE_GRAD_DO_NOT_DETACH=1 my-program`), or by running itself again with it
//!   ([`crate::runtime::rerun_with_start_env`]: the `secateur` binary does this for the commands that need
//!   it), so that no environment is ever changed in a running process;
//! - every second-order function checks with [`require`] and refuses, naming the variable,
//!   instead of silently returning a wrong Hessian;
//! - a test that needs it runs itself in a child process of its test binary whose environment
//!   has the variable from the start ([`run_test_in_child`]), so that the test harness's
//!   process is never changed and the other tests keep candle's first-order backward.
//!
//! The setting changes no value: gradients are the same with and without it; only the memory
//! a backward pass holds differs (with it, every intermediate gradient stays alive with the
//! graph until the gradients are dropped).

use candle_core::{Device, Result, Var};

/// The variable candle reads: `CANDLE_GRAD_DO_NOT_DETACH`.
pub const ENV_VAR: &str = "CANDLE_GRAD_DO_NOT_DETACH";

/// Whether this process was started with [`ENV_VAR`] set to a value candle reads as on
/// (non-empty and not `0`).
pub fn requested() -> bool {
    std::env::var(ENV_VAR).is_ok_and(|s| !s.is_empty() && s != "0")
}

/// Whether this thread's backward passes keep the graph of the gradients, probed with
/// `f = (x²)²`, `f'' = 12x² = 27` at `x = 1.5`. (A detached run gives `4x² = 9`: candle detaches
/// only the gradient flowing into each node, so products with the node's inputs still carry
/// part of the graph and a wrong second derivative comes out instead of none.) The probe is
/// itself a backward pass: on a thread that has run none, it fixes the thread's setting from
/// the environment, which secateur never changes after start-up.
pub fn enabled() -> bool {
    let probe = || -> Result<bool> {
        let x = Var::new(&[1.5f64], &Device::Cpu)?;
        let g = x.as_tensor().sqr()?.sqr()?.sum_all()?.backward()?;
        let Some(gx) = g.get(x.as_tensor()) else {
            return Ok(false);
        };
        let h = gx.sum_all()?.backward()?;
        Ok(match h.get(x.as_tensor()) {
            Some(t) => (t.to_vec1::<f64>()?[0] - 27.0).abs() < 1e-9,
            None => false,
        })
    };
    probe().unwrap_or(false)
}

/// An error unless [`enabled`], naming `what` and the environment variable.
pub fn require(what: &str) -> Result<()> {
    if enabled() {
        Ok(())
    } else {
        candle_core::bail!(
            "{what} needs Hessian-vector products by double backpropagation: start the program with \
             {ENV_VAR}=1 in its environment (secateur_kernels::runtime::rerun_with_start_env \
             runs a program again with it)"
        )
    }
}

/// Runs a test with double backpropagation. If this process was started with [`ENV_VAR`] set,
/// returns `true` and the caller runs the test body here. Otherwise it runs the test named
/// `test` (its path in the test binary, e.g. `module_path!()` + `::name`; the first segment, the
/// crate, is dropped) again in a child process of the current test binary with the variable
/// set from its start, panics with the child's output unless exactly that one test passed
/// there, and returns `false` (the caller returns at once).
///
/// ```no_run
/// #[test]
/// fn hessian_vector_product() {
///     if !secateur_kernels::double_backprop::run_test_in_child(concat!(module_path!(), "::hessian_vector_product")) {
///         return;
///     }
///     // … the body, on a process whose backward passes keep their graph
/// }
/// ```
pub fn run_test_in_child(test: &str) -> bool {
    if requested() {
        return true;
    }
    let name = test.split_once("::").map_or(test, |(_, rest)| rest);
    let exe = std::env::current_exe().expect("the path of the running test binary");
    let out = std::process::Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV_VAR, "1")
        .output()
        .expect("starting the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed;"),
        "`{name}` in a child process with {ENV_VAR}=1 failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    false
}
