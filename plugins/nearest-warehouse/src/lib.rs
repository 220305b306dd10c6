//! `nearest-warehouse`: ship the whole cart from the nearest warehouse (by
//! great-circle distance to the ship-to point) that holds all of it.
//! The decision is plain Rust ([`select`]) so that it is tested natively;
//! the `wasm` module only converts between the WIT types and these.

use std::cmp::Ordering;
use std::collections::HashMap;

/// Mean Earth radius (IUGG), in kilometres.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A point in decimal degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub lat: f64,
    pub lon: f64,
}

/// A warehouse that may ship the order.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub id: String,
    pub location: Point,
    /// `(sku, available)`; a sku listed twice counts as the sum.
    pub stock: Vec<(String, u32)>,
}

/// The chosen warehouse and what it ships.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub warehouse_id: String,
    pub distance_km: f64,
    /// `(sku, quantity)`: one entry per sku of the cart, in cart order,
    /// duplicate lines summed.
    pub lines: Vec<(String, u32)>,
}

impl Choice {
    /// Machine-readable reasons: `nearest=<id>`, `distance_km=<x.x>`.
    pub fn reasons(&self) -> Vec<String> {
        vec![
            format!("nearest={}", self.warehouse_id),
            format!("distance_km={:.1}", self.distance_km),
        ]
    }
}

/// The first line no warehouse can ship on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub sku: String,
    pub requested: u32,
    pub available: u32,
    pub reason: String,
}

/// Great-circle (haversine) distance between two points, in kilometres.
pub fn distance_km(a: Point, b: Point) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.clamp(0.0, 1.0).sqrt().asin()
}

/// Chooses the nearest candidate that holds every line of the cart entirely.
///
/// `lines` are `(sku, quantity)` in cart order; duplicate skus are summed and
/// zero quantities ignored. Equally distant candidates are ordered by id.
/// An empty cart gives `Ok(None)` (nothing to ship).
///
/// When no candidate holds the whole cart, the shortfall names:
/// 1. the first sku (cart order) whose quantity exceeds the largest
///    availability of that sku in any single warehouse (`available` = that
///    largest availability); else
/// 2. the first sku the candidate holding the most skus entirely lacks
///    (ties: nearest, then id), with that warehouse's availability.
pub fn select(
    ship_to: Point,
    lines: &[(&str, u32)],
    candidates: &[Candidate],
) -> Result<Option<Choice>, Shortfall> {
    // The cart, one entry per sku in first-appearance order, summed.
    let mut wanted: Vec<(&str, u64)> = Vec::new();
    for &(sku, quantity) in lines.iter().filter(|(_, q)| *q > 0) {
        match wanted.iter_mut().find(|(s, _)| *s == sku) {
            Some((_, total)) => *total += u64::from(quantity),
            None => wanted.push((sku, u64::from(quantity))),
        }
    }
    if wanted.is_empty() {
        return Ok(None);
    }

    struct Scored<'a> {
        candidate: &'a Candidate,
        distance_km: f64,
        /// Availability of each `wanted` sku, same order.
        available: Vec<u64>,
    }
    impl Scored<'_> {
        fn covers(&self, wanted: &[(&str, u64)], i: usize) -> bool {
            // An allocation line holds a u32: more cannot be shipped at once.
            wanted[i].1 <= self.available[i] && wanted[i].1 <= u64::from(u32::MAX)
        }
        fn covered(&self, wanted: &[(&str, u64)]) -> usize {
            (0..wanted.len())
                .filter(|&i| self.covers(wanted, i))
                .count()
        }
        fn closer(&self, other: &Self) -> Ordering {
            self.distance_km
                .total_cmp(&other.distance_km)
                .then_with(|| self.candidate.id.cmp(&other.candidate.id))
        }
    }
    let scored: Vec<Scored> = candidates
        .iter()
        .map(|c| {
            let mut stock: HashMap<&str, u64> = HashMap::new();
            for (sku, n) in &c.stock {
                *stock.entry(sku.as_str()).or_default() += u64::from(*n);
            }
            Scored {
                candidate: c,
                distance_km: distance_km(ship_to, c.location),
                available: wanted
                    .iter()
                    .map(|(sku, _)| stock.get(sku).copied().unwrap_or(0))
                    .collect(),
            }
        })
        .collect();

    let sat = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);

    if let Some(best) = scored
        .iter()
        .filter(|s| s.covered(&wanted) == wanted.len())
        .min_by(|a, b| a.closer(b))
    {
        return Ok(Some(Choice {
            warehouse_id: best.candidate.id.clone(),
            distance_km: best.distance_km,
            lines: wanted
                .iter()
                .map(|&(sku, n)| (sku.to_owned(), sat(n)))
                .collect(),
        }));
    }

    for (i, &(sku, requested)) in wanted.iter().enumerate() {
        let most = scored.iter().map(|s| s.available[i]).max().unwrap_or(0);
        if requested > most || requested > u64::from(u32::MAX) {
            return Err(Shortfall {
                sku: sku.to_owned(),
                requested: sat(requested),
                available: sat(most),
                reason: format!(
                    "{requested} x {sku} requested, at most {most} available in any one warehouse"
                ),
            });
        }
    }

    // Every sku alone fits somewhere (so there is a candidate), but no single
    // warehouse holds them all: report what the best-stocked one lacks.
    let best = scored
        .iter()
        .max_by(|a, b| {
            a.covered(&wanted)
                .cmp(&b.covered(&wanted))
                .then_with(|| b.closer(a))
        })
        .expect("a sku fits somewhere, so there is a candidate");
    let i = (0..wanted.len())
        .find(|&i| !best.covers(&wanted, i))
        .expect("no candidate covers every sku");
    let (sku, requested) = wanted[i];
    let available = best.available[i];
    Err(Shortfall {
        sku: sku.to_owned(),
        requested: sat(requested),
        available: sat(available),
        reason: format!(
            "no single warehouse holds the whole cart; {} (holding the most lines) has {available} of {requested} x {sku}",
            best.candidate.id
        ),
    })
}

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)] // the generated bindings
mod wasm {
    // The bump allocator: instances live for one call (see guest-alloc).
    use guest_alloc as _;

