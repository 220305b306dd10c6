//! Customers, products, warehouses, stock and carts on PostgreSQL (the
//! twin of `store::sqlite::catalog`; the records are in `store::catalog`,
//! the customer is `domain::customer::Customer`).

use tokio_postgres::Row;
use tokio_postgres::types::Type;

use super::super::StoreError;
use super::super::catalog::{
    CartItem, OrderSnapshot, Product, StockLevel, StockedWarehouse, Warehouse, parse_status, parse_tier,
};
use super::{Db, OrderCall, bigint};
use crate::clock::now_rfc3339;
use crate::domain::customer::Customer;
use crate::domain::geo::GeoPoint;
use crate::domain::order::CartLine;

/// Whether any customer exists (an empty store gets the demo data set).
pub async fn has_customers(db: &impl Db) -> Result<bool, StoreError> {
    Ok(db.query_opt("SELECT 1 FROM customers LIMIT 1", &[]).await?.is_some())
}

pub async fn upsert_customer(db: &impl Db, c: &Customer) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "INSERT INTO customers (id, name, email, phone, tier, status, lat, lon, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (id) DO UPDATE SET name = $2, email = $3, phone = $4, tier = $5, status = $6,
                 lat = $7, lon = $8, updated_at = $9",
        )
        .await?;
    db.execute(
        &stmt,
        &[
            &c.id,
            &c.name,
            &c.email,
            &c.phone,
            &c.tier.as_str(),
            &c.status.as_str(),
            &c.location.lat,
            &c.location.lon,
            &now_rfc3339(),
        ],
    )
    .await?;
    Ok(())
}

pub async fn get_customer(db: &impl Db, id: &str) -> Result<Option<Customer>, StoreError> {
    let stmt =
        db.prepare_cached("SELECT id, name, email, phone, tier, status, lat, lon FROM customers WHERE id = $1").await?;
    db.query_opt(&stmt, &[&id])
        .await?
        .map(|r| {
            Ok(Customer {
                id: r.get(0),
                name: r.get(1),
                email: r.get(2),
                phone: r.get(3),
                tier: parse_tier(r.get(4))?,
                status: parse_status(r.get(5))?,
                location: GeoPoint { lat: r.get(6), lon: r.get(7) },
            })
        })
        .transpose()
}

pub async fn upsert_product(db: &impl Db, p: &Product) -> Result<(), StoreError> {
    let price = bigint(p.unit_price_cents, "the price")?;
    let stmt = db
        .prepare_cached(
            "INSERT INTO products (sku, name, category, unit_price_cents, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (sku) DO UPDATE SET name = $2, category = $3, unit_price_cents = $4, updated_at = $5",
        )
        .await?;
    db.execute(&stmt, &[&p.sku, &p.name, &p.category, &price, &now_rfc3339()]).await?;
    Ok(())
}

pub async fn get_product(db: &impl Db, sku: &str) -> Result<Option<Product>, StoreError> {
    let stmt = db.prepare_cached("SELECT sku, name, category, unit_price_cents FROM products WHERE sku = $1").await?;
    Ok(db.query_opt(&stmt, &[&sku]).await?.map(|r| Product {
        sku: r.get(0),
        name: r.get(1),
        category: r.get(2),
        unit_price_cents: r.get::<_, i64>(3) as u64,
    }))
}

pub async fn upsert_warehouse(db: &impl Db, w: &Warehouse) -> Result<(), StoreError> {
    let stmt = db
        .prepare_cached(
            "INSERT INTO warehouses (id, name, lat, lon, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET name = $2, lat = $3, lon = $4, updated_at = $5",
        )
        .await?;
    db.execute(&stmt, &[&w.id, &w.name, &w.location.lat, &w.location.lon, &now_rfc3339()]).await?;
    Ok(())
}

