//! The three rule worlds of `wit/`, and which imports a rule may have.

use crate::domain::status::Slot;
use serde::{Deserialize, Serialize};

/// The WIT package of `wit/`, with its version: what rules are built against.
pub const CONTRACT: &str = "smartmart:rules@0.1.0";

/// A WIT world a rule module implements; each rule slot is bound to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    DiscountRule,
    WarehouseSelector,
    FraudCheck,
}

impl World {
    pub const ALL: [World; 3] = [World::DiscountRule, World::WarehouseSelector, World::FraudCheck];

    /// The world's name in `wit/`.
    pub fn name(self) -> &'static str {
        match self {
            World::DiscountRule => "discount-rule",
            World::WarehouseSelector => "warehouse-selector",
            World::FraudCheck => "fraud-check",
        }
    }

    /// The plug-in slot the world serves: its table in `manifest.toml`.
    pub fn slot(self) -> Slot {
        match self {
            World::DiscountRule => Slot::Discount,
            World::WarehouseSelector => Slot::Warehouse,
            World::FraudCheck => Slot::Fraud,
        }
    }

    /// The world a slot's modules implement.
    pub fn of(slot: Slot) -> World {
        match slot {
            Slot::Discount => World::DiscountRule,
            Slot::Warehouse => World::WarehouseSelector,
            Slot::Fraud => World::FraudCheck,
        }
    }

    /// A world by its name in `wit/` or by its slot (`discount`, `warehouse`, `fraud`).
    pub fn parse(s: &str) -> Option<World> {
        World::ALL.into_iter().find(|w| w.name() == s || w.slot() == s)
    }
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (package, version) = CONTRACT.split_once('@').unwrap_or((CONTRACT, ""));
        write!(f, "{package}/{}@{version}", self.name())
    }
}

/// Import prefixes a rule may have: the host's own interfaces, and the WASI
/// streams and cli interfaces that Rust's std links into every component
/// (stdio for panic messages, an environment that the host leaves empty),
/// and the insecure random seed std's `HashMap` asks for, which the host
/// fixes so that rules stay deterministic (the random generators themselves
/// are refused). File system, sockets, HTTP,
/// clocks, secure random and anything else are refused when the module is
/// loaded, before it can run.
const GRANTED_IMPORTS: &[&str] = &[
    "smartmart:rules/types@",
    "smartmart:rules/log@",
    "smartmart:rules/config@",
    "wasi:io/",
    "wasi:cli/",
    "wasi:random/insecure-seed@",
];

/// Whether an import (e.g. `wasi:sockets/tcp@0.2.6`) is granted to rules.
pub fn is_granted(import: &str) -> bool {
    GRANTED_IMPORTS.iter().any(|prefix| import.starts_with(prefix))
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinaryKind {
    Component,
    CoreModule,
    NotWasm,
}

/// Reads the WebAssembly preamble: magic `\0asm`, then a version/layer word
/// that is 1 for core modules and 0x0001000d for components.
pub(crate) fn binary_kind(bytes: &[u8]) -> BinaryKind {
    match bytes {
        [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, ..] => BinaryKind::CoreModule,
        [0x00, 0x61, 0x73, 0x6d, _, _, 0x01, 0x00, ..] => BinaryKind::Component,
        _ => BinaryKind::NotWasm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_constant_is_the_wit_package() {
        let types = include_str!("../../../wit/types.wit");
        assert!(types.starts_with(&format!("package {CONTRACT};")), "{}", &types[..40]);
        assert_eq!(World::FraudCheck.to_string(), "smartmart:rules/fraud-check@0.1.0");
        assert_eq!(World::parse("warehouse"), Some(World::WarehouseSelector));
        assert_eq!(World::parse("discount-rule"), Some(World::DiscountRule));
        assert_eq!(World::parse("payment"), None);
    }

    #[test]
    fn grants_only_inert_interfaces() {
        assert!(is_granted("smartmart:rules/log@0.1.0"));
        assert!(is_granted("wasi:cli/environment@0.2.6"));
        assert!(!is_granted("wasi:sockets/tcp@0.2.6"));
        assert!(!is_granted("wasi:filesystem/preopens@0.2.6"));
        assert!(!is_granted("wasi:clocks/wall-clock@0.2.6"));
        assert!(!is_granted("wasi:random/random@0.2.6"));
        assert!(is_granted("wasi:random/insecure-seed@0.2.6"));
        assert!(!is_granted("wasi:http/outgoing-handler@0.2.6"));
        assert!(!is_granted("smartmart:rules/other@0.1.0"));
        assert!(!is_granted("acme:evil/exfiltrate"));
    }

    #[test]
    fn tells_components_from_core_modules_and_garbage() {
        assert_eq!(binary_kind(b"\0asm\x01\0\0\0"), BinaryKind::CoreModule);
        assert_eq!(binary_kind(b"\0asm\x0d\0\x01\0rest"), BinaryKind::Component);
        assert_eq!(binary_kind(b"garbage!"), BinaryKind::NotWasm);
        assert_eq!(binary_kind(b""), BinaryKind::NotWasm);
    }
}
