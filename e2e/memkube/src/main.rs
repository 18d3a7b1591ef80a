//! `memkube --listen 127.0.0.1:PORT --kubeconfig FILE`: serve until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "memkube",
    about = "An in-memory Kubernetes API server for tests and the sandbox (never for production)"
)]
struct Args {
    /// Address to listen on; port 0 picks a free one. Loopback only.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where to write a kubeconfig for this server.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "memkube: refusing to listen on {}: it serves loopback only",
            args.listen
        );
        return std::process::ExitCode::from(2);
    }
    let server = match memkube::MemKube::start_on(args.listen).await {
        Ok(server) => server,
        Err(err) => {
            eprintln!("memkube: cannot listen on {}: {err}", args.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Some(path) = &args.kubeconfig
        && let Err(err) = server.write_kubeconfig(path)
    {
        eprintln!("memkube: cannot write {}: {err}", path.display());
        return std::process::ExitCode::FAILURE;
    }
    println!("memkube listening on {}", server.url());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    server.stop().await;
    std::process::ExitCode::SUCCESS
}
