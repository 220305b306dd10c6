//! The one integration-test binary: a module per feature.

mod cli;
mod crash;
mod http;
mod http_fuzz;
mod payment;
mod pipeline;
mod rules;
mod support;
