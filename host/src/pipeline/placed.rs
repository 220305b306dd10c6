//! A placed order as the pipeline answers it: the invoice and its JSON text,
//! serialised once.

use crate::domain::invoice::Invoice;
use crate::domain::status::OrderStatus;

/// A placed order's invoice (confirmed, or `PAYMENT_PENDING` while the
/// gateway's answer is unknown) together with its JSON text: the invoice is
/// serialised once, and the stored invoice, the idempotent replay and the
/// HTTP body are those same bytes.
#[derive(Debug, Clone)]
pub struct Placed {
    pub invoice: Invoice,
    pub json: String,
}

impl Placed {
    /// The HTTP status the order is answered with: `201` once confirmed,
    /// `202` while its payment is pending.
    pub fn status_code(&self) -> u16 {
        if self.invoice.status == OrderStatus::PaymentPending { 202 } else { 201 }
    }
}

impl std::ops::Deref for Placed {
    type Target = Invoice;

    fn deref(&self) -> &Invoice {
        &self.invoice
    }
}
