//! The sandbox's edges found by black-box tests, each held against a real
//! hostile guest of `tests/guests/`: the log budget (lines and bytes, fields
//! included), control characters in every text a rule hands the host, an
//! unusable module name, the output budget charged before the host copies,
//! rule text bounded on its way to invoices, and a failed rule's words kept
//! away from clients.

use std::io::Write;
use std::sync::{Arc, Mutex};

use reqwest::Method;
use serde_json::json;
use smartmart::rules::types::{OrderContext, Refusal};
use smartmart::rules::{Budgets, FailureCause, LoadError, ModuleConfig, RuleError, RuleModule, World};
use smartmart::test_support::{MAX_RULE_TEXT_CHARS, has_unsafe_chars};

use crate::support::alloc_meter::peak_during;
use crate::support::plugin_dir::PluginDir;
use crate::support::server::{TestServer, send};
use crate::support::{example_order, load_rule, new_rule_runtime, rule_runtime, wasm};

/// Roomy wall clock: the tests share two cores (see `rules.rs`).
fn budgets() -> Budgets {
    Budgets { time_ms: 10_000, ..Budgets::default() }
}

/// An order without a coupon code.
fn order() -> OrderContext {
    let mut order = example_order("gold-basic").order;
    order.coupon_code = None;
    order
}

fn failure<T: std::fmt::Debug>(result: Result<T, RuleError>) -> FailureCause {
    match result {
        Err(RuleError::Failed { cause, .. }) => cause,
        other => panic!("expected a failed call, got {other:?}"),
    }
}

/// A `tracing` writer appending to a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `f` with every `tracing` event of this thread written to a buffer
/// (no colours, every level), and returns that text. Rule calls made outside
/// a tokio runtime run on the calling thread, so their logs land here.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    let buffer = Captured::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let value = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).expect("utf-8 log");
    (value, text)
}

/// No forged line, no raw escape: every line of `log` is one the host wrote.
#[track_caller]
fn assert_no_forgery(log: &str) {
    assert!(!log.contains('\x1b'), "a raw ESC reached the log:\n{log}");
    assert!(!log.contains('\r'), "a raw CR reached the log:\n{log}");
    assert!(!log.contains('\u{202e}'), "a raw RLO reached the log:\n{log}");
    for line in log.lines() {
        assert!(!line.starts_with("INFO forged line"), "a forged line: {line:?}");
    }
}

fn hostile_log(mode: &str) -> RuleModule {
    load_rule(&rule_runtime(), "hostile_log", World::DiscountRule, &[("mode", mode)], budgets())
}

// ---- 1. the log budget -------------------------------------------------------------------------

#[test]
fn a_log_flood_is_cut_at_the_call_budget_and_reported_once() {
    let rule = hostile_log("flood");
    // 1,000 lines of about 33 KiB each: 33 MB sent.
    let (answer, log) = logged(|| rule.apply_discount(&order()));
    assert_eq!(answer.unwrap().value.len(), 1, "the rule still answers");
    let kept = log.lines().filter(|l| l.contains("forged line")).count();
    assert!((1..=64).contains(&kept), "{kept} lines kept");
    // Messages, keys and values together stay within the byte budget (plus
    // what the host adds per line: time, level, target, module).
    assert!(log.len() <= (16 << 10) + 64 * 200, "{} bytes of log from one call", log.len());
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("rule log budget exceeded")).collect();
    assert_eq!(warnings.len(), 1, "one warning per call:\n{log}");
    assert!(warnings[0].contains(&format!("dropped {} lines", 1_000 - kept)), "{}", warnings[0]);
    assert!(warnings[0].contains("hostile-log@0.1.0"), "{}", warnings[0]);
    // The forged line and the screen clear are shown, escaped, not obeyed.
    assert!(log.contains(r"line 0\nINFO forged line\u{1b}[2J"), "{log}");
    assert_no_forgery(&log);
}

#[test]
fn one_log_call_carrying_more_than_the_output_budget_fails_before_the_host_copies_it() {
    let rule = hostile_log("huge");
    // 16 fields aliasing one 512 KiB buffer: 8 MiB in one `log.emit`.
    let ((answer, log), peak) = peak_during(|| logged(|| rule.apply_discount(&order())));
    assert_eq!(failure(answer), FailureCause::OutputTooLarge { limit: 64 << 10 });
    assert!(!log.contains("huge"), "nothing of the line was written:\n{log}");
    assert!(peak < 2 << 20, "the call made the host hold {peak} bytes at once");
}

// ---- 2. control characters, module names -------------------------------------------------------

