//! The dashboard at `/admin` in a real browser: Debian's headless Chromium,
//! driven through its chromedriver (W3C WebDriver: plain JSON over HTTP,
//! spoken here with reqwest — no browser-automation crate). The test loads
//! the page from a running `smartmart serve` with orders placed in a
//! discount and a fraud experiment, types a wrong admin key (refused, nothing shown), then the
//! right one, and checks what the page shows against the JSON endpoints:
//! every loaded rule's digest and config hash, every arm's order count and
//! digest, a fraud arm's escalations with their rate, the SVG plot, the reload status; that the key is in no storage,
//! cookie or URL; and that the page is served under a same-origin-only
//! Content-Security-Policy. A screenshot is kept in the test's temp dir
//! (and copied to `$SMARTMART_DASHBOARD_SCREENSHOT` when set: the README's
//! `docs/dashboard.png`).
//!
//! Chromium and chromedriver are installed by `.ci/chromium.sh` (run by
//! `.ci/services.sh`); without them this test fails, saying so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::support::plugin_dir::{PluginDir, guest_digest};
use crate::support::plugin_service::PluginService as Service;
use crate::support::server::ADMIN_KEY;

/// The flags the issue asks Chromium to run with (plus a window size and a
/// fresh profile directory per run).
const CHROMIUM_FLAGS: [&str; 7] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// `name` on the PATH or in /usr/bin.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// chromedriver as a child process on a free port; killed on drop.
struct Driver {
    child: Child,
    url: String,
    client: reqwest::Client,
}

impl Driver {
    async fn start(chromedriver: &Path) -> Driver {
        let port = crate::support::ports::free_port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let driver = Driver { child, url: format!("http://127.0.0.1:{port}"), client: reqwest::Client::new() };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(answer) = driver.client.get(format!("{}/status", driver.url)).send().await
                && let Ok(status) = answer.json::<Value>().await
                && status["value"]["ready"] == true
            {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One WebDriver command; its `value`, or a panic naming the error.
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.client.request(method.clone(), format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = answer.status();
        let body: Value = answer.json().await.expect("a WebDriver JSON answer");
        assert!(status.is_success(), "WebDriver {method} {path}: {status} {body}");
        body["value"].clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session (one headless Chromium with a fresh profile).
struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl<'a> Session<'a> {
    async fn open(driver: &'a Driver, chromium: &Path, profile: &Path) -> Session<'a> {
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push("--window-size=1500,1700".into());
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium, "args": args },
        } } });
        let value = driver.command(reqwest::Method::POST, "/session", Some(capabilities)).await;
        let id = value["sessionId"].as_str().expect("a session id").to_string();
        Session { driver, id }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.driver.command(reqwest::Method::POST, &format!("/session/{}{path}", self.id), Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.driver.command(reqwest::Method::GET, &format!("/session/{}{path}", self.id), None).await
    }

    async fn navigate(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn script(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] })).await
    }

    async fn element(&self, css: &str) -> String {
        let value = self.post("/element", json!({ "using": "css selector", "value": css })).await;
        value.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("an element reference").into()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.post(&format!("/element/{element}/clear"), json!({})).await;
        self.post(&format!("/element/{element}/value"), json!({ "text": text })).await;
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.post(&format!("/element/{element}/click"), json!({})).await;
    }

    /// Waits until the page's last load settled: `body[data-loaded]` set.
    async fn wait_loaded(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let loaded = self.script("return document.body.dataset.loaded || '';").await;
            let loaded = loaded.as_str().unwrap_or_default().to_string();
            if !loaded.is_empty() {
                return loaded;
            }
            assert!(Instant::now() < deadline, "the dashboard never finished loading");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, file: &Path) {
        let value = self.get("/screenshot").await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().expect("base64 PNG"))
            .expect("a base64 screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(file, png).expect("writing the screenshot");
    }

    async fn close(self) {
        self.driver.command(reqwest::Method::DELETE, &format!("/session/{}", self.id), None).await;
    }
}

