//! Events on Kafka, against a real Kafka-protocol broker (tansu; see
//! `support::kafka`): the real `smartmart serve` binary with
//! `SMARTMART_EVENT_SINK=kafka`, the topics read back with rskafka as a
//! consumer would. One broker per test, each test a topic prefix of its own.
//! TLS and SASL: `kafka_security.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::json;
use smartmart::domain::status::EventKind;
use smartmart::events::{EventSink, KafkaSettings, KafkaSink, SinkEvent};
use smartmart::test_support::partition_for;

use crate::support::kafka::{
    Broker, PARTITIONS, Service, assert_every_event_arrived, consume, consume_all, place_orders, test_prefix,
};
use crate::support::service::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_orders_events_reach_their_topics_keyed_by_order_in_outbox_order() {
    let broker = Broker::start().await;
    let prefix = test_prefix();
    // The default timeout: a slow machine must not turn into a failed first attempt.
    let mut service = Service::start(&broker.address(), &prefix, 5_000).await;
    let placed = place_orders(&service, 3).await;
    service.wait_for_outbox("every event delivered", |rows| rows.iter().all(|r| r.3 == "DELIVERED")).await;
    let outbox = service.outbox();
    assert_eq!(outbox.len(), placed.len() * 3);
    // A healthy broker on loopback takes every batch at the first attempt
    // (a retried batch would be overtaken by later events: see below).
    assert!(outbox.iter().all(|r| r.4 == 0), "a delivery to the healthy broker failed: {outbox:?}");

    // The topics as the service creates them.
    let client = broker.client().await;
    let topics = client.list_topics().await.unwrap();
    for &kind in EventKind::ALL {
        let topic = topics.iter().find(|t| t.name == format!("{prefix}.{kind}")).expect("the topic was created");
        assert_eq!(topic.partitions, (0..PARTITIONS as i32).collect(), "{}", topic.name);
    }

    let consumed = consume_all(&client, &prefix).await;
    assert_every_event_arrived(&placed, &consumed);
    // Twelve orders over three partitions: more than one key shares a
    // partition, so the order within a partition says something.
    let used: BTreeSet<i32> = consumed.iter().map(|r| r.partition).collect();
    assert!(used.len() > 1, "the keys all went to one partition: {used:?}");

    // Within each partition, the first copy of each event comes in outbox
    // order for the audit and analytics events (ready when the order
    // commits, delivered in outbox order when no batch had to be retried);
    // fraud events become ready when their checks finish, in any order
    // across orders. Either way one order's records share a partition.
    let seq: BTreeMap<&str, i64> = outbox.iter().map(|r| (r.1.as_str(), r.0)).collect();
    for kind in [EventKind::Audit, EventKind::Analytics] {
        for partition in 0..PARTITIONS as i32 {
            let mut seen = BTreeSet::new();
            let seqs: Vec<i64> = consumed
                .iter()
                .filter(|r| r.event_type == kind.as_str() && r.partition == partition)
                .filter(|r| seen.insert(r.event_id.clone()))
                .map(|r| seq[r.event_id.as_str()])
                .collect();
            assert!(seqs.is_sorted(), "{kind} partition {partition}: outbox seqs {seqs:?} out of order");
        }
    }
    let offsets_ascend = consumed
        .windows(2)
        .all(|w| w[0].topic != w[1].topic || w[0].partition != w[1].partition || w[0].offset < w[1].offset);
    assert!(offsets_ascend, "the consumer reads each partition in offset order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kafka_down_at_start_orders_confirm_and_every_event_goes_out_once_it_is_up() {
    let port = free_port();
    let prefix = test_prefix();
    // A short timeout: each failing attempt while nothing listens lasts that long.
    let mut service = Service::start(&format!("127.0.0.1:{port}"), &prefix, 1_000).await;

    // Nothing listens: the orders are confirmed as usual, delivery is tried and fails.
    let placed = place_orders(&service, 1).await;
    service
        .wait_for_outbox("delivery attempted and failed", |rows| {
            rows.len() == placed.len() * 3 && rows.iter().any(|r| r.4 > 0)
        })
        .await;
    let rows = service.outbox();
    assert!(rows.iter().all(|r| r.3 != "DELIVERED"), "nothing delivered: {rows:?}");
    let tried: Vec<_> = rows.iter().filter(|r| r.4 > 0).collect();
    assert!(
        tried.iter().all(|r| r.5.as_deref().is_some_and(|e| e.contains("Kafka"))),
        "the error names Kafka: {rows:?}"
    );

    // The broker comes up on that port: the outbox retries deliver every event.
    let broker = Broker::start_on(port).await;
    service.wait_for_outbox("every event delivered", |rows| rows.iter().all(|r| r.3 == "DELIVERED")).await;
    let consumed = consume_all(&broker.client().await, &prefix).await;
    assert_every_event_arrived(&placed, &consumed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_delivery_is_stored_again_and_a_consumer_deduplicates_by_event_id() {
    let broker = Broker::start().await;
    let prefix = test_prefix();
    let settings = KafkaSettings {
        brokers: vec![broker.address()],
        topic_prefix: prefix.clone(),
        partitions: PARTITIONS as i32,
        timeout: Duration::from_secs(5),
        ..KafkaSettings::default()
    };
    let sink = KafkaSink::new(settings.clone()).unwrap();
    let event = |id: &str, order: &str| SinkEvent {
        id: id.into(),
        envelope: json!({"id": id, "type": "audit", "order_id": order, "payload": {}}).to_string(),
    };
    let batch = [event("evt_a", "ord_1"), event("evt_b", "ord_2"), event("evt_c", "ord_1")];
    // A crash after the acks and before the outbox marks: the same batch again.
    sink.deliver(EventKind::Audit, &batch).await.expect("the first delivery");
    let again = KafkaSink::new(settings).unwrap();
    again.deliver(EventKind::Audit, &batch).await.expect("the repeated delivery");

    let consumed = consume(&broker.client().await, &format!("{prefix}.audit")).await;
    // At least once: each event twice, on its order's partition, and one
    // order's events in the order they were handed over, both times.
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for record in &consumed {
        *copies.entry(&record.event_id).or_default() += 1;
        assert_eq!(record.partition as usize, partition_for(record.key.as_bytes(), PARTITIONS), "{record:?}");
    }
    assert_eq!(copies, BTreeMap::from([("evt_a", 2), ("evt_b", 2), ("evt_c", 2)]));
    let ord_1: Vec<&str> = consumed.iter().filter(|r| r.key == "ord_1").map(|r| r.event_id.as_str()).collect();
    assert_eq!(ord_1, ["evt_a", "evt_c", "evt_a", "evt_c"]);
    // A consumer that keeps the event ids it has seen processes each once.
    let mut seen = BTreeSet::new();
    let processed: Vec<&str> =
        consumed.iter().filter(|r| seen.insert(r.event_id.clone())).map(|r| r.event_id.as_str()).collect();
    assert_eq!(processed.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_topic_keeps_its_partitions_and_a_topic_lost_with_its_broker_is_created_again() {
    let port = free_port();
    let broker = Broker::start_on(port).await;
    let prefix = test_prefix();
    let topic = format!("{prefix}.fraud");
    let settings = KafkaSettings {
        brokers: vec![broker.address()],
        topic_prefix: prefix.clone(),
        partitions: PARTITIONS as i32,
        timeout: Duration::from_secs(5),
        ..KafkaSettings::default()
    };
    let event = |id: &str, order: &str| SinkEvent {
        id: id.into(),
        envelope: json!({"id": id, "type": "fraud", "order_id": order, "payload": {}}).to_string(),
    };
    let batch: Vec<SinkEvent> = (0..20).map(|n| event(&format!("evt_{n}"), &format!("ord_{n}"))).collect();

    // Someone created the topic with 2 partitions: used as it is, keys spread over 2.
    let client = broker.client().await;
    client.controller_client().unwrap().create_topic(&topic, 2, 1, 5_000).await.expect("creating the topic");
    let sink = KafkaSink::new(settings).unwrap();
    sink.deliver(EventKind::Fraud, &batch).await.expect("delivered to the existing topic");
    let topics = client.list_topics().await.unwrap();
    assert_eq!(topics.iter().find(|t| t.name == topic).unwrap().partitions, [0, 1].into());
    let consumed = consume(&client, &topic).await;
    assert_eq!(consumed.len(), 20);
    assert!(consumed.iter().all(|r| r.partition as usize == partition_for(r.key.as_bytes(), 2)), "{consumed:?}");
    drop(client);

    // The broker restarts empty (memory storage): the sink's connection and
    // topic are gone. The first delivery fails (the outbox would retry it)
    // and drops what the sink knew; the next one connects afresh and creates
    // the topic again, with the configured partitions.
    drop(broker);
    let broker = Broker::start_on(port).await;
    let again = [event("evt_after", "ord_after")];
    let mut failures = Vec::new();
    while let Err(e) = sink.deliver(EventKind::Fraud, &again).await {
        failures.push(format!("{e:#}"));
        assert!(failures.len() < 5, "the sink never recovered: {failures:#?}");
    }
    // The restarted broker does not know the topic the sink had checked, so
    // the reset path above did run.
    assert!(!failures.is_empty(), "the first delivery to the empty broker cannot have succeeded");
    assert!(failures.iter().all(|e| e.contains("Kafka at") && e.contains(&topic)), "{failures:#?}");
    let client = broker.client().await;
    let topics = client.list_topics().await.unwrap();
    assert_eq!(topics.iter().find(|t| t.name == topic).unwrap().partitions, (0..PARTITIONS as i32).collect());
    let consumed = consume(&client, &topic).await;
    assert_eq!(consumed.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(), ["evt_after"]);
}
