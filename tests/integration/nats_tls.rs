//! TLS and authentication of the NATS sink, against real nats-servers of
//! the tests' own (`support::nats_server`, JetStream on), with a
//! certificate authority made per test (rcgen). Events published through
//! the sink are read back from the stream by a client of the test's own;
//! each refusal — an untrusted certificate, a host the certificate does not
//! name, a missing or foreign client certificate, wrong or missing
//! credentials, a server without TLS — fails the delivery with the message
//! that says what to fix, and stores nothing. Three servers: TLS with users
//! by password and NKey; mutual TLS with a token (also under the engine: its
//! orders are confirmed while NATS refuses it, and their events go out once
//! it is given its certificate); decentralized authentication with a
//! `.creds` file.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::ConnectOptions;
use async_nats::jetstream::{self, consumer::AckPolicy, consumer::pull};
use futures::StreamExt as _;
use serde_json::json;
use smartmart::app::Engine;
use smartmart::domain::status::EventKind;
use smartmart::events::{ClientCertificate, NatsAuth, NatsConnectError, NatsTls};
use smartmart::events::{EventSink, NatsSettings, NatsSink, SinkChoice, SinkEvent};
use tempfile::TempDir;

use crate::support::nats_jwt::Operator;
use crate::support::nats_server::NatsServer;
use crate::support::tls::TestCa;
use crate::support::{TestEngine, bundled_plugins};

const STREAM: &str = "SMARTMART_TLS_TEST";
const PREFIX: &str = "smartmart.tls";
const PASSWORD: &str = "nats-password-of-the-test";
const TOKEN: &str = "nats-token-of-the-test";

/// One test's certificates, as files: a CA, the server's certificate (for
/// `localhost` only, so that `127.0.0.1` is a host it does not name), a
/// client certificate, and a CA and a client certificate the server does
/// not trust.
struct Pki {
    _dir: TempDir,
    ca_file: PathBuf,
    server: (PathBuf, PathBuf),
    client: ClientCertificate,
    other_ca_file: PathBuf,
    other_client: ClientCertificate,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("a temp dir for the certificates");
        let ca = TestCa::new("SmartMart NATS test CA");
        let other = TestCa::new("Another CA");
        let client_files = |(cert_file, key_file): (PathBuf, PathBuf)| ClientCertificate { cert_file, key_file };
        Pki {
            ca_file: ca.write_pem(dir.path()),
            server: ca.issue(&["localhost"]).write_pem(dir.path(), "server"),
            client: client_files(ca.issue_client("smartmart").write_pem(dir.path(), "client")),
            other_ca_file: other.write_pem(dir.path()),
            other_client: client_files(other.issue_client("smartmart").write_pem(dir.path(), "other-client")),
            _dir: dir,
        }
    }

    /// The server's `tls` block; `verify`: a client certificate signed by the CA is required.
    fn server_tls(&self, verify: bool) -> String {
        format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: {verify}\n  timeout: 10\n}}\n",
            self.server.0.display(),
            self.server.1.display(),
            self.ca_file.display()
        )
    }

    /// Trusting the test's CA (the file an operator sets as `SMARTMART_NATS_CA_FILE`).
    fn trusted(&self) -> NatsTls {
        NatsTls { ca_file: Some(self.ca_file.clone()), ..NatsTls::default() }
    }

    /// A reader's options: TLS trusting the CA, with the client certificate when `mutual`.
    fn reader(&self, mutual: bool) -> ConnectOptions {
        let options = ConnectOptions::new().require_tls(true).add_root_certificates(self.ca_file.clone());
        if mutual {
            options.add_client_certificate(self.client.cert_file.clone(), self.client.key_file.clone())
        } else {
            options
        }
    }
}

/// The sink's settings: the test's stream, a 10 s hang guard.
fn settings(url: String, tls: NatsTls, auth: NatsAuth) -> NatsSettings {
    NatsSettings {
        url,
        stream: STREAM.into(),
        subject_prefix: PREFIX.into(),
        timeout: Duration::from_secs(10),
        tls,
        auth,
        ..NatsSettings::default()
    }
}

