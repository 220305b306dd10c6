//! What an order's warehouse selector saw, kept with the order so that
//! `rules replay` and the reload's replay gate can run a selector on real
//! orders: the candidate warehouses with their stock of the order's skus as
//! the plan that was held read them. The rest of the selector's input (the
//! order context) is rebuilt from the stored invoice.
//!
//! It lives on the order's row (`orders.selector_input`, schema version 15,
//! both back-ends), written by phase 1 with the order in the same command,
//! as compact JSON: the candidates in the order they were offered, each
//! `[id, name, lat, lon, [[sku, available], …]]`. The name is kept because
//! the selector saw it (the catalog's may have changed since); the numbers
//! are written in their shortest exact form, so the input rebuilt is the one
//! the selector was given, bit for bit.
//!
//! Bounded: an input longer than [`MAX_BYTES`] is not kept; the row keeps
//! its length instead (a JSON number), so that replay can say why the order
//! cannot be replayed. Orders placed before version 14 keep nothing (NULL).

use serde::Serialize;

use crate::domain::geo::GeoPoint;
use crate::rules::types::{Candidate, StockLevel};

/// The longest selector input kept with an order, in bytes of its JSON
/// (the demo's two-line cart over its four warehouses takes 413).
pub const MAX_BYTES: usize = 4096;

/// One candidate as stored: `[id, name, lat, lon, [[sku, available], …]]`.
#[derive(Serialize)]
struct Row<'a>(&'a str, &'a str, f64, f64, Vec<(&'a str, u32)>);

type StoredRow = (String, String, f64, f64, Vec<(String, u32)>);

/// The text phase 1 stores for the selector input `candidates`: their JSON,
/// or its length when that is over [`MAX_BYTES`].
pub fn encode(candidates: &[Candidate]) -> String {
    let rows: Vec<Row<'_>> = candidates
        .iter()
        .map(|c| {
            let stock = c.stock.iter().map(|s| (s.sku.as_str(), s.available)).collect();
            Row(&c.id, &c.name, c.location.lat, c.location.lon, stock)
        })
        .collect();
    let text = serde_json::to_string(&rows).expect("strings and numbers serialise");
    if text.len() > MAX_BYTES { text.len().to_string() } else { text }
}

/// What an order's row says of its selector's input.
#[derive(Debug, Clone, PartialEq)]
pub enum Kept {
    /// The candidates, as offered.
    Candidates(Vec<Candidate>),
    /// Not kept: it would have taken `bytes` bytes, over [`MAX_BYTES`].
    TooLarge { bytes: u64 },
}

/// Reads a row's `selector_input` (see [`encode`]).
pub fn decode(text: &str) -> Result<Kept, serde_json::Error> {
    if let Ok(bytes) = text.parse::<u64>() {
        return Ok(Kept::TooLarge { bytes });
    }
    let rows: Vec<StoredRow> = serde_json::from_str(text)?;
    Ok(Kept::Candidates(
        rows.into_iter()
            .map(|(id, name, lat, lon, stock)| Candidate {
                id,
                name,
                location: GeoPoint { lat, lon },
                stock: stock.into_iter().map(|(sku, available)| StockLevel { sku, available }).collect(),
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(id: &str, lat: f64, skus: &[(&str, u32)]) -> Candidate {
        Candidate {
            id: id.into(),
            name: format!("{id} \"centre\""),
            location: GeoPoint { lat, lon: 77.75 },
            stock: skus
                .iter()
                .map(|(sku, available)| StockLevel { sku: (*sku).into(), available: *available })
                .collect(),
        }
    }

    #[test]
    fn the_input_round_trips_exactly_and_compactly() {
        let candidates = vec![
            candidate("WH-BLR", 12.9698, &[("TV-55-OLED", 40), ("HDMI-2M", 45)]),
            candidate("WH-X", 0.1 + 0.2, &[]),
        ];
        let text = encode(&candidates);
        assert_eq!(
            text,
            r#"[["WH-BLR","WH-BLR \"centre\"",12.9698,77.75,[["TV-55-OLED",40],["HDMI-2M",45]]],["WH-X","WH-X \"centre\"",0.30000000000000004,77.75,[]]]"#
        );
        assert_eq!(decode(&text).unwrap(), Kept::Candidates(candidates));
    }

    #[test]
    fn an_input_over_the_bound_keeps_only_its_length() {
        let many: Vec<Candidate> = (0..100).map(|i| candidate(&format!("WH-{i}"), 1.0, &[("SKU", 1)])).collect();
        let text = encode(&many);
        let Ok(Kept::TooLarge { bytes }) = decode(&text) else { panic!("{text}") };
        assert!(bytes as usize > MAX_BYTES, "{bytes}");
        assert!(decode("{").is_err());
    }
}
