//! TLS to PostgreSQL (`store::postgres::tls`), against the local test
//! server: Debian's cluster, `ssl = on` with its snakeoil certificate
//! (self-signed, for `localhost`). Each `sslmode` as the server sees it
//! (`pg_stat_ssl`), the chain and host-name checks with `sslrootcert`, a
//! root that did not sign the server's certificate, an unusable root file,
//! and a server that declines TLS (the real one behind a proxy that answers
//! its TLS request with PostgreSQL's "no"). A server without that
//! certificate fails these tests, saying what they need.

use std::path::Path;
use std::time::Duration;

use smartmart::store::{PostgresOptions, Store, StoreError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::store::{TestSchema, admin, postgres_url};
use crate::support::tls::TestCa;

/// The test server's certificate: its own root, since it signed itself.
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// The server's certificate as a root file, once the server is known to
/// serve TLS with it; a failure saying what is missing otherwise.
async fn server_root() -> &'static str {
    let need = "these tests need the PostgreSQL test server to run with ssl = on and Debian's snakeoil \
                certificate (apt-get install ssl-cert, which makes it; ssl = on and ssl_cert_file = \
                '/etc/ssl/certs/ssl-cert-snakeoil.pem' in postgresql.conf, Debian's defaults)";
    assert!(Path::new(SNAKEOIL).is_file(), "{SNAKEOIL} is missing: {need}");
    let client = admin(&postgres_url()).await;
    let setting = async |name: &str| -> String {
        client.query_one(&format!("SHOW {name}"), &[]).await.unwrap_or_else(|e| panic!("SHOW {name}: {e}")).get(0)
    };
    let (ssl, cert_file) = (setting("ssl").await, setting("ssl_cert_file").await);
    assert_eq!((ssl.as_str(), cert_file.as_str()), ("on", SNAKEOIL), "the server's TLS: {need}");
    SNAKEOIL
}

/// Whether each session of the server's named `application` (its
/// `application_name`) is encrypted, as the server sees it.
pub async fn sessions_encrypted(application: &str) -> Vec<bool> {
    let client = admin(&postgres_url()).await;
    let rows = client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
            &[&application],
        )
        .await
        .expect("reading pg_stat_ssl");
    rows.iter().map(|row| row.get(0)).collect()
}

/// The schema's URL at `host:port` instead of the test server's
/// 127.0.0.1:5432, with `params` (`key=value&…`) added.
fn url_at(schema: &TestSchema, host: &str, params: &str) -> String {
    let local = "@127.0.0.1:5432/";
    assert!(schema.url.contains(local), "these tests know the default test server only: {}", schema.url);
    format!("{}&{params}", schema.url.replace(local, &format!("@{host}/")))
}

async fn open(url: &str) -> Result<Store, StoreError> {
    let options = PostgresOptions { connect_timeout: Duration::from_secs(5), ..PostgresOptions::default() };
    Store::open_postgres(url, &options).await
}

/// What a query (the store's ping) costs on the wire: (round trips, transactions).
async fn query_cost(store: &Store) -> (u64, u64) {
    let before = store.wire_totals().expect("a PostgreSQL store counts its wire");
    assert!(store.ping().await, "the store does not answer");
    // The driver closes the ping's statement after answering (a Close and a
    // Sync, whose ReadyForQuery comes later): let the connection settle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = store.wire_totals().expect("a PostgreSQL store counts its wire");
    (after.round_trips - before.round_trips, after.transactions - before.transactions)
}

/// [`query_cost`] on a session in the clear.
async fn query_cost_in_the_clear(schema: &TestSchema) -> (u64, u64) {
    let store = open(&url_at(schema, "127.0.0.1:5432", "sslmode=disable")).await.expect("sslmode=disable");
    query_cost(&store).await
}

/// A store that answers, its sessions (named by `application_name`)
/// encrypted or not as `encrypted` says, and a query costing what it costs
/// in the clear (`in_the_clear`): the wire is counted inside TLS.
async fn assert_sessions(store: &Store, application: &str, encrypted: bool, in_the_clear: (u64, u64)) {
    let spent = query_cost(store).await;
    assert_eq!(spent, in_the_clear, "{application}: (round trips, transactions) of a query, against in the clear");
    let sessions = sessions_encrypted(application).await;
    assert!(!sessions.is_empty(), "{application}: no session of the store's on the server");
    assert!(sessions.iter().all(|s| *s == encrypted), "{application}: sessions encrypted {sessions:?}");
}

/// `require` encrypts (the certificate unchecked), `disable` does not, and
/// a URL without `sslmode` (`prefer`, as every URL before TLS) still works,
/// encrypted since this server offers TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_gives_the_session_it_names() {
    server_root().await;
    let schema = TestSchema::create().await;
    let in_the_clear = query_cost_in_the_clear(&schema).await;
    for (sslmode, encrypted) in [(Some("require"), true), (Some("disable"), false), (None, true)] {
        let application = format!("{}_{}", schema.name, sslmode.unwrap_or("none"));
        let mode = sslmode.map(|m| format!("&sslmode={m}")).unwrap_or_default();
        let url = url_at(&schema, "127.0.0.1:5432", &format!("application_name={application}{mode}"));
        let store = open(&url).await.unwrap_or_else(|e| panic!("sslmode {sslmode:?}: {e}"));
        assert_sessions(&store, &application, encrypted, in_the_clear).await;
    }
}