/// What the page shows, read from its DOM.
const READ_PAGE: &str = r#"
const text = (row, field) => { const c = row.querySelector(`[data-field="${field}"]`); return c ? c.textContent : null; };
const title = (row, field) => { const c = row.querySelector(`[data-field="${field}"]`); return c ? c.getAttribute('title') : null; };
return {
  rules: [...document.querySelectorAll('#rules-body tr')].map((r) => ({
    file: text(r, 'file'), version: text(r, 'version'), digest: title(r, 'digest'), config_hash: title(r, 'config_hash'), arm: text(r, 'arm'),
    channels: text(r, 'channels'), schedule: text(r, 'schedule') })),
  arms: [...document.querySelectorAll('article.experiment tr.arm')].map((r) => ({
    experiment: r.closest('article').dataset.experiment, variant: r.dataset.variant, digest: r.dataset.digest,
    orders: text(r, 'orders'), confirmed: text(r, 'confirmed_orders'), vs_control: text(r, 'vs_control'),
    escalations: text(r, 'escalations') })),
  arm_rows: document.querySelectorAll('article.experiment tr.arm-row').length,
  bars: [...document.querySelectorAll('svg.chart rect.bar')].map((b) => ({ variant: b.dataset.variant, width: Number(b.getAttribute('width')) })),
  shadows: [...document.querySelectorAll('#shadows-body tr[data-candidate]')].map((r) => r.dataset.candidate),
  reload_summary: (document.getElementById('reload-summary') || {}).textContent || null,
  events: [...document.querySelectorAll('#rollouts-body tr.event')].map((r) => ({ kind: r.dataset.kind, entry: text(r, 'entry') })),
  status: document.getElementById('status').textContent,
  header_position: getComputedStyle(document.querySelector('header')).position,
  key_input: document.getElementById('admin-key').value,
  stored: [localStorage.length, sessionStorage.length, document.cookie, location.href],
};
"#;

const MANIFEST: &str = r#"
[[discount]]
module = "gold_loyalty.wasm"
config = { percent = "10" }
budgets = { time_ms = 10000 }
shadow = { module = "gold_candidate.wasm", config = { percent = "12" } }
channels = ["web", "mobile"]
from = "2020-01-01T00:00:00Z"

[[discount]]
module = "bundle_deal.wasm"
budgets = { time_ms = 10000 }
experiment = { name = "bundle", variants = [
    { name = "off", weight = 50, module = "none" },
    { name = "on", weight = 50 } ] }

[warehouse]
module = "nearest_warehouse.wasm"
budgets = { time_ms = 10000 }

