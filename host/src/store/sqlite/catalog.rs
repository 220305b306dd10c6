//! Customers, products, warehouses, stock and carts on SQLite (the twin of
//! `store::postgres::catalog`; the records are in `store::catalog`).

use rusqlite::{Connection, OptionalExtension, params};

use super::super::StoreError;
use super::super::catalog::{
    CartItem, OrderSnapshot, Product, StockLevel, StockedWarehouse, Warehouse, parse_status, parse_tier,
};
use crate::clock::now_rfc3339;
use crate::domain::customer::Customer;
use crate::domain::geo::GeoPoint;
use crate::domain::order::CartLine;

/// Whether any customer exists (an empty store gets the demo data set).
pub fn has_customers(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn.prepare_cached("SELECT 1 FROM customers LIMIT 1")?.exists([])?)
}

pub fn upsert_customer(conn: &Connection, c: &Customer) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO customers (id, name, email, phone, tier, status, lat, lon, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (id) DO UPDATE SET name = ?2, email = ?3, phone = ?4, tier = ?5, status = ?6,
             lat = ?7, lon = ?8, updated_at = ?9",
    )?
    .execute(params![
        c.id,
        c.name,
        c.email,
        c.phone,
        c.tier.as_str(),
        c.status.as_str(),
        c.location.lat,
        c.location.lon,
        now_rfc3339()
    ])?;
    Ok(())
}

pub fn get_customer(conn: &Connection, id: &str) -> Result<Option<Customer>, StoreError> {
    let row = conn
        .prepare_cached("SELECT id, name, email, phone, tier, status, lat, lon FROM customers WHERE id = ?1")?
        .query_row([id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, f64>(6)?,
                r.get::<_, f64>(7)?,
            ))
        })
        .optional()?;
    row.map(|(id, name, email, phone, tier, status, lat, lon)| {
        Ok(Customer {
            id,
            name,
            email,
            phone,
            tier: parse_tier(&tier)?,
            status: parse_status(&status)?,
            location: GeoPoint { lat, lon },
        })
    })
    .transpose()
}

pub fn upsert_product(conn: &Connection, p: &Product) -> Result<(), StoreError> {
    let price = i64::try_from(p.unit_price_cents).map_err(|_| StoreError::Corrupt("price too large".into()))?;
    conn.prepare_cached(
        "INSERT INTO products (sku, name, category, unit_price_cents, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (sku) DO UPDATE SET name = ?2, category = ?3, unit_price_cents = ?4, updated_at = ?5",
    )?
    .execute(params![p.sku, p.name, p.category, price, now_rfc3339()])?;
    Ok(())
}

pub fn get_product(conn: &Connection, sku: &str) -> Result<Option<Product>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT sku, name, category, unit_price_cents FROM products WHERE sku = ?1")?
        .query_row([sku], |r| {
            Ok(Product {
                sku: r.get(0)?,
                name: r.get(1)?,
                category: r.get(2)?,
                unit_price_cents: r.get::<_, i64>(3)? as u64,
            })
        })
        .optional()?)
}

pub fn upsert_warehouse(conn: &Connection, w: &Warehouse) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO warehouses (id, name, lat, lon, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET name = ?2, lat = ?3, lon = ?4, updated_at = ?5",
    )?
    .execute(params![w.id, w.name, w.location.lat, w.location.lon, now_rfc3339()])?;
    Ok(())
}

