use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // Installed (or linked) as `kubectl-lock`, the binary is the kubectl plugin.
    let name = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()));
    match name.as_deref() {
        Some("kubectl-lock") => lockkeeper::plugin::main().await,
        _ => lockkeeper::cli::main().await,
    }
}
