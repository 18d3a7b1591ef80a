//! `kubectl-lock`: the kubectl plugin (`kubectl lock …`), built beside `lockkeeper` so that
//! `PATH=$PWD/target/debug:$PATH kubectl lock list` works from a checkout.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    lockkeeper::plugin::main().await
}
