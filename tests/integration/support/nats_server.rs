//! A `nats-server` of the test's own (Debian's `/usr/sbin/nats-server`),
//! for what the shared server on 4222 does not have — TLS, mutual TLS,
//! accounts: started from a generated configuration file on a free loopback
//! port, JetStream on with a store in a temp dir, and killed on drop (also
//! when the test panics). A server that cannot be started fails the test
//! with its log.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::service::free_port;

const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A running nats-server; killed and reaped on drop.
pub struct NatsServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server with `config` (nats-server's configuration format:
    /// `tls {…}`, `authorization {…}`, `operator: …`) besides its listen
    /// address and JetStream, and waits until it accepts connections.
    pub async fn start(config: &str) -> NatsServer {
        let dir = tempfile::tempdir().expect("a temp dir for the NATS server");
        let port = free_port();
        let store = dir.path().join("jetstream");
        let file = dir.path().join("nats-server.conf");
        let full =
            format!("listen: \"127.0.0.1:{port}\"\njetstream {{ store_dir: \"{}\" }}\n{config}\n", store.display());
        std::fs::write(&file, full).expect("writing the NATS server's configuration");
        let log = std::fs::File::create(dir.path().join("nats-server.log")).expect("creating the server's log");
        let child = Command::new(NATS_SERVER)
            .arg("-c")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log, twice"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {NATS_SERVER} failed ({e}): install Debian's nats-server package"));
        let mut server = NatsServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = server.child.try_wait().expect("polling the NATS server") {
                panic!("the NATS server exited at start ({status}):\n{}", server.log());
            }
            assert!(Instant::now() < deadline, "the NATS server never listened on {port}:\n{}", server.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// `<scheme>://<host>:<port>`, e.g. `tls://localhost:4711`.
    pub fn url(&self, scheme: &str, host: &str) -> String {
        format!("{scheme}://{host}:{}", self.port)
    }

    /// What the server logged, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
