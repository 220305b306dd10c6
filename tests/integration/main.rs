//! The one integration-test binary: a module per feature.

mod cli;
mod crash;
mod experiments;
mod http;
mod http_fuzz;
mod payment;
mod pipeline;
mod reload;
mod rules;
mod scaffold;
mod support;
