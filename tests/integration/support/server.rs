//! The real HTTP service on `127.0.0.1:0` (http and http_fuzz tests): the
//! engine on a temp data dir with the bundled rules and the demo data set,
//! `http::serve` in a task, and a reqwest client.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, RequestBuilder};
use serde_json::Value;
use smartmart::app::{Dataset, Engine};
use smartmart::http::Credentials;
use smartmart::http::{AppState, ConnectionLimits, serve_with};
use smartmart::test_support::mint_token;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{SECRET, bundled_plugins, demo_dataset, engine_settings};

pub const WEB_KEY: &str = "web-channel-key-0123456789";
pub const MOBILE_KEY: &str = "mobile-channel-key-0123456789";
pub const PARTNER_KEY: &str = "partner-channel-key-0123456789";
pub const ADMIN_KEY: &str = "admin-operations-key-0123456789";
/// The body limit of the test servers (the deployed default).
pub const BODY_LIMIT: usize = 256 * 1024;

/// The credentials of the test servers (identity secret: `support::SECRET`).
pub fn credentials() -> Credentials {
    Credentials {
        channel_keys: [("web", WEB_KEY), ("mobile", MOBILE_KEY), ("partner", PARTNER_KEY)]
            .into_iter()
            .map(|(c, k)| (c.to_string(), k.to_string()))
            .collect(),
        admin_key: ADMIN_KEY.into(),
        identity_secret: String::from_utf8(SECRET.to_vec()).expect("the test secret is UTF-8"),
    }
}

/// A valid identity token for `customer` (10 minutes).
pub fn token(customer: &str) -> String {
    mint_token(SECRET, customer, Duration::from_secs(600))
}

/// An HS256 token with the given claims, signed with `secret`.
pub fn signed_token(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("signing a token")
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("a clock after 1970").as_secs()
}

/// One HTTP answer, read whole.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    /// The `X-Request-Id` answer header.
    pub request_id: Option<String>,
    pub bytes: Vec<u8>,
    /// The body parsed as JSON (`Null` if it is not JSON).
    pub json: Value,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// `error.code` of an error body ("" if absent).
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }

    pub fn is_json(&self) -> bool {
        self.content_type.starts_with("application/json")
    }

    /// Panics unless the answer is `status` with a JSON error body of `code`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) -> &Self {
        assert_eq!(self.status, status, "expected {status} {code}, got: {self:?}");
        self.assert_error_shape();
        assert_eq!(self.code(), code, "expected {status} {code}, got: {}", self.text());
        self
    }

    /// Panics unless the body is `{"error": {"code", "message", "request_id", ...}}` with a JSON
    /// content type, and `error.request_id` is the answer's `X-Request-Id`.
    #[track_caller]
    pub fn assert_error_shape(&self) -> &Self {
        assert!(self.is_json(), "content type {:?} of error {} {}", self.content_type, self.status, self.text());
        let error = &self.json["error"];
        assert!(error.is_object(), "no error object: {} {}", self.status, self.text());
        assert!(error["code"].as_str().is_some_and(|c| !c.is_empty()), "no error.code: {}", self.text());
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "no error.message: {}", self.text());
        let request_id = error["request_id"].as_str().unwrap_or_else(|| panic!("no error.request_id: {}", self.text()));
        assert_eq!(Some(request_id), self.request_id.as_deref(), "error.request_id is not the answer's X-Request-Id");
        self
    }

    /// Panics unless `error.message` mentions `what` (the field named by a 400).
    #[track_caller]
    pub fn assert_names(&self, what: &str) -> &Self {
        let message = self.json["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(what), "the message does not name {what:?}: {}", self.text());
        self
    }
}