    wit_bindgen::generate!({
        world: "warehouse-selector",
        path: "../../wit",
    });

    use exports::smartmart::rules::meta::{self, RuleInfo};
    use exports::smartmart::rules::warehouse::{
        Allocation, AllocationLine, Candidate, Guest, Plan, SelectError, Shortfall,
    };
    use smartmart::rules::log;
    use smartmart::rules::types::{GeoPoint, OrderContext};

    struct NearestWarehouse;

    impl meta::Guest for NearestWarehouse {
        fn info() -> RuleInfo {
            RuleInfo {
                name: env!("CARGO_PKG_NAME").to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                description: env!("CARGO_PKG_DESCRIPTION").to_owned(),
            }
        }
    }

    fn point(p: GeoPoint) -> super::Point {
        super::Point {
            lat: p.lat,
            lon: p.lon,
        }
    }

    impl Guest for NearestWarehouse {
        fn select(order: OrderContext, candidates: Vec<Candidate>) -> Result<Plan, SelectError> {
            let lines: Vec<(&str, u32)> = order
                .lines
                .iter()
                .map(|l| (l.sku.as_str(), l.quantity))
                .collect();
            let candidates: Vec<super::Candidate> = candidates
                .into_iter()
                .map(|c| super::Candidate {
                    id: c.id,
                    location: point(c.location),
                    stock: c.stock.into_iter().map(|s| (s.sku, s.available)).collect(),
                })
                .collect();
            let choice = super::select(point(order.ship_to), &lines, &candidates);
            let outcome = match &choice {
                Ok(Some(c)) => c.reasons().join(" "),
                Ok(None) => "empty cart".to_owned(),
                Err(s) => format!("shortfall sku={}", s.sku),
            };
            log::emit(
                log::Level::Debug,
                "nearest-warehouse selected",
                &[
                    ("order_id".to_owned(), order.order_id),
                    ("outcome".to_owned(), outcome),
                ],
            );
            match choice {
                Ok(Some(c)) => Ok(Plan {
                    reasons: c.reasons(),
                    allocations: vec![Allocation {
                        warehouse_id: c.warehouse_id,
                        lines: c
                            .lines
                            .into_iter()
                            .map(|(sku, quantity)| AllocationLine { sku, quantity })
                            .collect(),
                    }],
                }),
                Ok(None) => Ok(Plan {
                    allocations: Vec::new(),
                    reasons: vec!["empty_cart".to_owned()],
                }),
                Err(s) => Err(SelectError::CannotFulfil(Shortfall {
                    sku: s.sku,
                    requested: s.requested,
                    available: s.available,
                    reason: s.reason,
                })),
            }
        }
    }