/// Sets the units on hand (see `catalog::set_stock`). The stock row is
/// locked first, so an order holding units meanwhile cannot slip under.
pub async fn set_stock(db: &impl Db, warehouse_id: &str, sku: &str, on_hand: u64) -> Result<StockLevel, StoreError> {
    let stmt = db.prepare_cached("SELECT name FROM warehouses WHERE id = $1").await?;
    let Some(warehouse_name) = db.query_opt(&stmt, &[&warehouse_id]).await?.map(|r| r.get::<_, String>(0)) else {
        return Err(StoreError::NotFound(format!("warehouse {warehouse_id}")));
    };
    if get_product(db, sku).await?.is_none() {
        return Err(StoreError::NotFound(format!("sku {sku}")));
    }
    let on_hand_i = bigint(on_hand, "on_hand")?;
    // Creates the row if missing, then locks it: concurrent holds wait.
    let stmt = db
        .prepare_cached(
            "INSERT INTO stock (warehouse_id, sku, on_hand, reserved) VALUES ($1, $2, 0, 0)
             ON CONFLICT (warehouse_id, sku) DO NOTHING",
        )
        .await?;
    db.execute(&stmt, &[&warehouse_id, &sku]).await?;
    let stmt = db.prepare_cached("SELECT reserved FROM stock WHERE warehouse_id = $1 AND sku = $2 FOR UPDATE").await?;
    let reserved: i64 = db.query_one(&stmt, &[&warehouse_id, &sku]).await?.get(0);
    if on_hand_i < reserved {
        return Err(StoreError::Conflict(format!(
            "{reserved} units of {sku} in {warehouse_id} are held by orders in flight; on_hand cannot go below that"
        )));
    }
    let stmt = db.prepare_cached("UPDATE stock SET on_hand = $3 WHERE warehouse_id = $1 AND sku = $2").await?;
    db.execute(&stmt, &[&warehouse_id, &sku, &on_hand_i]).await?;
    Ok(StockLevel {
        warehouse_id: warehouse_id.to_string(),
        warehouse_name,
        sku: sku.to_string(),
        on_hand,
        available: (on_hand_i - reserved) as u64,
    })
}

pub async fn stock_of_sku(db: &impl Db, sku: &str) -> Result<Vec<StockLevel>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT s.warehouse_id, w.name, s.on_hand, s.reserved FROM stock s JOIN warehouses w ON w.id = s.warehouse_id
             WHERE s.sku = $1 ORDER BY s.warehouse_id",
        )
        .await?;
    Ok(db
        .query(&stmt, &[&sku])
        .await?
        .iter()
        .map(|r| {
            let (on_hand, reserved): (i64, i64) = (r.get(2), r.get(3));
            StockLevel {
                warehouse_id: r.get(0),
                warehouse_name: r.get(1),
                sku: sku.to_string(),
                on_hand: on_hand as u64,
                available: (on_hand - reserved).max(0) as u64,
            }
        })
        .collect())
}

pub async fn stocked_warehouses(db: &impl Db, skus: &[&str]) -> Result<Vec<StockedWarehouse>, StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT w.id, w.name, w.lat, w.lon, s.on_hand - s.reserved, s.sku FROM stock s
             JOIN warehouses w ON w.id = s.warehouse_id WHERE s.sku = ANY($1)",
        )
        .await?;
    let rows = db.query(&stmt, &[&skus]).await?;
    let mut out: Vec<StockedWarehouse> = Vec::new();
    // In the order of `skus`, as the SQLite twin lists them.
    for sku in skus {
        for r in rows.iter().filter(|r| r.get::<_, &str>(5) == *sku) {
            let id: String = r.get(0);
            let available = u32::try_from(r.get::<_, i64>(4).max(0)).unwrap_or(u32::MAX);
            match out.iter_mut().find(|w| w.warehouse.id == id) {
                Some(w) => w.available.push((sku.to_string(), available)),
                None => out.push(StockedWarehouse {
                    warehouse: Warehouse { id, name: r.get(1), location: GeoPoint { lat: r.get(2), lon: r.get(3) } },
                    available: vec![(sku.to_string(), available)],
                }),
            }
        }
    }
    out.sort_by(|a, b| a.warehouse.id.cmp(&b.warehouse.id));
    Ok(out)
}

pub async fn replace_cart(db: &impl Db, customer_id: &str, items: &[CartItem]) -> Result<Vec<CartLine>, StoreError> {
    let mut lines = Vec::with_capacity(items.len());
    for item in items {
        let Some(product) = get_product(db, &item.sku).await? else {
            return Err(StoreError::NotFound(format!("sku {}", item.sku)));
        };
        lines.push(CartLine {
            sku: product.sku,
            name: product.name,
            category: product.category,
            quantity: item.quantity,
            unit_price_cents: product.unit_price_cents,
        });
    }
    let stmt = db.prepare_cached("DELETE FROM carts WHERE customer_id = $1").await?;
    db.execute(&stmt, &[&customer_id]).await?;
    let insert = db
        .prepare_cached(
            "INSERT INTO carts (customer_id, position, sku, quantity) VALUES ($1, $2, $3, $4)
             ON CONFLICT (customer_id, sku) DO UPDATE SET quantity = carts.quantity + $4",
        )
        .await?;
    for (position, item) in items.iter().enumerate() {
        db.execute(&insert, &[&customer_id, &(position as i64), &item.sku, &i64::from(item.quantity)]).await?;
    }
    cart_lines(db, customer_id).await.map(|(lines_now, _)| if lines_now.is_empty() { lines } else { lines_now })
}

