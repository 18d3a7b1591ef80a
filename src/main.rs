use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    lockkeeper::cli::main().await
}