#[test]
fn control_characters_in_rule_text_are_escaped_and_rule_text_is_bounded() {
    // Output room for its two 60 KB texts: the cleaning, not the budget, is tested.
    let roomy = Budgets { output_bytes: 1 << 20, ..budgets() };
    let rule = load_rule(&rule_runtime(), "hostile_text", World::DiscountRule, &[], roomy);
    let description = &rule.identity().description;
    assert!(description.starts_with(r"description\nINFO forged line\r\u{1b}[2J"), "{description}");
    assert_eq!(description.chars().count(), MAX_RULE_TEXT_CHARS);
    assert!(description.ends_with('…'));

    let (answer, log) = logged(|| rule.apply_discount(&order()));
    let lines = answer.unwrap().value;
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    for text in [&line.rule, &line.description].into_iter().chain(&line.reasons) {
        assert!(!has_unsafe_chars(text), "{text:?}");
        assert!(text.chars().count() <= MAX_RULE_TEXT_CHARS, "{} characters", text.chars().count());
    }
    assert_eq!(line.rule, r"hostile-text\nINFO forged line\r\u{1b}[2J\u{1b}[31m\u{202e}");
    assert!(line.description.ends_with('…'), "a 60 KB description is cut: {}", line.description);
    assert_eq!(line.reasons[0], r"reason\nINFO forged line\r\u{1b}[2J\u{1b}[31m\u{202e}");
    // Its log line: message, key and value escaped.
    assert!(log.contains(r"applying\nINFO forged line\r\u{1b}[2J"), "{log}");
    assert!(log.contains(r"key\nINFO forged line"), "{log}");
    assert_no_forgery(&log);

    // A refusal's message, which reaches the client, too.
    let mut with_coupon = order();
    with_coupon.coupon_code = Some("ANY".into());
    match rule.apply_discount(&with_coupon) {
        Err(RuleError::Refused { refusal: Refusal::InvalidCoupon { message }, .. }) => {
            assert!(message.starts_with(r"coupon\nINFO forged line"), "{message}");
            assert!(!has_unsafe_chars(&message));
            assert_eq!(message.chars().count(), MAX_RULE_TEXT_CHARS);
        }
        other => panic!("expected an invalid-coupon refusal, got {other:?}"),
    }
}

#[test]
fn a_module_with_an_unusable_name_or_version_is_refused_naming_the_file() {
    let long = "n".repeat(65);
    let cases: [(&str, &str, &str); 6] = [
        ("name", "evil\nINFO forged line", "name"),
        ("name", "", "name"),
        ("name", "   ", "name"),
        ("name", &long, "name"),
        ("version", "1.0.0\x1b[2J", "version"),
        ("version", "", "version"),
    ];
    for (key, value, field) in cases {
        let config: ModuleConfig = [(key.to_string(), value.to_string())].into();
        let error = match rule_runtime().load(&wasm("hostile_text"), World::DiscountRule, config, budgets()) {
            Ok(module) => panic!("{key}={value:?} loaded as {}", module.identity()),
            Err(e) => e,
        };
        assert!(
            matches!(&error, LoadError::BadIdentity { field: f, expected: World::DiscountRule, .. } if *f == field),
            "{key}={value:?}: {error:?}"
        );
        let text = error.to_string();
        assert!(text.contains("hostile_text.wasm"), "{text}");
        assert!(text.contains(field), "{text}");
        assert!(!has_unsafe_chars(&text), "the refusal itself is clean: {text:?}");
        assert!(error.file().ends_with("hostile_text.wasm"));
    }
    // At the limit, and a plain version: loads.
    let config: ModuleConfig = [("name".to_string(), "n".repeat(64))].into();
    rule_runtime().load(&wasm("hostile_text"), World::DiscountRule, config, budgets()).unwrap();
}

// ---- 3. the output budget, before copying -----------------------------------------------------

#[test]
fn an_answer_of_aliased_strings_is_refused_before_the_host_copies_it() {
    let runtime = new_rule_runtime();
    // 2,000 reasons aliasing one 1 MiB buffer: 2 GiB if the host copied each.
    let aliasing = load_rule(&runtime, "hostile_alias", World::DiscountRule, &[], budgets());
    let (answer, peak) = peak_during(|| aliasing.apply_discount(&order()));
    assert_eq!(failure(answer), FailureCause::OutputTooLarge { limit: 64 << 10 });
    assert!(peak < 2 << 20, "the call made the host hold {peak} bytes at once");

    // Under the largest output budget a manifest may set, the host holds at
    // most about that budget, never the aliases' 2 GiB.
    let largest = Budgets { output_bytes: smartmart::test_support::MAX_OUTPUT_BYTES, ..budgets() };
    let aliasing = load_rule(&runtime, "hostile_alias", World::DiscountRule, &[], largest);
    let (answer, peak) = peak_during(|| aliasing.apply_discount(&order()));
    assert_eq!(failure(answer), FailureCause::OutputTooLarge { limit: 16 << 20 });
    assert!(peak < (16 << 20) + (2 << 20), "the call made the host hold {peak} bytes at once");

    // A sane answer is unaffected.
    let gold = load_rule(&runtime, "gold_loyalty", World::DiscountRule, &[], budgets());
    assert_eq!(gold.apply_discount(&order()).unwrap().value.len(), 1);
}

