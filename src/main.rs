//! The `secateur` command line.

use clap::Parser;

fn main() {
    secateur_experiments::runtime::configure_threads();
    secateur_experiments::runtime::tune_allocator();
    let cli = secateur_experiments::cli::Cli::parse();
    if let Err(e) = secateur_experiments::cli::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
