//! [`ServerProcess`]: the real `tandem` binary in a process of its own, for what must not share
//! this one: a SIGKILL, or metrics (global to a process).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use super::{text_of_update, Backing, Served};

/// A `tandem` process.
pub struct ServerProcess {
    child: Child,
    addr: SocketAddr,
    /// Its "tandem listening" log line.
    pub listening: serde_json::Value,
}

impl ServerProcess {
    /// Starts `tandem serve` on a free port with its data in `backing` and the flags `extra`,
    /// and waits until it listens.
    pub fn start(backing: &Backing, extra: &[&str]) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args(["serve", "--bind", "127.0.0.1:0", "--log-format", "json"])
            .args(backing.args())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tandem");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (addr, listening) = loop {
            let line = lines
                .next()
                .expect("tandem exited before listening")
                .expect("read log");
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if entry["fields"]["message"] == "tandem listening" {
                let addr = entry["fields"]["addr"]
                    .as_str()
                    .expect("addr field")
                    .parse()
                    .expect("socket address");
                break (addr, entry);
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ServerProcess {
            child,
            addr,
            listening,
        }
    }

    /// SIGKILL: no shutdown, no final flush.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    /// The document API's URL of `doc`.
    pub fn doc_url(&self, doc: &str) -> String {
        self.http_url(&format!("/api/v1/docs/{doc}"))
    }

    /// The text `t` of document `doc`, as the server has it.
    pub async fn text(&self, doc: &str) -> String {
        let bytes = reqwest::get(self.doc_url(doc))
            .await
            .expect("GET doc")
            .bytes()
            .await
            .expect("body");
        text_of_update(&bytes)
    }

    /// `POST …/update`; whether it was acknowledged.
    pub async fn post(&self, http: &reqwest::Client, doc: &str, update: Vec<u8>) -> bool {
        match http
            .post(format!("{}/update", self.doc_url(doc)))
            .body(update)
            .send()
            .await
        {
            Ok(response) => response.status() == 200,
            Err(_) => false,
        }
    }
}

impl Served for ServerProcess {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
