//! A plain HTTP webhook receiver on 127.0.0.1 that keeps every request's `Authorization` header
//! and body. Test files add what they check of the requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The receiver; it stops when dropped.
pub struct HookReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
}

impl HookReceiver {
    /// Listens for `POST /hook`; answers the first `busy_first` requests 503 (so that the
    /// sender has to retry) and every later one 200.
    pub fn start(busy_first: usize) -> HookReceiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr = listener.local_addr().expect("address");
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (got2, stop2) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut answered = 0usize;
            while !stop2.load(Ordering::Relaxed) {
                let Ok((stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                if stream.set_nonblocking(false).is_err()
                    || stream
                        .set_read_timeout(Some(Duration::from_secs(5)))
                        .is_err()
                {
                    continue;
                }
                let mut reader = BufReader::new(stream);
                let (mut auth, mut length, mut line) = (String::new(), 0usize, String::new());
                if reader.read_line(&mut line).is_err() || !line.starts_with("POST /hook ") {
                    continue;
                }
                loop {
                    line.clear();
                    if reader.read_line(&mut line).is_err() || line.trim_end().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.trim_end().split_once(':') {
                        match name.to_ascii_lowercase().as_str() {
                            "authorization" => auth = value.trim().to_owned(),
                            "content-length" => length = value.trim().parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let status = if answered < busy_first {
                    "503 Busy"
                } else {
                    "200 OK"
                };
                answered += 1;
                got2.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push((auth, String::from_utf8_lossy(&body).into_owned()));
                let _ = write!(
                    reader.get_mut(),
                    "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        HookReceiver { addr, got, stop }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every request so far: (`Authorization`, body).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.got
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for HookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