    export!(NearestWarehouse);
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLR: Point = Point {
        lat: 12.9716,
        lon: 77.5946,
    };

    fn wh(id: &str, lat: f64, lon: f64, stock: &[(&str, u32)]) -> Candidate {
        Candidate {
            id: id.to_owned(),
            location: Point { lat, lon },
            stock: stock.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn haversine_matches_known_distances() {
        let same = distance_km(BLR, BLR);
        assert!(same.abs() < 1e-9);
        // One degree of longitude on the equator: 2πR/360.
        let d = distance_km(Point { lat: 0.0, lon: 0.0 }, Point { lat: 0.0, lon: 1.0 });
        assert!((d - 111.195).abs() < 0.01, "{d}");
        // Antipodes: half the circumference, no NaN from rounding.
        let d = distance_km(
            Point { lat: 0.0, lon: 0.0 },
            Point {
                lat: 0.0,
                lon: 180.0,
            },
        );
        assert!(
            (d - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6,
            "{d}"
        );
        // Bengaluru - Mumbai, about 845 km.
        let bom = Point {
            lat: 19.0760,
            lon: 72.8777,
        };
        let d = distance_km(BLR, bom);
        assert!((d - 845.0).abs() < 5.0, "{d}");
        // Across the antimeridian.
        let d = distance_km(
            Point {
                lat: 0.0,
                lon: 179.5,
            },
            Point {
                lat: 0.0,
                lon: -179.5,
            },
        );
        assert!((d - 111.195).abs() < 0.01, "{d}");
    }

    #[test]
    fn picks_the_nearest_that_covers_everything() {
        let cands = [
            wh("WH-FAR", 28.61, 77.21, &[("TV", 5), ("CABLE", 10)]),
            wh("WH-NEAR", 12.98, 77.60, &[("TV", 5)]), // lacks CABLE
            wh("WH-MID", 13.08, 80.27, &[("CABLE", 10), ("TV", 1)]),
        ];
        let c = select(BLR, &[("TV", 1), ("CABLE", 2)], &cands)
            .unwrap()
            .unwrap();
        assert_eq!(c.warehouse_id, "WH-MID");
        assert_eq!(c.lines, [("TV".to_owned(), 1), ("CABLE".to_owned(), 2)]);
        let reasons = c.reasons();
        assert_eq!(reasons[0], "nearest=WH-MID");
        assert!(reasons[1].starts_with("distance_km=") && reasons[1].contains('.'));
    }

    #[test]
    fn distance_reason_has_one_decimal() {
        let cands = [wh("WH-BLR", 12.9716, 77.5946, &[("TV", 1)])];
        let c = select(BLR, &[("TV", 1)], &cands).unwrap().unwrap();
        assert_eq!(c.reasons(), ["nearest=WH-BLR", "distance_km=0.0"]);
    }

    #[test]
    fn ties_are_broken_by_id() {
        let cands = [
            wh("WH-B", 10.0, 10.0, &[("TV", 1)]),
            wh("WH-A", 10.0, 10.0, &[("TV", 1)]),
            wh("WH-C", 10.0, 10.0, &[("TV", 1)]),
        ];
        let c = select(BLR, &[("TV", 1)], &cands).unwrap().unwrap();
        assert_eq!(c.warehouse_id, "WH-A");
    }

    #[test]
    fn duplicate_lines_are_summed() {
        let cands = [
            wh("WH-NEAR", 12.98, 77.60, &[("TV", 3)]),
            wh("WH-FAR", 28.61, 77.21, &[("TV", 4)]),
        ];
        let c = select(BLR, &[("TV", 2), ("TV", 2)], &cands)
            .unwrap()
            .unwrap();
        assert_eq!(c.warehouse_id, "WH-FAR");
        assert_eq!(c.lines, [("TV".to_owned(), 4)]);
        // ... and when nowhere holds the sum, the sum is what was requested.
        let err = select(BLR, &[("TV", 3), ("TV", 3)], &cands).unwrap_err();
        assert_eq!(
            (err.sku.as_str(), err.requested, err.available),
            ("TV", 6, 4)
        );
    }

    #[test]
    fn duplicate_stock_entries_are_summed() {
        let cands = [wh("WH-A", 1.0, 1.0, &[("TV", 1), ("TV", 1)])];
        assert!(select(BLR, &[("TV", 2)], &cands).unwrap().is_some());
    }

    #[test]
    fn shortfall_names_the_first_sku_no_warehouse_can_hold() {
        let cands = [
            wh("WH-A", 1.0, 1.0, &[("A", 9), ("B", 1), ("C", 1)]),
            wh("WH-B", 2.0, 2.0, &[("B", 2), ("C", 3)]),
        ];
        let err = select(BLR, &[("A", 1), ("B", 5), ("C", 5)], &cands).unwrap_err();
        assert_eq!(err.sku, "B");
        assert_eq!((err.requested, err.available), (5, 2));
        assert!(err.reason.contains('B'), "{}", err.reason);
    }

    #[test]
    fn unknown_sku_everywhere_is_available_zero() {
        let cands = [wh("WH-A", 1.0, 1.0, &[("A", 9)])];
        let err = select(BLR, &[("A", 1), ("GHOST", 2)], &cands).unwrap_err();
        assert_eq!(
            (err.sku.as_str(), err.requested, err.available),
            ("GHOST", 2, 0)
        );
    }

    #[test]
    fn no_candidates_is_a_shortfall_on_the_first_line() {
        let err = select(BLR, &[("A", 3), ("B", 1)], &[]).unwrap_err();
        assert_eq!(
            (err.sku.as_str(), err.requested, err.available),
            ("A", 3, 0)
        );
    }

    #[test]
    fn split_stock_names_what_the_best_stocked_warehouse_lacks() {
        // Each sku fits somewhere; no warehouse holds all three.
        let cands = [
            wh("WH-ONE", 1.0, 1.0, &[("A", 5)]),
            wh("WH-TWO", 50.0, 50.0, &[("A", 5), ("C", 1)]), // lacks B
            wh("WH-SPLIT", 2.0, 2.0, &[("B", 5), ("C", 5)]), // lacks A
        ];
        let err = select(BLR, &[("A", 2), ("B", 2), ("C", 2)], &cands).unwrap_err();
        // WH-ONE and WH-TWO (C: 1 of 2) each hold one line entirely,
        // WH-SPLIT holds two: its first missing line is named.
        assert_eq!(
            (err.sku.as_str(), err.requested, err.available),
            ("A", 2, 0)
        );
        assert!(err.reason.contains("WH-SPLIT"), "{}", err.reason);
    }

    #[test]
    fn best_stocked_ties_go_to_the_nearest() {
        let cands = [
            wh("WH-FAR", 60.0, 60.0, &[("A", 5), ("B", 1)]), // lacks B (has 1 of 2)
            wh("WH-NEAR", 12.9, 77.5, &[("B", 5)]),          // lacks A
        ];
        let err = select(BLR, &[("A", 2), ("B", 2)], &cands).unwrap_err();
        assert_eq!(
            (err.sku.as_str(), err.requested, err.available),
            ("A", 2, 0)
        );
        assert!(err.reason.contains("WH-NEAR"), "{}", err.reason);
    }

    #[test]
    fn empty_cart_ships_nothing() {
        let cands = [wh("WH-A", 1.0, 1.0, &[("A", 5)])];
        assert_eq!(select(BLR, &[], &cands), Ok(None));
        assert_eq!(select(BLR, &[], &[]), Ok(None));
        assert_eq!(select(BLR, &[("A", 0)], &[]), Ok(None));
    }

    #[test]
    fn sums_beyond_u32_cannot_be_allocated() {
        let cands = [wh("WH-A", 1.0, 1.0, &[("A", u32::MAX), ("A", u32::MAX)])];
        let err = select(BLR, &[("A", u32::MAX), ("A", 1)], &cands).unwrap_err();
        assert_eq!((err.requested, err.available), (u32::MAX, u32::MAX));
    }
}