[[fraud]]
module = "high_value.wasm"
fail_mode = "open"
budgets = { time_ms = 10000 }
experiment = { name = "fraud-strict", variants = [
    { name = "control", weight = 50 },
    { name = "strict", weight = 50, config = { threshold_cents = "5000" } } ] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_chromium_shows_what_the_json_endpoints_say() {
    let (Some(chromium), Some(chromedriver)) = (find_program("chromium"), find_program("chromedriver")) else {
        panic!(
            "the dashboard test needs Debian's chromium and chromium-driver: run .ci/chromium.sh \
             (apt-get install chromium chromium-driver){}",
            if std::env::var("CI").as_deref() == Ok("true") { " — under CI=true this is a failure" } else { "" }
        );
    };

    let plugins = PluginDir::new(&[("discount_v2", "bundle_deal.wasm")], "");
    // The whole manifest: its fraud check is in an experiment too.
    std::fs::write(plugins.file("manifest.toml"), MANIFEST).expect("writing the manifest");
    plugins.copy_in(&crate::support::bundled_plugins().join("gold_loyalty.wasm"), "gold_candidate.wasm");
    let data = tempfile::tempdir().expect("a data dir");
    let service = Service::start(data.path(), plugins.path()).await;
    service.product("DASH-LAMP", 4_500).await;
    for n in 0..16 {
        let id = format!("C-DASH-{n:02}");
        service.customer(&id, ["GOLD", "SILVER"][n % 2]).await;
        let payment = if n % 5 == 4 { "tok_decline" } else { "tok_ok" };
        service.order(&id, &[("DASH-LAMP", 1 + (n % 3) as u32)], payment).await;
    }

    // The page and its assets: no key needed, a same-origin-only CSP.
    for (path, content_type) in
        [("/admin", "text/html"), ("/admin/dashboard.js", "text/javascript"), ("/admin/dashboard.css", "text/css")]
    {
        let answer = service.client.get(service.url(path)).send().await.expect("GET");
        assert_eq!(answer.status(), 200, "{path}");
        let header = |name: &str| answer.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(header("content-type").starts_with(content_type), "{path}: {}", header("content-type"));
        let csp = header("content-security-policy");
        for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"] {
            assert!(csp.contains(directive), "{path}: CSP {csp:?} lacks {directive}");
        }
        assert_eq!(header("x-content-type-options"), "nosniff");
        let body = answer.text().await.expect("a body");
        assert!(!body.contains(ADMIN_KEY), "{path} holds no secret");
        assert!(!body.contains("http://") || path != "/admin", "the page loads nothing from elsewhere");
    }

    let (_, plugins_json) = service.admin_get("/v1/admin/plugins").await;
    // Shadow runs and fraud checks are recorded after the answers: wait for them.
    let deadline = Instant::now() + Duration::from_secs(60);
    let experiments_json = loop {
        let (_, experiments) = service.admin_get("/v1/admin/experiments").await;
        let list = experiments.as_array().cloned().unwrap_or_default();
        let shadowed = list.iter().any(|e| e["kind"] == "shadow");
        let checks: u64 = list
            .iter()
            .filter(|e| e["name"] == "fraud-strict")
            .flat_map(|e| e["variants"].as_array().cloned().unwrap_or_default())
            .map(|v| v["fraud"]["checks"].as_u64().unwrap_or(0))
            .sum();
        if shadowed && checks == 16 {
            break experiments;
        }
        assert!(Instant::now() < deadline, "no shadow runs or fraud checks recorded: {experiments}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let driver = Driver::start(&chromedriver).await;
    let profile = tempfile::tempdir().expect("a browser profile dir");
    let session = Session::open(&driver, &chromium, profile.path()).await;
    session.navigate(&service.url("/admin")).await;

    // A wrong key: refused, forgotten, nothing shown.
    session.type_into("#admin-key", "not-the-admin-key-at-all").await;
    session.click("#connect").await;
    assert_eq!(session.wait_loaded().await, "error");
    let page = session.script(READ_PAGE).await;
    assert!(page["status"].as_str().unwrap_or("").contains("refused"), "{page}");
    assert_eq!(page["rules"], json!([]), "nothing is shown without the key: {page}");

    // The right key.
    session.type_into("#admin-key", ADMIN_KEY).await;
    session.click("#connect").await;
    let loaded = session.wait_loaded().await;
    assert_ne!(loaded, "error", "the dashboard failed to load: {}", session.script(READ_PAGE).await);
    let page = session.script(READ_PAGE).await;

    // The key stays in the tab's memory only.
    assert_eq!(page["key_input"], "", "the field is cleared");
    assert_eq!(page["stored"][0], 0, "localStorage: {page}");
    assert_eq!(page["stored"][1], 0, "sessionStorage: {page}");
    assert_eq!(page["stored"][2], "", "cookies: {page}");
    assert!(!page["stored"][3].as_str().unwrap_or("").contains(ADMIN_KEY), "URL: {page}");
    // The style sheet applied under the CSP.
    assert_eq!(page["header_position"], "sticky", "{page}");

    // Loaded rules: every module of GET /v1/admin/plugins, digest and config hash.
    let plugins_listed = plugins_json["plugins"].as_array().expect("plugins");
    let rules = page["rules"].as_array().expect("rules shown");
    assert_eq!(rules.len(), plugins_listed.len(), "{page}\n{plugins_json}");
    for (shown, listed) in rules.iter().zip(plugins_listed) {
        assert_eq!(shown["file"], listed["file"], "{shown} vs {listed}");
        assert_eq!(shown["version"], listed["version"]);
        assert_eq!(shown["digest"], listed["digest"]);
        assert_eq!(shown["config_hash"], listed["config_hash"]);
        let channels: Vec<&str> = listed["channels"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert_eq!(shown["channels"], channels.join(", "));
    }
    // The scheduled, web-and-mobile loyalty rule (and its shadow) with its window; the others always.
    let schedules: Vec<(&str, &str)> =
        rules.iter().map(|r| (r["channels"].as_str().unwrap_or(""), r["schedule"].as_str().unwrap_or(""))).collect();
    let gold = ("web, mobile", "2020-01-01T00:00:00Z → … (active)");
    assert_eq!(schedules.iter().filter(|s| **s == gold).count(), 2, "{page}");
    assert!(schedules.iter().filter(|s| **s != gold).all(|(_, s)| *s == "always"), "{page}");
    assert!(rules.iter().any(|r| r["digest"] == guest_digest("discount_v2").as_str() && r["arm"] == "bundle / on"));
    assert!(rules.iter().any(|r| r["file"] == "gold_candidate.wasm" && r["arm"] == "shadow"), "{page}");

    // Experiments: each arm's orders and digest as GET /v1/admin/experiments says.
    let expected_arms: Vec<Value> = experiments_json
        .as_array()
        .expect("experiments")
        .iter()
        .filter(|e| e["kind"] == "ab")
        .flat_map(|e| {
            e["variants"].as_array().expect("variants").iter().map(move |v| {
                json!({ "experiment": e["name"], "variant": v["name"], "digest": v["digest"],
                        "orders": v["orders"].as_u64().expect("orders").to_string(),
                        "confirmed": v["confirmed_orders"].as_u64().expect("confirmed").to_string() })
            })
        })
        .collect();
    let shown_arms: Vec<Value> = page["arms"]
        .as_array()
        .expect("arms shown")
        .iter()
        .map(|a| {
            json!({ "experiment": a["experiment"], "variant": a["variant"], "digest": a["digest"],
                         "orders": a["orders"], "confirmed": a["confirmed"] })
        })
        .collect();
    assert_eq!(shown_arms, expected_arms, "{page}");
    for experiment in ["bundle", "fraud-strict"] {
        let total_orders: u64 = expected_arms
            .iter()
            .filter(|a| a["experiment"] == experiment)
            .map(|a| a["orders"].as_str().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(total_orders, 16, "every order counted in one arm of {experiment}: {experiments_json}");
    }
    // A fraud arm shows its escalations with their rate and interval.
    let fraud = experiments_json.as_array().unwrap().iter().find(|e| e["name"] == "fraud-strict").expect("listed");
    for v in fraud["variants"].as_array().expect("variants") {
        let f = &v["fraud"];
        let pct = |x: &Value| format!("{:.1}", x.as_f64().expect("a number") * 100.0);
        let r = &f["escalation_rate"];
        let expected =
            format!("{} · {} % [{}, {}]", f["escalations"], pct(&r["rate"]), pct(&r["low"]), pct(&r["high"]));
        let shown = page["arms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["experiment"] == "fraud-strict" && a["variant"] == v["name"]);
        assert_eq!(shown.expect("the fraud arm is shown")["escalations"], expected.as_str(), "{page}");
    }
    assert!(page["arm_rows"].as_u64().is_some_and(|n| n >= 2), "the finer rows are shown: {page}");
    // The plot: a bar per arm per chart, wider for the arm with more orders.
    let bars = page["bars"].as_array().expect("bars");
    assert_eq!(bars.len(), 3 * expected_arms.len(), "{page}");
    // Shadow differences.
    assert_eq!(page["shadows"], json!(["gold_candidate.wasm"]), "{page}");
    // Reloads, refusals, rollbacks and promotions: the reload counts of
    // GET /v1/admin/plugins and the events of GET /v1/admin/rollouts.
    let summary = page["reload_summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains(&format!("{} reloads", plugins_json["reloads"])) && summary.contains("refused"),
        "{summary:?} vs {plugins_json}"
    );
    let (status, rollouts_json) = service.admin_get("/v1/admin/rollouts").await;
    assert_eq!(status, 200, "{rollouts_json}");
    let expected_events: Vec<Value> = rollouts_json["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| json!({"kind": e["kind"], "entry": e["entry"]}))
        .collect();
    assert_eq!(page["events"], json!(expected_events), "{page} vs {rollouts_json}");

    let screenshot = data.path().join("dashboard.png");
    session.screenshot(&screenshot).await;
    eprintln!("dashboard screenshot: {}", screenshot.display());
    if let Some(keep) = std::env::var_os("SMARTMART_DASHBOARD_SCREENSHOT") {
        std::fs::copy(&screenshot, keep).expect("copying the screenshot");
    }
    session.close().await;
    service.stop();
}
