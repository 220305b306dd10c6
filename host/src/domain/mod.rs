//! The engine's vocabulary: the records and states every layer speaks, with
//! no behaviour beyond what a value can say about itself.
//!
//! Data flows one way, HTTP → pipeline → store and rules, and this module is
//! the leaf they all stand on: it imports nothing from `http`, `pipeline`,
//! `rules`, `store`, `events` or `payment`, so none of them can make it
//! depend on another. Each concept has its own file:
//!
//! - [`status`]: the enums stored as text (order, payment, event, hold and
//!   outbox states, rule slots, the API's error codes);
//! - [`customer`]: who orders: the customer record, tier and account status;
//! - [`geo`]: points on Earth and the distance between them;
//! - [`order`]: what an order is made of: cart lines, granted discounts,
//!   warehouse allocations;
//! - [`invoice`]: what a placed order answers and stores, field for field as
//!   docs/api.md shows it.

pub mod customer;
pub mod geo;
pub mod invoice;
pub mod order;
pub mod status;
