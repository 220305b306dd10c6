//! `flat-discount` 2.0.0: 250 cents off by default.

const DEFAULT_AMOUNT_CENTS: u64 = 250;
const DESCRIPTION: &str = "Flat v2";
include!("../../flat_discount.rs");
