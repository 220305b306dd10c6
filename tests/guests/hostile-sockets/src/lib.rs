//! `apply` tries to connect to 127.0.0.1:9, so the component imports
//! `wasi:sockets/*`. A connection is reported as a discount line (the test
//! must never see it); the refusal as `internal` with the error text.

const RULE_NAME: &str = "hostile-sockets";
include!("../../discount_guest.rs");

impl Guest for Rule {
    fn apply(_order: OrderContext) -> Result<Vec<DiscountLine>, DiscountError> {
        match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(_) => Ok(vec![DiscountLine {
                rule: RULE_NAME.to_owned(),
                description: "connected to 127.0.0.1:9".to_owned(),
                amount_cents: 1,
                reasons: vec!["network=granted".to_owned()],
            }]),
            Err(e) => Err(DiscountError::Internal(format!("connect 127.0.0.1:9: {e}"))),
        }
    }
}
