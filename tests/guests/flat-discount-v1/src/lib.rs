//! `flat-discount` 1.0.0: 100 cents off by default.

const DEFAULT_AMOUNT_CENTS: u64 = 100;
const DESCRIPTION: &str = "Flat v1";
include!("../../flat_discount.rs");
