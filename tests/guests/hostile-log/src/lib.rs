//! `apply` logs far more than one call may, then grants 1 cent. Its config
//! key `mode` picks how:
//!
//! - `flood` (the default): 1,000 lines, each a message forging a second log
//!   line (`\nINFO forged line`) and clearing the terminal (`ESC [2J`), with
//!   16 fields of 2 KiB (about 33 KiB a line, 33 MB in all);
//! - `huge`: one line whose 16 field values all alias one 512 KiB buffer:
//!   8 MiB crossing into the host from half a MiB of guest memory.

const RULE_NAME: &str = "hostile-log";
include!("../../discount_guest.rs");

use smartmart::rules::{config, log};

const FLOOD_LINES: usize = 1_000;
const FIELDS: usize = 16;
const FLOOD_VALUE_BYTES: usize = 2 << 10;
const HUGE_VALUE_BYTES: usize = 512 << 10;

impl Guest for Rule {
    fn apply(_order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
        match config::get("mode").as_deref() {
            Some("huge") => huge(),
            _ => flood(),
        }
        Ok(vec![DiscountLine {
            rule: RULE_NAME.to_owned(),
            description: "logged".to_owned(),
            amount_cents: 1,
            reasons: Vec::new(),
        }])
    }
}

fn flood() {
    let value = "v".repeat(FLOOD_VALUE_BYTES);
    let fields: Vec<(String, String)> = (0..FIELDS).map(|i| (format!("field{i}"), value.clone())).collect();
    for i in 0..FLOOD_LINES {
        log::emit(log::Level::Info, &format!("line {i}\nINFO forged line\x1b[2J"), &fields);
    }
}

fn huge() {
    let buffer = "x".repeat(HUGE_VALUE_BYTES);
    // Sixteen `String`s over the same bytes; never dropped (that would free
    // the buffer sixteen times): the instance is thrown away after the call.
    let fields: Vec<(String, String)> = (0..FIELDS)
        .map(|i| {
            // SAFETY: only read (by the lowering of `emit`'s arguments), never
            // written, never freed.
            let alias = unsafe { String::from_raw_parts(buffer.as_ptr().cast_mut(), buffer.len(), buffer.len()) };
            (format!("f{i}"), alias)
        })
        .collect();
    log::emit(log::Level::Info, "huge", &fields);
    std::mem::forget(fields);
}
