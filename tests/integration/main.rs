//! The one integration-test binary: a module per feature.

mod ab_figures;
mod channels;
mod cli;
mod connection_shedding;
mod crash;
mod crash_http;
mod dashboard;
mod experiments;
mod gateway_faults;
mod gateway_protocol;
mod hardening;
mod http;
mod http_fuzz;
mod kafka;
mod kafka_security;
mod layers;
mod nats;
mod nats_tls;
mod observability;
mod otlp;
mod payment;
mod pipeline;
mod postgres_tls;
mod reload;
mod replay;
mod replicas;
mod retention;
mod rollouts;
mod round_trips;
mod rules;
mod sandbox_edges;
mod scaffold;
mod store;
mod support;

/// Counts heap bytes per thread (`support::alloc_meter`), so that tests can
/// bound what one rule call makes the host allocate.
#[global_allocator]
static ALLOCATOR: support::alloc_meter::Counting = support::alloc_meter::Counting;