/// Delivers the audit events `<tag>-1` and `<tag>-2` through a new sink.
async fn deliver(settings: NatsSettings, tag: &str) -> anyhow::Result<()> {
    let sink = NatsSink::new(settings).expect("valid sink settings");
    let events: Vec<SinkEvent> = (1..=2)
        .map(|n| {
            let id = format!("{tag}-{n}");
            SinkEvent { envelope: json!({"id": id, "type": "audit"}).to_string(), id }
        })
        .collect();
    sink.deliver(EventKind::Audit, &events).await.map(drop)
}

/// Why a delivery through a new sink was refused, as the sink explains it.
async fn refused(settings: NatsSettings, tag: &str) -> NatsConnectError {
    let error = deliver(settings, tag).await.expect_err("the connection is refused");
    error.downcast_ref::<NatsConnectError>().cloned().unwrap_or_else(|| panic!("not explained: {error:#}"))
}

/// Every message of the stream, in order — (subject, `Nats-Msg-Id`) — read
/// by a pull consumer of a client connected with `options`.
async fn stored(url: &str, options: ConnectOptions) -> Vec<(String, String)> {
    let connect = options.connection_timeout(Duration::from_secs(10)).connect(url);
    let client = tokio::time::timeout(Duration::from_secs(30), connect)
        .await
        .expect("the reader connects within 30 s")
        .expect("the reader connects");
    let mut stream = jetstream::new(client).get_stream(STREAM).await.expect("the sink created the stream");
    let count = stream.info().await.expect("stream info").state.messages as usize;
    let consumer = stream
        .create_consumer(pull::Config { ack_policy: AckPolicy::None, ..pull::Config::default() })
        .await
        .expect("a pull consumer");
    let mut messages = Vec::new();
    while messages.len() < count {
        let before = messages.len();
        let mut batch = consumer.fetch().max_messages(100).messages().await.expect("fetching");
        while let Some(message) = batch.next().await {
            let message = message.expect("a message");
            let id = message.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).expect("a Nats-Msg-Id");
            messages.push((message.subject.to_string(), id.as_str().to_string()));
        }
        assert!(messages.len() > before, "the consumer stopped at {} of {count} messages", messages.len());
    }
    messages
}

/// The ids of `messages`, checking that each is an audit event.
fn audit_ids(messages: Vec<(String, String)>) -> Vec<String> {
    messages
        .into_iter()
        .map(|(subject, id)| {
            assert_eq!(subject, format!("{PREFIX}.audit"), "{id}");
            id
        })
        .collect()
}

