//! The real `smartmart serve` binary as a child process (crash, replica and
//! trace tests): started, SIGKILLed and started again on the same port and
//! data dir, or stopped with SIGTERM.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use super::ports::free_port;
use super::server::{ADMIN_KEY, MOBILE_KEY, PARTNER_KEY, WEB_KEY};
use super::{SECRET, bundled_plugins, demo_dataset};

/// The service as a child process on a fixed port and data dir.
pub struct Service {
    pub child: Child,
    pub port: u16,
    data_dir: PathBuf,
    env: Vec<(String, String)>,
    /// Where its standard error goes (inherited when `None`).
    log: Option<PathBuf>,
    /// Its soft and hard descriptor limits (`ulimit -Sn`, `-Hn`), when not
    /// the test process's.
    descriptor_limits: Option<(u64, u64)>,
}

impl Service {
    /// `smartmart serve` on `port` and `data_dir` with the test credentials,
    /// the bundled rules and the demo data set; `env` adds or overrides settings.
    pub fn spawn(data_dir: &Path, port: u16, env: &[(&str, String)]) -> Service {
        Service::spawn_logging(data_dir, port, env, None)
    }

    /// Like [`Service::spawn`], its standard error appended to `log` (when
    /// given), so that a test can read what it logged.
    pub fn spawn_logging(data_dir: &Path, port: u16, env: &[(&str, String)], log: Option<&Path>) -> Service {
        Service::spawn_full(data_dir, port, env, log, None)
    }

    /// Like [`Service::spawn_logging`], under `ulimit -n descriptor_limit`
    /// (soft and hard), set by a shell that then `exec`s the service.
    pub fn spawn_with_descriptor_limit(
        data_dir: &Path,
        port: u16,
        env: &[(&str, String)],
        log: &Path,
        descriptor_limit: u64,
    ) -> Service {
        Service::spawn_full(data_dir, port, env, Some(log), Some((descriptor_limit, descriptor_limit)))
    }

    /// Like [`Service::spawn_with_descriptor_limit`], with a soft limit
    /// below the hard one.
    pub fn spawn_with_descriptor_limits(
        data_dir: &Path,
        port: u16,
        env: &[(&str, String)],
        log: &Path,
        (soft, hard): (u64, u64),
    ) -> Service {
        Service::spawn_full(data_dir, port, env, Some(log), Some((soft, hard)))
    }

    fn spawn_full(
        data_dir: &Path,
        port: u16,
        env: &[(&str, String)],
        log: Option<&Path>,
        descriptor_limits: Option<(u64, u64)>,
    ) -> Service {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new().create(true).append(true).open(path).expect("opening the service's log"),
            ),
            None => Stdio::inherit(),
        };
        let mut command = match descriptor_limits {
            // `sh -c SCRIPT $0 $@…`: the service replaces the shell, same pid.
            // The soft limit first: a hard limit below the current soft one
            // would be refused.
            Some((soft, hard)) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_smartmart"));
                shell
            }
            None => Command::new(env!("CARGO_BIN_EXE_smartmart")),
        };
        let child = command
            .args(["serve", "--demo-data"])
            .arg(demo_dataset())
            .env("SMARTMART_LISTEN", format!("127.0.0.1:{port}"))
            .env("SMARTMART_DATA_DIR", data_dir)
            .env("SMARTMART_PLUGINS_DIR", bundled_plugins())
            .env("SMARTMART_CHANNEL_KEYS", format!("web:{WEB_KEY},mobile:{MOBILE_KEY},partner:{PARTNER_KEY}"))
            .env("SMARTMART_ADMIN_KEY", ADMIN_KEY)
            .env("SMARTMART_IDENTITY_SECRET", std::str::from_utf8(SECRET).unwrap())
            .env("SMARTMART_WATCH_PLUGINS", "false")
            .env("RUST_LOG", "error")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting smartmart serve");
        Service { child, port, data_dir: data_dir.to_owned(), env, log: log.map(Path::to_owned), descriptor_limits }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(answer) = client.get(self.url("/readyz")).send().await
                && answer.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the service exited while starting: {status}");
            }
            assert!(Instant::now() < deadline, "the service never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit (0), within a minute (a hang guard).
    pub fn stop(&mut self) {
        let kill = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().expect("running kill");
        assert!(kill.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(exit) = self.child.try_wait().expect("waiting for the service") {
                assert!(exit.success(), "the service did not stop cleanly: {exit}");
                return;
            }
            assert!(Instant::now() < deadline, "the service did not stop within a minute of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaping the service");
    }

    /// Starts it again on the same port, data dir and settings.
    pub fn restart(&mut self) {
        let env: Vec<(&str, String)> = self.env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let (data_dir, log) = (self.data_dir.clone(), self.log.clone());
        *self = Service::spawn_full(&data_dir, self.port, &env, log.as_deref(), self.descriptor_limits);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
