//! A loopback TCP proxy in front of ZooKeeper that can cut every open connection at once,
//! so tests can make clients lose their connection mid-request (the session survives), and
//! that can turn new connections away for a while (to keep a client off its session while a
//! test expires it from outside).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::KitError;

pub struct CuttingProxy {
    port: u16,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stopped: Arc<AtomicBool>,
    refusing: Arc<AtomicBool>,
}

impl CuttingProxy {
    /// Listens on a free loopback port and forwards every connection to 127.0.0.1:`target_port`.
    pub fn start(target_port: u16) -> Result<Self, KitError> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stopped = Arc::new(AtomicBool::new(false));
        let refusing = Arc::new(AtomicBool::new(false));
        let (accepted, stop, refuse) = (open.clone(), stopped.clone(), refusing.clone());
        thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                if refuse.load(Ordering::Relaxed) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                accepted.lock().expect("proxy lock").extend(
                    [client.try_clone().ok(), server.try_clone().ok()]
                        .into_iter()
                        .flatten(),
                );
                thread::spawn(move || pipe(client, server_copy));
                thread::spawn(move || pipe(server, client_copy));
            }
        });
        Ok(CuttingProxy {
            port,
            open,
            stopped,
            refusing,
        })
    }

    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// While refusing, every new connection is closed as soon as it is accepted.
    pub fn set_refusing(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::Relaxed);
    }

    /// Closes every connection open through the proxy; clients may connect again at once.
    pub fn cut_all(&self) -> usize {
        let mut open = self.open.lock().expect("proxy lock");
        for stream in open.iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let cut = open.len() / 2;
        open.clear();
        cut
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.cut_all();
        // Wake the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
