//! The one integration-test binary: a module per feature.

mod cli;
mod payment;
mod rules;
mod support;
