// Conversions between the host's values, as ComponentizeJS hands them over
// (camelCase fields, 64-bit integers as BigInt, enums as lower-case
// strings), and the plain shape rule.js works on: exactly the JSON of
// examples/*.input.json (snake_case fields, amounts in cents as Numbers,
// tiers and statuses in upper case). Nothing here is specific to a rule.

import { entries } from 'smartmart:rules/config@0.1.0';
import { emit } from 'smartmart:rules/log@0.1.0';

/** A 64-bit integer from the host as a Number; refuses what a Number cannot hold exactly. */
export const toNumber = (value, what) => {
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new RangeError(`${what} = ${value} is beyond JavaScript's exact integers`);
  return n;
};

/** A whole number of cents (or units) >= 0 from the rule, as the BigInt the host expects for a u64. */
export const toU64 = (n, what) => {
  if (typeof n === 'bigint' && n >= 0n) return n;
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new TypeError(`${what} must be a whole number >= 0 (use Math.floor to round), got ${n}`);
  }
  return BigInt(n);
};

/** A u32 (quantities, scores) from the rule. */
export const toU32 = (n, what, max = 0xffffffff) => {
  if (!Number.isInteger(n) || n < 0 || n > max) throw new TypeError(`${what} must be a whole number 0..=${max}, got ${n}`);
  return n;
};

/** The order, as in examples/*.input.json. */
export const order = (o) => ({
  order_id: o.orderId,
  channel: o.channel,
  currency: o.currency,
  customer: { id: o.customer.id, tier: o.customer.tier.toUpperCase(), status: o.customer.status.toUpperCase() },
  lines: o.lines.map((l) => ({
    sku: l.sku,
    name: l.name,
    category: l.category,
    quantity: l.quantity,
    unit_price_cents: toNumber(l.unitPriceCents, 'unit_price_cents'),
  })),
  subtotal_cents: toNumber(o.subtotalCents, 'subtotal_cents'),
  payable_cents: toNumber(o.payableCents, 'payable_cents'),
  coupon_code: o.couponCode ?? null,
  ship_to: { lat: o.shipTo.lat, lon: o.shipTo.lon },
  ordered_at_ms: toNumber(o.orderedAtMs, 'ordered_at_ms'),
});

/** The module's configuration from the manifest, as a plain object of strings. */
export const config = () => Object.fromEntries(entries());

const fields = (f) => Object.entries(f ?? {}).map(([k, v]) => [String(k), String(v)]);

/** What rule.js logs with: `log.info('message', { key: value })`. */
export const log = {
  trace: (message, f) => emit('trace', String(message), fields(f)),
  debug: (message, f) => emit('debug', String(message), fields(f)),
  info: (message, f) => emit('info', String(message), fields(f)),
  warn: (message, f) => emit('warn', String(message), fields(f)),
  error: (message, f) => emit('error', String(message), fields(f)),
};

/**
 * What the host gets for something rule.js threw. An error whose `code` is
 * one the world allows (`invalid-coupon`, `bad-config`, `cannot-fulfil`)
 * becomes that typed error; anything else becomes `internal` with its
 * message. Without this an uncaught exception reaches the host only as an
 * anonymous `unreachable` trap.
 */
export const failure = (e, allowed) => {
  if (e !== null && typeof e === 'object' && allowed.includes(e.code)) {
    if (e.code === 'cannot-fulfil') {
      return {
        tag: 'cannot-fulfil',
        val: {
          sku: String(e.sku),
          requested: toU32(e.requested, 'requested'),
          available: toU32(e.available, 'available'),
          reason: String(e.message),
        },
      };
    }
    return { tag: e.code, val: String(e.message) };
  }
  const message = e instanceof Error ? `${e.name}: ${e.message}` : `uncaught ${typeof e}: ${String(e)}`;
  return { tag: 'internal', val: message };
};

/** Runs `body`, turning whatever it throws into the world's error. */
export const guarded = (allowed, body) => {
  try {
    return body();
  } catch (e) {
    let error;
    try {
      error = failure(e, allowed);
    } catch (inner) {
      error = { tag: 'internal', val: `malformed error from the rule: ${inner.message}` };
    }
    throw error;
  }
};
