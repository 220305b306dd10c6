//! TLS and SASL to Kafka, against the real test broker (tansu; see
//! `support::kafka`) and the real `smartmart serve` binary.
//!
//! TLS: tansu 0.6.0 serves plaintext only (it refuses `--cert` together
//! with `--key`, and its broker builds a TLS acceptor it never uses), so the
//! broker advertises a TLS front (`support::tls::TlsFront`, rustls) that
//! terminates TLS before it, as a TLS-terminating proxy would: a
//! certificate from a test CA for `localhost` and `127.0.0.1`, and client
//! certificates required. A second front serves a certificate for another
//! name.
//!
//! SASL: the broker runs with `--authentication` and SQLite storage, which
//! keeps SCRAM credentials (the in-memory one does not: storing one is a
//! no-op there), holding a user per mechanism made with `tansu user
//! create`. tansu 0.6.0 offers SCRAM-SHA-256 and SCRAM-SHA-512, not PLAIN
//! (its SASL library is built without it), so PLAIN is not tested against a
//! broker. Tested: a login with each SCRAM mechanism delivers an order's
//! events, read back by a consumer logged in the same way; a wrong password
//! and an unknown user are refused by name, the service still serving
//! orders.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use smartmart::domain::status::EventKind;
use smartmart::events::{EventSink, KafkaSettings, KafkaSink, SinkEvent};
use smartmart::events::{
    KafkaClientCertificate as ClientCertificate, KafkaRefusal as Refusal, KafkaSasl, KafkaTls, SaslMechanism,
};

use crate::support::kafka::{
    Broker, BrokerOptions, PARTITIONS, ScramUser, Service, assert_every_event_arrived, client_of, consume_all,
    place_orders, scram_client_of, test_prefix,
};
use crate::support::service::free_port;
use crate::support::tls::{TestCa, TlsFront};

/// A sink of its own topic prefix on `brokers`, TLS and SASL as given.
fn sink(brokers: &str, tls: Option<KafkaTls>, sasl: Option<KafkaSasl>) -> KafkaSink {
    KafkaSink::new(KafkaSettings {
        brokers: vec![brokers.to_string()],
        topic_prefix: test_prefix(),
        partitions: PARTITIONS as i32,
        // Short: a refused login is retried by rskafka until this passes.
        timeout: Duration::from_secs(2),
        tls,
        sasl,
        ..KafkaSettings::default()
    })
    .expect("a Kafka sink")
}

/// Places one order through `service`, waits until the dispatcher has tried
/// its events and been refused, and checks that nothing was delivered and
/// that every tried event's error and the dispatcher's log line name `why`.
async fn assert_one_order_refused_by_name(service: &mut Service, why: &str) {
    let placed = place_orders(service, 1).await;
    service
        .wait_for_outbox("delivery attempted and refused", |rows| {
            rows.len() == placed.len() * 3 && rows.iter().any(|r| r.4 > 0)
        })
        .await;
    let rows = service.outbox();
    assert!(rows.iter().all(|r| r.3 != "DELIVERED"), "nothing delivered: {rows:?}");
    let log = service.log();
    let tried: Vec<_> = rows.iter().filter(|r| r.4 > 0).collect();
    assert!(tried.iter().all(|r| r.5.as_deref().is_some_and(|e| e.contains(why))), "{rows:?}\n{log}");
    assert!(
        log.lines().any(|line| line.contains("event delivery failed") && line.contains(why)),
        "the dispatcher's log line names the refusal:\n{log}"
    );
}

/// One audit event of its own order.
fn audit_event(id: &str) -> SinkEvent {
    SinkEvent {
        id: id.into(),
        envelope: json!({"id": id, "type": "audit", "order_id": format!("ord_{id}"), "payload": {}}).to_string(),
    }
}