/// `verify-full` with the server's certificate as the root: the host
/// `localhost` (the certificate's name) passes, also reached through
/// `hostaddr`; the host 127.0.0.1, a name the certificate does not hold,
/// is refused at start; `verify-ca` checks the chain only, so 127.0.0.1 passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_chain_and_the_host_name() {
    let root = server_root().await;
    let schema = TestSchema::create().await;
    let application = format!("{}_verified", schema.name);
    let verify_full = format!("sslmode=verify-full&sslrootcert={root}&application_name={application}");

    let store = open(&url_at(&schema, "localhost:5432", &verify_full)).await.expect("verify-full for localhost");
    assert_sessions(&store, &application, true, query_cost_in_the_clear(&schema).await).await;
    let through_hostaddr = format!("{verify_full}&hostaddr=127.0.0.1");
    let store = open(&url_at(&schema, "localhost:5432", &through_hostaddr)).await.expect("localhost at its hostaddr");
    assert!(store.ping().await);

    let err = open(&url_at(&schema, "127.0.0.1:5432", &verify_full)).await.expect_err("127.0.0.1 is not localhost");
    let message = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let name_refused = message.contains("not valid for name") || message.contains("NotValidForName");
    assert!(message.contains("TLS certificate refused") && name_refused, "{message}");

    let verify_ca = format!("sslmode=verify-ca&sslrootcert={root}");
    let store = open(&url_at(&schema, "127.0.0.1:5432", &verify_ca)).await.expect("verify-ca ignores the name");
    assert!(store.ping().await);
}

/// A root that did not sign the server's certificate: refused at start,
/// the certificate problem named, with `verify-full`, `verify-ca`, and
/// `require` (which checks the chain when given a root, as libpq does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_that_did_not_sign_the_certificate_is_refused_at_start() {
    server_root().await;
    let schema = TestSchema::create().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let other = TestCa::new("not the server's root").write_pem(dir.path());
    for sslmode in ["verify-full", "verify-ca", "require"] {
        // hostaddr: the refusal is the only outcome (not "::1 refused" when
        // localhost also resolves to an address the server does not listen on).
        let params = format!("sslmode={sslmode}&sslrootcert={}&hostaddr=127.0.0.1", other.display());
        let err = open(&url_at(&schema, "localhost:5432", &params)).await.expect_err("an unknown issuer");
        let message = err.to_string();
        assert!(matches!(err, StoreError::Unavailable(_)), "{sslmode}: {err:?}");
        assert!(
            message.contains("PostgreSQL at postgres://root@localhost:5432/test")
                && message.contains("TLS certificate refused: invalid peer certificate: UnknownIssuer"),
            "{sslmode}: {message}"
        );
    }
}

/// A root file that cannot be used fails the start, named; so does an
/// `sslmode` libpq has and the store does not (`allow`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_root_file_or_sslmode_is_named() {
    let schema = TestSchema::create().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let missing = dir.path().join("missing.pem");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("writing a file");
    let cases = [
        (
            format!("sslmode=verify-full&sslrootcert={}", missing.display()),
            format!("sslrootcert {}: cannot read it", missing.display()),
        ),
        (
            format!("sslmode=verify-full&sslrootcert={}", not_pem.display()),
            format!("sslrootcert {}: no PEM certificate in it", not_pem.display()),
        ),
        ("sslmode=allow".to_string(), "invalid PostgreSQL URL: sslmode `allow` is not supported".to_string()),
    ];
    for (params, expected) in cases {
        let err = open(&url_at(&schema, "localhost:5432", &params)).await.expect_err("refused at start");
        assert!(matches!(err, StoreError::Unavailable(ref m) if m.contains(&expected)), "{params}: {err}");
    }
}

/// The test server behind a proxy that declines TLS as a server without
/// it does (PostgreSQL's `N` to an SSLRequest) and passes every other byte
/// both ways: a server without TLS, made of the real one. Its address.
struct DecliningProxy {
    port: u16,
    task: JoinHandle<()>,
}

impl DecliningProxy {
    /// The SSLRequest: its length (8), then the code 1234 5679.
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

    async fn start() -> DecliningProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a local port for the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(Self::pass(client));
            }
        });
        DecliningProxy { port, task }
    }

    async fn pass(mut client: TcpStream) -> std::io::Result<()> {
        let mut server = TcpStream::connect("127.0.0.1:5432").await?;
        let mut first = [0u8; 8];
        client.read_exact(&mut first).await?;
        if first == Self::SSL_REQUEST {
            client.write_all(b"N").await?;
        } else {
            server.write_all(&first).await?;
        }
        tokio::io::copy_bidirectional(&mut client, &mut server).await.map(|_| ())
    }
}

impl Drop for DecliningProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Against a server without TLS, `require` fails at start saying so, and
/// `prefer` (no `sslmode`) goes on in the clear, counted on the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls_fails_require_and_serves_prefer_in_the_clear() {
    let schema = TestSchema::create().await;
    let proxy = DecliningProxy::start().await;
    let at = format!("127.0.0.1:{}", proxy.port);

    let err = open(&url_at(&schema, &at, "sslmode=require")).await.expect_err("require without TLS");
    let message = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(message.contains("sslmode=require") && message.contains("server does not support TLS"), "{message}");

    let application = format!("{}_declined", schema.name);
    let store = open(&url_at(&schema, &at, &format!("application_name={application}"))).await.expect("prefer");
    assert_sessions(&store, &application, false, query_cost_in_the_clear(&schema).await).await;
}
