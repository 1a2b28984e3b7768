//! A stand-in for an agent's `/routes` endpoint: answers every request with the body the
//! test sets (or a status code), so a test controls what one node reports.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct FakeAgent {
    pub port: u16,
    answer: Arc<Mutex<(u16, String)>>,
    stop: Arc<AtomicBool>,
}

impl FakeAgent {
    pub fn start() -> FakeAgent {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("address").port();
        listener.set_nonblocking(true).expect("non-blocking");
        let answer = Arc::new(Mutex::new((503, String::from("not yet"))));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (answer.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let mut buf = [0u8; 4096];
                let mut request = Vec::new();
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let (status, body) = a.lock().expect("answer").clone();
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes());
            }
        });
        FakeAgent { port, answer, stop }
    }

    /// Answer 200 with `report` as JSON.
    pub fn report(&self, report: &serde_json::Value) {
        *self.answer.lock().expect("answer") = (200, report.to_string());
    }

    /// Answer `status` (an agent that is up but cannot report).
    pub fn fail(&self, status: u16) {
        *self.answer.lock().expect("answer") = (status, String::new());
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
