//! The `secateur` command line.

use clap::Parser;

/// Freed tensor memory stays in the process for the next step (see `alloc_cache`).
#[global_allocator]
static ALLOC: secateur_kernels::alloc_cache::CachingAllocator = secateur_kernels::alloc_cache::CachingAllocator::new();

fn main() {
    ALLOC.set_limit(secateur_kernels::alloc_cache::default_limit());
    secateur_kernels::runtime::tune_allocator();
    let cli = secateur_experiments::cli::Cli::parse();
    // candle reads its thread count and double backpropagation from the environment: when they
    // are not set yet, run again with them (no running process changes its environment).
    match secateur_kernels::runtime::rerun_with_start_env(cli.needs_double_backprop()) {
        Ok(None) => {}
        Ok(Some(code)) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: cannot start secateur again with its environment: {e}");
            std::process::exit(1);
        }
    }
    // Commands run as a worker of a rayon pool, so that each parallel kernel is a fork–join
    // rather than a wake-up of another thread and a sleep of this one (runtime::in_pool).
    let result = secateur_kernels::runtime::in_pool(|| secateur_experiments::cli::run(cli));
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
