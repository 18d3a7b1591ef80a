//! Runs the sandbox's ZooKeeper in the foreground: `zookeeper-sandbox DIR PORT` writes
//! DIR/zoo.cfg and becomes the server process (so a signal to this pid stops ZooKeeper).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use lockkeeper_testkit::ServerOptions;
use lockkeeper_testkit::zookeeper_server::{server_command, write_config};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(port)) = (args.next(), args.next().and_then(|p| p.parse::<u16>().ok()))
    else {
        eprintln!("usage: zookeeper-sandbox DIR PORT");
        std::process::exit(2);
    };
    let dir = PathBuf::from(dir);
    let result =
        write_config(&dir, port, &ServerOptions::default()).and_then(|()| server_command(&dir));
    match result {
        Ok(mut command) => {
            let err = command.exec();
            eprintln!("zookeeper-sandbox: cannot start java: {err}");
        }
        Err(err) => eprintln!("zookeeper-sandbox: {err}"),
    }
    std::process::exit(1);
}