fn cart_row(r: &Row) -> (String, i64, Option<String>, Option<String>, Option<i64>) {
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
}

pub async fn cart_lines(db: &impl Db, customer_id: &str) -> Result<(Vec<CartLine>, Vec<String>), StoreError> {
    let stmt = db
        .prepare_cached(
            "SELECT c.sku, c.quantity, p.name, p.category, p.unit_price_cents
             FROM carts c LEFT JOIN products p ON p.sku = c.sku WHERE c.customer_id = $1 ORDER BY c.position",
        )
        .await?;
    let mut lines = Vec::new();
    let mut unknown = Vec::new();
    for row in db.query(&stmt, &[&customer_id]).await? {
        match cart_row(&row) {
            (sku, quantity, Some(name), Some(category), Some(price)) => {
                lines.push(CartLine { sku, name, category, quantity: quantity as u32, unit_price_cents: price as u64 })
            }
            (sku, ..) => unknown.push(sku),
        }
    }
    Ok((lines, unknown))
}

/// `smartmart_order_snapshot`'s call (see [`order_snapshot`]). An SQL
/// function since schema version 17, which the planner inlines into this
/// statement: its plan is the prepared statement's, made once.
pub(super) const ORDER_SNAPSHOT: OrderCall = OrderCall {
    sql: "SELECT part, position, id, name, email, phone, tier, status, lat, lon, sku, category, quantity, price,
                 available
          FROM smartmart_order_snapshot($1, $2, $3)",
    types: &[Type::TEXT, Type::TEXT, Type::TEXT],
};

/// The order's reads (see `store::catalog::OrderSnapshot`): one call of
/// `smartmart_order_snapshot` (schema version 8), one query in one round
/// trip, so the stock read is the stock of the cart read. Its rows come by
/// cart position, each a part of the answer; assembled here as the SQLite
/// twin returns them: warehouses by id, each with its skus in the cart's
/// order.
pub async fn order_snapshot(
    db: &impl Db,
    customer_id: &str,
    key: Option<(&str, &str)>,
) -> Result<OrderSnapshot, StoreError> {
    let (key_channel, key) = key.unzip();
    let rows = db.call_prepared(&ORDER_SNAPSHOT, &[&customer_id, &key_channel, &key]).await?;
    let mut snapshot = OrderSnapshot {
        customer: None,
        cart: Vec::new(),
        unknown_skus: Vec::new(),
        stocked: Vec::new(),
        key_used: false,
    };
    // By cart position: the lines, and each warehouse's skus, in cart order.
    for r in &rows {
        match r.get::<_, &str>("part") {
            "customer" => {
                snapshot.customer = Some(Customer {
                    id: r.get("id"),
                    name: r.get("name"),
                    email: r.get("email"),
                    phone: r.get("phone"),
                    tier: parse_tier(r.get("tier"))?,
                    status: parse_status(r.get("status"))?,
                    location: GeoPoint { lat: r.get("lat"), lon: r.get("lon") },
                })
            }
            "line" => match (
                r.get::<_, Option<String>>("name"),
                r.get::<_, Option<String>>("category"),
                r.get::<_, Option<i64>>("price"),
            ) {
                (Some(name), Some(category), Some(price)) => snapshot.cart.push(CartLine {
                    sku: r.get("sku"),
                    name,
                    category,
                    quantity: r.get::<_, i64>("quantity") as u32,
                    unit_price_cents: price as u64,
                }),
                _ => snapshot.unknown_skus.push(r.get("sku")),
            },
            "stock" => {
                let id: String = r.get("id");
                let sku: String = r.get("sku");
                let available = u32::try_from(r.get::<_, i64>("available").max(0)).unwrap_or(u32::MAX);
                match snapshot.stocked.iter_mut().find(|w| w.warehouse.id == id) {
                    Some(w) => w.available.push((sku, available)),
                    None => snapshot.stocked.push(StockedWarehouse {
                        warehouse: Warehouse {
                            id,
                            name: r.get("name"),
                            location: GeoPoint { lat: r.get("lat"), lon: r.get("lon") },
                        },
                        available: vec![(sku, available)],
                    }),
                }
            }
            "key" => snapshot.key_used = true,
            other => return Err(StoreError::Corrupt(format!("an order snapshot row of part {other:?}"))),
        }
    }
    snapshot.stocked.sort_by(|a, b| a.warehouse.id.cmp(&b.warehouse.id));
    Ok(snapshot)
}