/// The engine's outbox: (event id, state, last error).
async fn outbox(t: &TestEngine) -> Vec<(String, String, Option<String>)> {
    t.query(|c| {
        let mut stmt = c.prepare("SELECT id, state, last_error FROM outbox ORDER BY seq")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_users_by_password_or_nkey() {
    let pki = Pki::new();
    let nkey_user = nkeys::KeyPair::new_user();
    let server = NatsServer::start(&format!(
        "{}authorization {{\n  users: [\n    {{ user: \"smartmart\", password: \"{PASSWORD}\" }}\n    {{ nkey: \"{}\" }}\n  ]\n}}",
        pki.server_tls(false),
        nkey_user.public_key()
    ))
    .await;
    let url = server.url("tls", "localhost");
    let user = NatsAuth::UserPassword { user: "smartmart".into(), password: PASSWORD.into() };

    // Over TLS verified against the CA file: a user and password, a user
    // NKey, and the user and password in the URL (async-nats alone ignores them).
    deliver(settings(url.clone(), pki.trusted(), user.clone()), "password").await.expect("delivered with the password");
    let nkey = NatsAuth::NKeySeed(nkey_user.seed().expect("a seed"));
    deliver(settings(url.clone(), pki.trusted(), nkey), "nkey").await.expect("delivered with the NKey");
    let in_url = server.url("tls", &format!("smartmart:{PASSWORD}@localhost"));
    deliver(settings(in_url, pki.trusted(), NatsAuth::None), "url").await.expect("delivered with the URL's password");

    // A CA that did not sign the server's certificate.
    let other_ca = NatsTls { ca_file: Some(pki.other_ca_file.clone()), ..NatsTls::default() };
    let error = refused(settings(url.clone(), other_ca, user.clone()), "wrong-ca").await;
    assert!(matches!(error, NatsConnectError::UntrustedCertificate { .. }), "{error}");
    let named = format!("NATS TLS: certificate not trusted (SMARTMART_NATS_CA_FILE={})", pki.other_ca_file.display());
    assert!(error.to_string().starts_with(&named), "{error}");
    // TLS required without a CA file: the system's roots, which do not hold the test's CA.
    let system = NatsTls { required: true, ..NatsTls::default() };
    let error = refused(settings(server.url("nats", "localhost"), system, user.clone()), "system-roots").await;
    assert!(matches!(error, NatsConnectError::UntrustedCertificate { .. }), "{error}");
    assert!(error.to_string().contains("the system's roots; SMARTMART_NATS_CA_FILE is not set"), "{error}");
    // A host the certificate does not name.
    let error = refused(settings(server.url("tls", "127.0.0.1"), pki.trusted(), user.clone()), "wrong-host").await;
    assert!(matches!(error, NatsConnectError::WrongHost { .. }), "{error}");

    // Wrong or missing credentials: named, their secrets never shown.
    let wrong = NatsAuth::UserPassword { user: "smartmart".into(), password: "not-the-password".into() };
    let error = refused(settings(url.clone(), pki.trusted(), wrong), "wrong-password").await;
    assert_eq!(
        error.to_string(),
        "NATS refused the credentials: the user `smartmart` and password of SMARTMART_NATS_USER and \
         SMARTMART_NATS_PASSWORD (authorization violation)"
    );
    let stranger = nkeys::KeyPair::new_user();
    let seed = NatsAuth::NKeySeed(stranger.seed().expect("a seed"));
    let error = refused(settings(url.clone(), pki.trusted(), seed), "wrong-nkey").await;
    assert!(matches!(error, NatsConnectError::CredentialsRefused { .. }), "{error}");
    assert!(error.to_string().contains(&stranger.public_key()), "the NKey is named by its public key: {error}");
    let error = refused(settings(url.clone(), pki.trusted(), NatsAuth::None), "anonymous").await;
    assert_eq!(error, NatsConnectError::CredentialsMissing);

    // Exactly the accepted deliveries are stored.
    let reader = pki.reader(false).user_and_password("smartmart".into(), PASSWORD.into());
    assert_eq!(
        audit_ids(stored(&url, reader).await),
        ["password-1", "password-2", "nkey-1", "nkey-2", "url-1", "url-2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_token_and_orders_served_while_nats_refuses() {
    let pki = Pki::new();
    let server = NatsServer::start(&format!("{}authorization {{ token: \"{TOKEN}\" }}", pki.server_tls(true))).await;
    let url = server.url("tls", "localhost");
    let token = NatsAuth::Token(TOKEN.into());
    let mutual = NatsTls { client_cert: Some(pki.client.clone()), ..pki.trusted() };

    // The engine without a client certificate: NATS refuses it, the order
    // is confirmed all the same and its events wait, the reason recorded.
    let without = settings(url.clone(), pki.trusted(), token.clone());
    let t = TestEngine::start_with(&bundled_plugins(), |s| s.event_sink = SinkChoice::Nats(without)).await;
    let order = t.order("C-1001", &[("HDMI-2M", 1)], "tok_ok", None).await.expect("the order is confirmed");
    t.drain().await;
    let rows = outbox(&t).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(rows.iter().all(|r| r.1 == "READY"), "nothing delivered: {rows:?}");
    let tried: Vec<&str> = rows.iter().filter_map(|r| r.2.as_deref()).collect();
    assert!(!tried.is_empty(), "delivery was attempted: {rows:?}");
    for error in tried {
        assert!(
            error.starts_with(
                "NATS TLS: the server refused the connection without a client certificate: it requires mutual TLS; \
                 set SMARTMART_NATS_CLIENT_CERT_FILE and SMARTMART_NATS_CLIENT_KEY_FILE"
            ),
            "{error}"
        );
    }

    // Given its certificate, the engine delivers the waiting events.
    let TestEngine { engine, dir } = t;
    let mut engine_settings = engine.settings().clone();
    engine.shutdown().await;
    engine_settings.event_sink = SinkChoice::Nats(settings(url.clone(), mutual.clone(), token.clone()));
    let t = TestEngine { engine: Engine::start(engine_settings).await.expect("restarting the engine"), dir };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !outbox(&t).await.iter().all(|r| r.1 == "DELIVERED") {
        assert!(Instant::now() < deadline, "events still undelivered: {:?}", outbox(&t).await);
        t.drain().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.engine.shutdown().await;

    // The token in the URL (`token@`, as the nats tools write it).
    let in_url = settings(server.url("tls", &format!("{TOKEN}@localhost")), mutual.clone(), NatsAuth::None);
    deliver(in_url, "url-token").await.expect("delivered with the URL's token");

    // A client certificate of a CA the server does not trust; a wrong token.
    let foreign = NatsTls { client_cert: Some(pki.other_client.clone()), ..pki.trusted() };
    let error = refused(settings(url.clone(), foreign, token.clone()), "foreign-certificate").await;
    assert!(matches!(error, NatsConnectError::ClientCertificateRefused { .. }), "{error}");
    let named = format!("SMARTMART_NATS_CLIENT_CERT_FILE={}", pki.other_client.cert_file.display());
    assert!(error.to_string().contains(&named), "{error}");
    let error = refused(settings(url.clone(), mutual.clone(), NatsAuth::Token("not-the-token".into())), "bad").await;
    assert_eq!(
        error.to_string(),
        "NATS refused the credentials: the token of SMARTMART_NATS_TOKEN (authorization violation)"
    );

    // The order's three events and the URL token's two, each once; nothing of the refused sinks.
    let mut stored_ids: Vec<String> =
        stored(&url, pki.reader(true).token(TOKEN.into())).await.into_iter().map(|m| m.1).collect();
    let mut accepted: Vec<String> = order.events.iter().map(|e| e.id.clone()).collect();
    accepted.extend(["url-token-1".to_string(), "url-token-2".to_string()]);
    stored_ids.sort();
    accepted.sort();
    assert_eq!(stored_ids, accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creds_file_of_decentralized_authentication() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let operator = Operator::generate();
    let account = operator.account("SMARTMART");
    let server = NatsServer::start(&operator.server_config(dir.path(), &[&account])).await;
    let creds = dir.path().join("smartmart.creds");
    std::fs::write(&creds, account.user_creds("smartmart")).expect("writing the creds file");
    let url = server.url("nats", "127.0.0.1");
    let with_creds =
        |url: String, creds: &PathBuf| settings(url, NatsTls::default(), NatsAuth::CredsFile(creds.clone()));

    deliver(with_creds(url.clone(), &creds), "creds").await.expect("delivered with the creds file");

    // A user of an account the server does not know (another operator's).
    let stranger = dir.path().join("stranger.creds");
    std::fs::write(&stranger, Operator::generate().account("OTHER").user_creds("smartmart")).expect("writing");
    let error = refused(with_creds(url.clone(), &stranger), "stranger").await;
    assert_eq!(
        error.to_string(),
        format!(
            "NATS refused the credentials: the user JWT of SMARTMART_NATS_CREDS_FILE={} (authorization violation)",
            stranger.display()
        )
    );
    // A tls:// URL requires TLS, which this server does not speak.
    let ca_file = TestCa::new("SmartMart NATS test CA").write_pem(dir.path());
    let tls = NatsTls { ca_file: Some(ca_file), ..NatsTls::default() };
    let no_tls = settings(server.url("tls", "127.0.0.1"), tls, NatsAuth::CredsFile(creds.clone()));
    let error = refused(no_tls, "no-tls").await;
    assert!(matches!(error, NatsConnectError::NoTls { .. }), "{error}");
    assert!(error.to_string().contains("TLS is required by the tls:// scheme of SMARTMART_NATS_URL"), "{error}");

    let reader = ConnectOptions::new().credentials_file(&creds).await.expect("the reader's creds");
    assert_eq!(audit_ids(stored(&url, reader).await), ["creds-1", "creds-2"]);
}