/// The service on a loopback port, with its engine and data dir.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub engine: Arc<Engine>,
    pub dir: TempDir,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// The bundled rules, the demo data set, the deployed body limit and a
    /// 10 s request timeout.
    pub async fn start() -> TestServer {
        TestServer::start_with(&bundled_plugins(), |_| {}).await
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("smartmart.sqlite")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request without any credentials.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A request with `Authorization: Bearer <key>`.
    pub fn keyed(&self, method: Method, path: &str, key: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(key)
    }

    /// A request of the web channel.
    pub fn web(&self, method: Method, path: &str) -> RequestBuilder {
        self.keyed(method, path, WEB_KEY)
    }

    /// A request of the web channel with `customer`'s token.
    pub fn web_as(&self, method: Method, path: &str, customer: &str) -> RequestBuilder {
        self.web(method, path).header("x-customer-token", token(customer))
    }

    /// A request with the admin key.
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.keyed(method, path, ADMIN_KEY)
    }

    /// `PUT /v1/carts/{customer}` (web channel, the customer's token).
    pub async fn put_cart(&self, customer: &str, items: &[(&str, u32)]) -> Answer {
        let items: Vec<Value> =
            items.iter().map(|(sku, quantity)| serde_json::json!({ "sku": sku, "quantity": quantity })).collect();
        send(
            self.web_as(Method::PUT, &format!("/v1/carts/{customer}"), customer)
                .json(&serde_json::json!({ "items": items })),
        )
        .await
    }

    /// `POST /v1/orders` (web channel, the customer's token), optional key.
    pub async fn post_order(&self, body: &Value, idempotency_key: Option<&str>) -> Answer {
        let customer = body["customer_id"].as_str().unwrap_or("C-1001");
        let mut request = self.web_as(Method::POST, "/v1/orders", customer).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("idempotency-key", key);
        }
        send(request).await
    }

    /// Fills the cart, then places the order; panics unless the cart was accepted.
    pub async fn order(&self, customer: &str, items: &[(&str, u32)], body: &Value) -> Answer {
        let cart = self.put_cart(customer, items).await;
        assert_eq!(cart.status, 200, "cart of {customer}: {}", cart.text());
        self.post_order(body, None).await
    }

    /// `GET /v1/orders/{id}` as `customer`.
    pub async fn get_order(&self, order_id: &str, customer: &str) -> Answer {
        send(self.web_as(Method::GET, &format!("/v1/orders/{order_id}"), customer)).await
    }

    /// Polls `GET /v1/orders/{id}` until the fraud review is on it (bounded).
    pub async fn order_with_review(&self, order_id: &str, customer: &str) -> Answer {
        for _ in 0..1200 {
            let answer = self.get_order(order_id, customer).await;
            assert_eq!(answer.status, 200, "{}", answer.text());
            if answer.json.get("fraud_review").is_some() {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the fraud review of {order_id} never appeared");
    }

    /// `GET /v1/admin/stock/{sku}`: (on_hand, available) per warehouse.
    pub async fn stock(&self, sku: &str) -> Value {
        let answer = send(self.admin(Method::GET, &format!("/v1/admin/stock/{sku}"))).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        answer.json
    }

    /// A connection of its own to the service's database (WAL: reads what is committed).
    pub fn db(&self) -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_with_flags(
            self.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .expect("opening the database read-only");
        conn.busy_timeout(Duration::from_secs(5)).expect("setting a busy timeout");
        conn
    }

    /// `SELECT count(*) FROM <table>`, read directly from the database.
    pub fn count(&self, table: &str) -> i64 {
        self.db().query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0)).expect("counting rows")
    }

    /// Everything a rejected request must not change: the order rows, the
    /// cart rows, the stock table, the idempotency records and the payments.
    pub fn snapshot(&self) -> Snapshot {
        let db = self.db();
        let rows = |sql: &str| -> Vec<String> {
            let mut stmt = db.prepare(sql).expect("preparing a snapshot query");
            stmt.query_map([], |r| r.get::<_, String>(0))
                .expect("running a snapshot query")
                .collect::<Result<_, _>>()
                .expect("reading a snapshot row")
        };
        Snapshot {
            orders: rows("SELECT id || ' ' || status FROM orders ORDER BY id"),
            carts: rows("SELECT customer_id || ' ' || position || ' ' || sku || ' ' || quantity FROM carts ORDER BY 1"),
            stock: rows("SELECT warehouse_id || ' ' || sku || ' ' || on_hand || ' ' || reserved FROM stock ORDER BY 1"),
            idempotency: rows("SELECT channel || ' ' || key FROM idempotency ORDER BY 1"),
            payments: rows("SELECT order_id || ' ' || status FROM payments ORDER BY 1"),
            customers: rows("SELECT id || ' ' || tier || ' ' || status || ' ' || updated_at FROM customers ORDER BY 1"),
            products: rows("SELECT sku || ' ' || unit_price_cents || ' ' || updated_at FROM products ORDER BY 1"),
            warehouses: rows("SELECT id || ' ' || lat || ' ' || lon || ' ' || updated_at FROM warehouses ORDER BY 1"),
        }
    }

    /// The sandbox gateway's captured charges: (idempotency key, amount).
    pub fn charges(&self) -> Vec<(String, u64)> {
        let charges = self.engine.sandbox_charges().expect("the engine runs the sandbox gateway");
        charges.into_iter().map(|(key, charge)| (key, charge.amount_cents)).collect()
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server task.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("the server task").expect("the server stops cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What must not change under rejected requests (see `TestServer::snapshot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub orders: Vec<String>,
    pub carts: Vec<String>,
    pub stock: Vec<String>,
    pub idempotency: Vec<String>,
    pub payments: Vec<String>,
    pub customers: Vec<String>,
    pub products: Vec<String>,
    pub warehouses: Vec<String>,
}

/// Sends the request and reads the whole answer; panics on a transport error.
pub async fn send(request: RequestBuilder) -> Answer {
    try_send(request).await.unwrap_or_else(|e| panic!("the request failed: {e:?}"))
}

/// Sends the request and reads the whole answer.
pub async fn try_send(request: RequestBuilder) -> Result<Answer, reqwest::Error> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let content_type =
        response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let request_id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = response.bytes().await?.to_vec();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Answer { status, content_type, request_id, bytes, json })
}

