//! The resource a chaos run's holders protect with their lock: a loopback server that
//! refuses a fenced write whose token is lower than the highest it has accepted for that
//! lock (the fencing rule of Kleppmann's and Chubby's sequencers), and the time base every
//! process of the run shares for its history.
//!
//! Protocol, one request per line: `W LOCK TOKEN` (a fenced write) or `R LOCK TOKEN` (a read
//! by a shared holder, never refused); the answer is `1` (accepted) or `0` (refused).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::KitError;

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine, so the
/// enter, leave and write times that different processes record can be compared.
pub fn monotonic_nanos() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for clock_gettime to fill.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(result, 0, "CLOCK_MONOTONIC is always available on Linux");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

pub struct FencedResource {
    address: SocketAddr,
}

impl FencedResource {
    /// Serves on a free loopback port until the process ends.
    pub fn start() -> Result<Self, KitError> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let highest: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let highest = highest.clone();
                thread::spawn(move || serve(stream, &highest));
            }
        });
        Ok(FencedResource { address })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

fn serve(stream: TcpStream, highest: &Mutex<HashMap<String, i64>>) {
    let Ok(mut answers) = stream.try_clone() else {
        return;
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let accepted = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["W", lock, token] => match token.parse::<i64>() {
                Ok(token) => accept_write(highest, lock, token),
                Err(_) => false,
            },
            ["R", _lock, _token] => true,
            _ => false,
        };
        if answers
            .write_all(if accepted { b"1\n" } else { b"0\n" })
            .is_err()
        {
            return;
        }
    }
}

/// The fencing rule: a write is taken if its token is at least the highest taken so far.
fn accept_write(highest: &Mutex<HashMap<String, i64>>, lock: &str, token: i64) -> bool {
    let mut highest = highest.lock().expect("fenced resource lock");
    let top = highest.entry(lock.to_string()).or_insert(i64::MIN);
    if token >= *top {
        *top = token;
        true
    } else {
        false
    }
}

/// A holder's connection to the resource.
pub struct ResourceClient {
    stream: BufReader<TcpStream>,
}

impl ResourceClient {
    pub fn connect(address: &str) -> Result<Self, KitError> {
        Ok(ResourceClient {
            stream: BufReader::new(TcpStream::connect(address)?),
        })
    }

    /// Sends one request (`W` or `R`); whether the resource accepted it.
    pub fn request(&mut self, verb: char, lock: &str, token: i64) -> Result<bool, KitError> {
        writeln!(self.stream.get_mut(), "{verb} {lock} {token}")?;
        let mut answer = String::new();
        self.stream.read_line(&mut answer)?;
        match answer.trim() {
            "1" => Ok(true),
            "0" => Ok(false),
            other => Err(KitError::Missing(format!(
                "the fenced resource answered {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_with_a_lower_token_than_one_taken_is_refused() {
        let resource = FencedResource::start().unwrap();
        let mut client = ResourceClient::connect(&resource.address().to_string()).unwrap();
        assert!(client.request('W', "m", 7).unwrap());
        assert!(
            client.request('W', "m", 7).unwrap(),
            "the same holder writes again"
        );
        assert!(client.request('W', "m", 9).unwrap());
        assert!(
            !client.request('W', "m", 7).unwrap(),
            "an older holder is fenced off"
        );
        assert!(
            client.request('W', "other", 1).unwrap(),
            "each lock has its own tokens"
        );
        assert!(
            client.request('R', "m", 1).unwrap(),
            "reads are never fenced"
        );
    }
}