/// Sets the units on hand. Refused (`NotFound`) for an unknown warehouse or
/// sku, and (`Conflict`) below the units held by orders still in flight.
pub fn set_stock(conn: &Connection, warehouse_id: &str, sku: &str, on_hand: u64) -> Result<StockLevel, StoreError> {
    let warehouse_name: Option<String> = conn
        .prepare_cached("SELECT name FROM warehouses WHERE id = ?1")?
        .query_row([warehouse_id], |r| r.get(0))
        .optional()?;
    let Some(warehouse_name) = warehouse_name else {
        return Err(StoreError::NotFound(format!("warehouse {warehouse_id}")));
    };
    if get_product(conn, sku)?.is_none() {
        return Err(StoreError::NotFound(format!("sku {sku}")));
    }
    let on_hand_i = i64::try_from(on_hand).map_err(|_| StoreError::Conflict("on_hand too large".into()))?;
    let reserved: i64 = conn
        .prepare_cached("SELECT reserved FROM stock WHERE warehouse_id = ?1 AND sku = ?2")?
        .query_row(params![warehouse_id, sku], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    if on_hand_i < reserved {
        return Err(StoreError::Conflict(format!(
            "{reserved} units of {sku} in {warehouse_id} are held by orders in flight; on_hand cannot go below that"
        )));
    }
    conn.prepare_cached(
        "INSERT INTO stock (warehouse_id, sku, on_hand, reserved) VALUES (?1, ?2, ?3, 0)
         ON CONFLICT (warehouse_id, sku) DO UPDATE SET on_hand = ?3",
    )?
    .execute(params![warehouse_id, sku, on_hand_i])?;
    Ok(StockLevel {
        warehouse_id: warehouse_id.to_string(),
        warehouse_name,
        sku: sku.to_string(),
        on_hand,
        available: (on_hand_i - reserved) as u64,
    })
}

/// Stock of one sku in every warehouse that lists it.
pub fn stock_of_sku(conn: &Connection, sku: &str) -> Result<Vec<StockLevel>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.warehouse_id, w.name, s.on_hand, s.reserved FROM stock s JOIN warehouses w ON w.id = s.warehouse_id
         WHERE s.sku = ?1 ORDER BY s.warehouse_id",
    )?;
    let rows = stmt.query_map([sku], |r| {
        let on_hand: i64 = r.get(2)?;
        let reserved: i64 = r.get(3)?;
        Ok(StockLevel {
            warehouse_id: r.get(0)?,
            warehouse_name: r.get(1)?,
            sku: sku.to_string(),
            on_hand: on_hand as u64,
            available: (on_hand - reserved).max(0) as u64,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Warehouses holding any of `skus`, with the availability of each.
pub fn stocked_warehouses(conn: &Connection, skus: &[&str]) -> Result<Vec<StockedWarehouse>, StoreError> {
    let mut out: Vec<StockedWarehouse> = Vec::new();
    let mut stmt = conn.prepare_cached(
        "SELECT w.id, w.name, w.lat, w.lon, s.on_hand - s.reserved FROM stock s JOIN warehouses w ON w.id = s.warehouse_id
         WHERE s.sku = ?1",
    )?;
    for sku in skus {
        let rows = stmt.query_map([sku], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, f64>(2)?,
                r.get::<_, f64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        for row in rows {
            let (id, name, lat, lon, available) = row?;
            let available = u32::try_from(available.max(0)).unwrap_or(u32::MAX);
            match out.iter_mut().find(|w| w.warehouse.id == id) {
                Some(w) => w.available.push((sku.to_string(), available)),
                None => out.push(StockedWarehouse {
                    warehouse: Warehouse { id, name, location: GeoPoint { lat, lon } },
                    available: vec![(sku.to_string(), available)],
                }),
            }
        }
    }
    out.sort_by(|a, b| a.warehouse.id.cmp(&b.warehouse.id));
    Ok(out)
}

/// Replaces a customer's cart. Every sku must exist (`NotFound` names the first that does not).
pub fn replace_cart(conn: &Connection, customer_id: &str, items: &[CartItem]) -> Result<Vec<CartLine>, StoreError> {
    let mut lines = Vec::with_capacity(items.len());
    for item in items {
        let Some(product) = get_product(conn, &item.sku)? else {
            return Err(StoreError::NotFound(format!("sku {}", item.sku)));
        };
        lines.push(line_of(product, item.quantity));
    }
    conn.prepare_cached("DELETE FROM carts WHERE customer_id = ?1")?.execute([customer_id])?;
    {
        let mut insert = conn.prepare_cached(
            "INSERT INTO carts (customer_id, position, sku, quantity) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (customer_id, sku) DO UPDATE SET quantity = quantity + ?4",
        )?;
        for (position, item) in items.iter().enumerate() {
            insert.execute(params![customer_id, position as i64, item.sku, item.quantity])?;
        }
    }
    cart_lines(conn, customer_id).map(|(lines_now, _)| if lines_now.is_empty() { lines } else { lines_now })
}

fn line_of(product: Product, quantity: u32) -> CartLine {
    CartLine {
        sku: product.sku,
        name: product.name,
        category: product.category,
        quantity,
        unit_price_cents: product.unit_price_cents,
    }
}

/// The customer's cart priced at current catalog prices, in the order the
/// items were put in; plus the skus no longer in the catalog.
pub fn cart_lines(conn: &Connection, customer_id: &str) -> Result<(Vec<CartLine>, Vec<String>), StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT c.sku, c.quantity, p.name, p.category, p.unit_price_cents
         FROM carts c LEFT JOIN products p ON p.sku = c.sku WHERE c.customer_id = ?1 ORDER BY c.position",
    )?;
    let mut lines = Vec::new();
    let mut unknown = Vec::new();
    let rows = stmt.query_map([customer_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<i64>>(4)?,
        ))
    })?;
    for row in rows {
        let (sku, quantity, name, category, price) = row?;
        match (name, category, price) {
            (Some(name), Some(category), Some(price)) => {
                lines.push(CartLine { sku, name, category, quantity: quantity as u32, unit_price_cents: price as u64 })
            }
            _ => unknown.push(sku),
        }
    }
    Ok((lines, unknown))
}

/// The order's reads in one borrow of the reader connection (see
/// `store::catalog::OrderSnapshot`), in one read transaction: the customer,
/// the cart and the stock as of one commit (each statement alone would see
/// the last commit at its own start), and the WAL's read lock taken once.
/// Dropped on an error, the transaction ends (rolled back) before the
/// connection goes back to the pool.
pub fn order_snapshot(
    conn: &Connection,
    customer_id: &str,
    key: Option<(&str, &str)>,
) -> Result<OrderSnapshot, StoreError> {
    let snapshot = conn.unchecked_transaction()?;
    let customer = get_customer(conn, customer_id)?;
    let (cart, unknown_skus) = cart_lines(conn, customer_id)?;
    let key_used = match key {
        Some((channel, key)) => conn
            .prepare_cached("SELECT 1 FROM idempotency WHERE channel = ?1 AND key = ?2")?
            .exists(params![channel, key])?,
        None => false,
    };
    let mut read = OrderSnapshot { customer, cart, unknown_skus, stocked: Vec::new(), key_used };
    read.stocked = stocked_warehouses(conn, &read.skus())?;
    snapshot.commit()?;
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader connection goes back to the pool after every snapshot with
    /// no transaction open, a failed one included: a read transaction left
    /// open would keep the WAL from ever being checkpointed past it.
    #[test]
    fn the_order_snapshot_ends_its_read_transaction_whatever_happens() {
        let conn = super::super::migrated_database();
        conn.execute_batch(
            "INSERT INTO customers (id, name, email, phone, tier, status, lat, lon, updated_at)
                 VALUES ('c1', 'Ann', 'ann@example.com', '+1', 'GOLD', 'ACTIVE', 1.0, 2.0, 't0');
             INSERT INTO products (sku, name, category, unit_price_cents, updated_at)
                 VALUES ('SKU-1', 'Cable', 'accessories', 500, 't0');
             INSERT INTO carts (customer_id, position, sku, quantity) VALUES ('c1', 0, 'SKU-1', 2);",
        )
        .unwrap();
        let read = order_snapshot(&conn, "c1", None).unwrap();
        assert_eq!(read.customer.map(|c| c.id).as_deref(), Some("c1"));
        assert_eq!(read.cart.iter().map(|line| (line.sku.as_str(), line.quantity)).collect::<Vec<_>>(), [("SKU-1", 2)]);
        assert!(conn.is_autocommit(), "the snapshot left its read transaction open");
        // Its last read fails: the transaction still ends.
        conn.execute_batch("DROP TABLE stock").unwrap();
        assert!(order_snapshot(&conn, "c1", None).is_err());
        assert!(conn.is_autocommit(), "a failed snapshot left its read transaction open");
    }
}