fn sasl(mechanism: SaslMechanism, username: &str, password: &str) -> Option<KafkaSasl> {
    Some(KafkaSasl { mechanism, username: username.into(), password: password.into() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_brokers_ca_delivers_and_an_untrusted_or_misnamed_certificate_is_refused_by_name() {
    let ca = TestCa::new("kafka-broker-ca");
    let stranger = TestCa::new("kafka-stranger-ca");
    let front_port = free_port();
    let broker =
        Broker::start_with(BrokerOptions { advertised_port: Some(front_port), ..BrokerOptions::default() }).await;
    let upstream: SocketAddr = broker.address().parse().unwrap();
    let front = TlsFront::start(
        ca.issue(&["localhost", "127.0.0.1"]).server_config_requiring_client_certificates(&ca),
        front_port,
        upstream,
    );
    let misnamed = TlsFront::start(ca.issue(&["kafka.invalid"]).server_config(), free_port(), upstream);
    let brokers = format!("127.0.0.1:{}", front.port());

    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_pem(dir.path());
    let stranger_file = stranger.write_pem(dir.path());
    let client_cert = ca.issue_client("smartmart");
    let (cert_file, key_file) = client_cert.write_pem(dir.path(), "smartmart-client");
    let env = |ca_file: &Path| {
        [
            ("SMARTMART_KAFKA_CA_FILE", ca_file.to_path_buf()),
            ("SMARTMART_KAFKA_CLIENT_CERT_FILE", cert_file.clone()),
            ("SMARTMART_KAFKA_CLIENT_KEY_FILE", key_file.clone()),
        ]
    };

    // The service with the broker's CA and a client certificate: every
    // event of every confirmed order is in its topic, read back over TLS.
    let prefix = test_prefix();
    let mut service = Service::start_with(&brokers, &prefix, 5_000, env(&ca_file)).await;
    let placed = place_orders(&service, 1).await;
    service.wait_for_outbox("every event delivered over TLS", |rows| rows.iter().all(|r| r.3 == "DELIVERED")).await;
    let consumer = client_of(&brokers, ca.client_config(Some(&client_cert))).await;
    assert_every_event_arrived(&placed, &consume_all(&consumer, &prefix).await);
    drop(service);

    // The service trusting another CA: it starts and confirms orders, and the
    // log and the outbox say the certificate is not trusted.
    let prefix = test_prefix();
    let mut service = Service::start_with(&brokers, &prefix, 1_000, env(&stranger_file)).await;
    assert_one_order_refused_by_name(&mut service, "the broker's TLS certificate is not trusted").await;
    assert!(consume_all(&consumer, &prefix).await.is_empty());
    drop(service);

    let tls = |ca_file: &Path, client: bool| {
        Some(KafkaTls {
            ca_file: Some(ca_file.to_path_buf()),
            client_certificate: client
                .then(|| ClientCertificate { cert_file: cert_file.clone(), key_file: key_file.clone() }),
        })
    };
    // A certificate for another host: refused as such.
    let error = sink(&format!("127.0.0.1:{}", misnamed.port()), tls(&ca_file, true), None)
        .deliver(EventKind::Audit, &[audit_event("evt_misnamed")])
        .await
        .expect_err("a certificate for kafka.invalid, reached at 127.0.0.1");
    assert!(matches!(error.downcast_ref::<Refusal>(), Some(Refusal::HostnameMismatch(_))), "{error:#}");
    assert!(format!("{error:#}").contains("not valid for the host it was reached at"), "{error:#}");

    // Without a client certificate the front ends the handshake: the
    // delivery above went through because the sink presented its own.
    let error = sink(&brokers, tls(&ca_file, false), None)
        .deliver(EventKind::Audit, &[audit_event("evt_anonymous")])
        .await
        .expect_err("no client certificate");
    assert!(error.downcast_ref::<Refusal>().is_none(), "not a certificate the sink refused: {error:#}");

    // SASL to a broker that has none enabled: the mechanism is named.
    let error = sink(&brokers, tls(&ca_file, true), sasl(SaslMechanism::ScramSha256, "shop", "secret"))
        .deliver(EventKind::Audit, &[audit_event("evt_no_sasl")])
        .await
        .expect_err("SASL to a broker without it");
    assert_eq!(
        error.downcast_ref::<Refusal>(),
        Some(&Refusal::SaslMechanismNotOffered(SaslMechanism::ScramSha256)),
        "{error:#}"
    );
}

/// The users the SASL tests' broker keeps, one per mechanism.
const SHOP_256: ScramUser =
    ScramUser { mechanism: SaslMechanism::ScramSha256, name: "shop-256", password: "kafka-password-256" };
const SHOP_512: ScramUser =
    ScramUser { mechanism: SaslMechanism::ScramSha512, name: "shop-512", password: "kafka-password-512" };

/// A broker that requires a SCRAM login and keeps [`SHOP_256`] and [`SHOP_512`].
async fn broker_with_scram_users() -> Broker {
    Broker::start_with(BrokerOptions {
        authentication: true,
        scram_users: &[SHOP_256, SHOP_512],
        ..BrokerOptions::default()
    })
    .await
}

/// The service's SASL settings for `user` with `password`: from a file
/// written in `file_in` (`SMARTMART_KAFKA_SASL_PASSWORD_FILE`), or in the
/// environment when `None`.
fn sasl_env(user: &ScramUser, password: &str, file_in: Option<&Path>) -> Vec<(&'static str, OsString)> {
    let mut env = vec![
        ("SMARTMART_KAFKA_SASL_MECHANISM", OsString::from(user.mechanism.as_str())),
        ("SMARTMART_KAFKA_SASL_USERNAME", OsString::from(user.name)),
    ];
    match file_in {
        Some(dir) => {
            let file = dir.join(format!("{}-password", user.name));
            std::fs::write(&file, format!("{password}\n")).unwrap();
            env.push(("SMARTMART_KAFKA_SASL_PASSWORD_FILE", file.into_os_string()));
        }
        None => env.push(("SMARTMART_KAFKA_SASL_PASSWORD", OsString::from(password))),
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_sha_256_and_512_logins_deliver_every_event_of_an_order() {
    let broker = broker_with_scram_users().await;
    let brokers = broker.address();
    let dir = tempfile::tempdir().unwrap();

    // Each mechanism, its user's password (SCRAM-SHA-512's from a file):
    // every event of the confirmed orders is in its topic, read back by a
    // consumer that logs in as the same user.
    for (user, password_file_in) in [(&SHOP_512, Some(dir.path())), (&SHOP_256, None)] {
        let prefix = test_prefix();
        let env = sasl_env(user, user.password, password_file_in);
        let mut service = Service::start_with(&brokers, &prefix, 5_000, env).await;
        let placed = place_orders(&service, 1).await;
        service
            .wait_for_outbox(&format!("every event delivered after a {} login", user.mechanism), |rows| {
                rows.len() == placed.len() * 3 && rows.iter().all(|r| r.3 == "DELIVERED")
            })
            .await;
        let consumer = scram_client_of(&brokers, user).await;
        assert_every_event_arrived(&placed, &consume_all(&consumer, &prefix).await);
        assert!(!service.log().contains(user.password), "the password is not logged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_scram_password_or_an_unknown_user_is_refused_by_name_and_orders_are_still_served() {
    let broker = broker_with_scram_users().await;
    let brokers = broker.address();

    // The service, SCRAM-SHA-512, a wrong password from a file: it starts
    // and confirms orders; the log line and the outbox say the login was
    // refused, naming the user, never the password.
    let dir = tempfile::tempdir().unwrap();
    let env = sasl_env(&SHOP_512, "not-the-password-512", Some(dir.path()));
    let prefix = test_prefix();
    let mut service = Service::start_with(&brokers, &prefix, 1_000, env).await;
    let refused = "SASL authentication failed: the broker refused user `shop-512` with SCRAM-SHA-512";
    assert_one_order_refused_by_name(&mut service, refused).await;
    assert!(!service.log().contains("not-the-password-512"), "the password is not logged");
    drop(service);
    // The user with its own password logs in (so what was refused is the
    // password) and finds nothing delivered.
    let consumer = scram_client_of(&brokers, &SHOP_512).await;
    assert!(consume_all(&consumer, &prefix).await.is_empty(), "nothing was delivered");

    // From the sink, SCRAM-SHA-256: the other mechanism's password (a user
    // is kept per mechanism), and a user the broker does not know.
    for (username, password) in [(SHOP_256.name, SHOP_512.password), ("nobody", SHOP_256.password)] {
        let error = sink(&brokers, None, sasl(SaslMechanism::ScramSha256, username, password))
            .deliver(EventKind::Audit, &[audit_event("evt_refused")])
            .await
            .expect_err("a login the broker refuses");
        assert_eq!(
            error.downcast_ref::<Refusal>(),
            Some(&Refusal::SaslAuthenticationFailed {
                mechanism: SaslMechanism::ScramSha256,
                username: username.into()
            }),
            "{error:#}"
        );
        assert!(!format!("{error:#}").contains("kafka-password"), "{error:#}");
    }
}