impl TestServer {
    /// Like [`TestServer::start`], on the rules of `plugins_dir`; `adjust`
    /// may change the engine's settings first (hot reload, experiment and
    /// shadow tests).
    pub async fn start_with(
        plugins_dir: &std::path::Path,
        adjust: impl FnOnce(&mut smartmart::app::EngineSettings),
    ) -> TestServer {
        TestServer::start_full(plugins_dir, adjust, ConnectionLimits::default()).await
    }

    /// Like [`TestServer::start`], with the given connection limits.
    pub async fn start_with_limits(limits: ConnectionLimits) -> TestServer {
        TestServer::start_full(&bundled_plugins(), |_| {}, limits).await
    }

    async fn start_full(
        plugins_dir: &std::path::Path,
        adjust: impl FnOnce(&mut smartmart::app::EngineSettings),
        limits: ConnectionLimits,
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("a temp data dir");
        let mut settings = engine_settings(dir.path(), plugins_dir);
        adjust(&mut settings);
        let engine = Engine::start(settings).await.expect("starting the engine");
        Dataset::read(&demo_dataset())
            .expect("reading the demo data set")
            .load_into(engine.store())
            .await
            .expect("loading the demo data set");
        TestServer::serve_engine(engine, dir, limits).await
    }

    /// Serves `engine`, already started on the data dir `dir`.
    pub async fn serve_engine(engine: Engine, dir: TempDir, limits: ConnectionLimits) -> TestServer {
        let engine = Arc::new(engine);
        let state = AppState::new(engine.clone(), credentials(), BODY_LIMIT, Duration::from_secs(10));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding a loopback port");
        let address = listener.local_addr().expect("the bound address");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_with(listener, state, shutdown.clone(), Duration::from_secs(5), limits));
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("a reqwest client");
        TestServer { base: format!("http://{address}"), client, engine, dir, shutdown, task: Some(task) }
    }

    /// Stops the server and its engine (workers included), then starts both
    /// again on the same settings and data dir: a restart of the service.
    pub async fn restart(mut self) -> TestServer {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("the server task").expect("the server stops cleanly");
        }
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("a temp dir"));
        let mut engine = self.engine.clone();
        drop(self);
        // Connections still closing may hold the state a moment longer.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let engine = loop {
            match Arc::try_unwrap(engine) {
                Ok(engine) => break engine,
                Err(shared) => {
                    assert!(std::time::Instant::now() < deadline, "the engine is still shared after the stop");
                    engine = shared;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let settings = engine.settings().clone();
        engine.shutdown().await;
        let engine = Engine::start(settings).await.expect("restarting the engine");
        TestServer::serve_engine(engine, dir, ConnectionLimits::default()).await
    }
}
