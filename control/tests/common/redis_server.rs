//! A real `redis-server` on a free loopback port, for the lifetime of a test. Shared by the
//! control crate's tests and the binary's (included by path).

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server, killed on drop.
pub struct RedisServer {
    child: Child,
    /// `redis://127.0.0.1:PORT/`.
    pub url: String,
    /// Its port.
    pub port: u16,
}

impl RedisServer {
    /// Starts one with no persistence, bound to 127.0.0.1 only. Panics with a clear message
    /// when `redis-server` is missing (./test.sh installs it).
    ///
    /// The port is found with `bind(0)` and released, so another process may take it first:
    /// a server that exits (it could not bind) is started again on another port, and it counts
    /// as ready only when it answers `PING` itself while still running, not when anything at
    /// all accepts on its port.
    pub fn start() -> RedisServer {
        for _ in 0..5 {
            if let Some(server) = RedisServer::try_start() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    fn try_start() -> Option<RedisServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed; run ./test.sh, which installs it");
        let mut server = RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
            port,
        };
        let spawned = Instant::now();
        let deadline = spawned + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = server.child.try_wait() {
                // It could not bind: the port was taken meanwhile. (Drop reaps it.)
                return None;
            }
            // A redis-server that cannot bind exits at once; one still running a moment after
            // its start, with a server answering on its port, is this one.
            if spawned.elapsed() >= Duration::from_millis(150)
                && pong(port)
                && matches!(server.child.try_wait(), Ok(None))
            {
                return Some(server);
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether a Redis server answers `PING` on `port`.
fn pong(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
