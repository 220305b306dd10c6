//! A placed order as the pipeline answers it: the invoice and its JSON text,
//! serialised once.

use crate::domain::invoice::Invoice;

/// A confirmed order's invoice together with its JSON text: the invoice is
/// serialised once, and the stored invoice, the idempotent replay and the
/// HTTP body are those same bytes.
#[derive(Debug, Clone)]
pub struct Placed {
    pub invoice: Invoice,
    pub json: String,
}

impl std::ops::Deref for Placed {
    type Target = Invoice;

    fn deref(&self) -> &Invoice {
        &self.invoice
    }
}
