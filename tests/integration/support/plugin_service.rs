//! The real `smartmart serve` binary as a child process on a free port, a
//! data dir and a plug-in dir of the test's choosing (A/B figures and
//! dashboard tests): started with the demo data set and the test
//! credentials, stopped with SIGTERM (a clean stop) or dropped (SIGKILL).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::ports::free_port;
use super::server::{ADMIN_KEY, MOBILE_KEY, PARTNER_KEY, WEB_KEY, token};
use super::{SECRET, demo_dataset};

pub struct PluginService {
    child: Option<Child>,
    pub port: u16,
    pub client: reqwest::Client,
}

impl PluginService {
    /// Starts the service and waits until `/readyz` answers 200.
    pub async fn start(data_dir: &Path, plugins_dir: &Path) -> PluginService {
        PluginService::start_logging(data_dir, plugins_dir, None).await
    }

    /// Like [`PluginService::start`], its log (JSON lines, warnings and
    /// errors) written to `log` when given, so that a test can read it.
    pub async fn start_logging(data_dir: &Path, plugins_dir: &Path, log: Option<&Path>) -> PluginService {
        let port = free_port();
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("creating the service's log")),
            None => Stdio::inherit(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_smartmart"))
            .args(["serve", "--demo-data"])
            .arg(demo_dataset())
            .env("SMARTMART_LISTEN", format!("127.0.0.1:{port}"))
            .env("SMARTMART_DATA_DIR", data_dir)
            .env("SMARTMART_PLUGINS_DIR", plugins_dir)
            .env("SMARTMART_CHANNEL_KEYS", format!("web:{WEB_KEY},mobile:{MOBILE_KEY},partner:{PARTNER_KEY}"))
            .env("SMARTMART_ADMIN_KEY", ADMIN_KEY)
            .env("SMARTMART_IDENTITY_SECRET", std::str::from_utf8(SECRET).expect("the test secret is UTF-8"))
            .env("SMARTMART_WATCH_PLUGINS", "false")
            .env("SMARTMART_PAYMENT_MAX_ATTEMPTS", "1")
            .env("RUST_LOG", "warn")
            .env("SMARTMART_LOG_FORMAT", if log.is_some() { "json" } else { "text" })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting smartmart serve");
        let mut service = PluginService { child: Some(child), port, client: reqwest::Client::new() };
        service.wait_ready().await;
        service
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(answer) = self.client.get(self.url("/readyz")).send().await
                && answer.status() == 200
            {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("polling the child")) {
                panic!("the service exited while starting: {status}");
            }
            assert!(Instant::now() < deadline, "the service never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `GET path` with the admin key: status and JSON body.
    pub async fn admin_get(&self, path: &str) -> (u16, Value) {
        let answer = self.client.get(self.url(path)).bearer_auth(ADMIN_KEY).send().await.expect("GET");
        let status = answer.status().as_u16();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// `PUT path` with the admin key; panics unless 200.
    pub async fn admin_put(&self, path: &str, body: Value) {
        let answer = self.client.put(self.url(path)).bearer_auth(ADMIN_KEY).json(&body).send().await.expect("PUT");
        let status = answer.status();
        assert_eq!(status, 200, "PUT {path}: {}", answer.text().await.unwrap_or_default());
    }

    /// A product with plenty of stock in every demo warehouse.
    pub async fn product(&self, sku: &str, unit_price_cents: u64) {
        self.admin_put(
            &format!("/v1/admin/products/{sku}"),
            json!({"name": format!("Test {sku}"), "category": "accessories", "unit_price_cents": unit_price_cents}),
        )
        .await;
        for warehouse in super::plugin_dir::WAREHOUSES {
            self.admin_put(&format!("/v1/admin/stock/{warehouse}/{sku}"), json!({"on_hand": 1_000_000})).await;
        }
    }

    /// An active customer of `tier` near the demo warehouses.
    pub async fn customer(&self, id: &str, tier: &str) {
        self.admin_put(
            &format!("/v1/admin/customers/{id}"),
            json!({"name": format!("Customer {id}"), "email": format!("{id}@example.com"), "phone": "+1-555-0100",
                   "tier": tier, "status": "ACTIVE", "location": {"lat": 12.97, "lon": 77.59}}),
        )
        .await;
    }

    /// Fills `customer`'s cart and places the order with `payment_token`:
    /// the status and the invoice (for a 402, the failed order's).
    pub async fn order(&self, customer: &str, items: &[(&str, u32)], payment_token: &str) -> (u16, Value) {
        let (status, body) = self.order_answer(customer, items, payment_token).await;
        match status {
            201 => (status, body),
            402 => (status, body["order"].clone()),
            _ => panic!("order of {customer}: {status} {body}"),
        }
    }

    /// Like [`PluginService::order`], whatever the answer: its status and body.
    pub async fn order_answer(&self, customer: &str, items: &[(&str, u32)], payment_token: &str) -> (u16, Value) {
        let items: Vec<Value> = items.iter().map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity})).collect();
        let answer = self
            .client
            .put(self.url(&format!("/v1/carts/{customer}")))
            .bearer_auth(WEB_KEY)
            .header("X-Customer-Token", token(customer))
            .json(&json!({ "items": items }))
            .send()
            .await
            .expect("PUT cart");
        assert_eq!(answer.status(), 200, "cart of {customer}");
        let answer = self
            .client
            .post(self.url("/v1/orders"))
            .bearer_auth(WEB_KEY)
            .header("X-Customer-Token", token(customer))
            .header("Idempotency-Key", uuid::Uuid::now_v7().to_string())
            .json(&json!({"customer_id": customer, "payment": {"token": payment_token}}))
            .send()
            .await
            .expect("POST order");
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.expect("a JSON answer");
        (status, body)
    }

    /// SIGTERM, then waits for the process to exit (0: a clean stop).
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("running kill");
        assert!(status.success(), "kill -TERM failed");
        let exit = child.wait().expect("reaping the service");
        assert!(exit.success(), "the service did not stop cleanly: {exit}");
    }
}

impl Drop for PluginService {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