#[test]
fn output_budgets_above_the_cap_are_refused() {
    let over = Budgets { output_bytes: (16 << 20) + 1, ..budgets() };
    let error = rule_runtime()
        .load(&wasm("gold_loyalty"), World::DiscountRule, ModuleConfig::new(), over)
        .map(|m| m.identity().clone())
        .unwrap_err();
    assert!(matches!(&error, LoadError::Budgets { .. }), "{error:?}");
    assert!(error.to_string().contains("output_bytes"), "{error}");
}

// ---- 5. a failed rule's words stay with the operators ------------------------------------------

const MARKER: &str = "PANIC-MARKER-5f1c9e";

#[tokio::test]
async fn a_failed_rule_answers_an_error_id_and_only_operators_see_what_it_said() {
    let plugins = PluginDir::new(
        &[("hostile_panic", "hostile_panic.wasm")],
        r#"
[[discount]]
module = "hostile_panic.wasm"
fail_mode = "closed"
budgets = { time_ms = 10000 }
"#,
    );
    let server = TestServer::start_with(plugins.path(), |_| {}).await;
    let body = json!({"customer_id": "C-1001", "payment": {"token": "tok_ok"}});
    let answer = server.order("C-1001", &[("HDMI-2M", 1)], &body).await;
    answer.assert_error(503, "RULE_FAILED");
    let text = answer.text();
    assert!(!text.contains(MARKER), "the guest's panic message reached the client: {text}");
    assert!(!text.contains("coupon engine crashed"), "{text}");
    assert!(!text.contains("unreachable"), "the trap's detail reached the client: {text}");
    let details = &answer.json["error"]["details"];
    assert_eq!(details["slot"], "discount");
    assert_eq!(details["module"], "hostile_panic.wasm");
    assert_eq!(details["version"], "0.1.0");
    assert_eq!(details["cause"], "trap");
    let error_id = details["error_id"].as_str().expect("details.error_id").to_string();
    assert!(error_id.starts_with("rerr_"), "{error_id}");

    // Operators look it up.
    let listed = send(server.admin(Method::GET, "/v1/admin/rule-errors")).await;
    assert_eq!(listed.status, 200, "{}", listed.text());
    let entry = listed.json.as_array().unwrap().iter().find(|e| e["error_id"] == error_id.as_str()).cloned();
    let entry = entry.unwrap_or_else(|| panic!("{error_id} is not listed: {}", listed.text()));
    assert!(entry["cause"].as_str().unwrap().contains(MARKER), "{entry}");
    assert_eq!(entry["slot"], "discount");
    assert_eq!(entry["module"], "hostile_panic.wasm");
    assert_eq!(entry["cause_kind"], "trap");
    assert_eq!(entry["handling"], "rule_failed");
    // Operators only.
    send(server.web(Method::GET, "/v1/admin/rule-errors")).await.assert_error(401, "UNAUTHENTICATED");
    server.stop().await;
}

#[tokio::test]
async fn a_skipped_fail_open_rule_shows_its_kind_and_error_id_not_its_words() {
    let plugins = PluginDir::new(
        &[("hostile_panic", "hostile_panic.wasm")],
        r#"
[[discount]]
module = "hostile_panic.wasm"
fail_mode = "open"
budgets = { time_ms = 10000 }
"#,
    );
    let server = TestServer::start_with(plugins.path(), |_| {}).await;
    let body = json!({"customer_id": "C-1001", "payment": {"token": "tok_ok"}});
    let answer = server.order("C-1001", &[("HDMI-2M", 1)], &body).await;
    assert_eq!(answer.status, 201, "{}", answer.text());
    let text = answer.text();
    assert!(!text.contains(MARKER), "the guest's panic message reached the invoice: {text}");
    assert!(!text.contains("coupon engine crashed"), "{text}");
    let skipped = &answer.json["skipped_rules"];
    assert_eq!(skipped.as_array().map(Vec::len), Some(1), "{text}");
    assert_eq!(skipped[0]["slot"], "discount");
    assert_eq!(skipped[0]["module"], "hostile_panic.wasm");
    assert_eq!(skipped[0]["cause"], "trap");
    let error_id = skipped[0]["error_id"].as_str().expect("skipped_rules[0].error_id").to_string();
    assert!(error_id.starts_with("rerr_"), "{error_id}");

    let listed = send(server.admin(Method::GET, "/v1/admin/rule-errors")).await;
    let entry = listed.json.as_array().unwrap().iter().find(|e| e["error_id"] == error_id.as_str()).cloned();
    let entry = entry.unwrap_or_else(|| panic!("{error_id} is not listed: {}", listed.text()));
    assert!(entry["cause"].as_str().unwrap().contains(MARKER), "{entry}");
    assert_eq!(entry["cause_kind"], "trap");
    assert_eq!(entry["handling"], "skipped");
    server.stop().await;
}
