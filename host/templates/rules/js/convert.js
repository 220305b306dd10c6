// Conversions between the host's values, as componentize-qjs hands them over
// (camelCase fields, 64-bit integers as Numbers, enums as lower-case
// strings), and the plain shape rule.js works on: exactly the JSON of
// examples/*.input.json (snake_case fields, amounts in cents as Numbers,
// tiers and statuses in upper case), typed in types.d.ts. Nothing here is
// specific to a rule.

import { entries } from 'smartmart:rules/config@{{contract_version}}';
import { emit } from 'smartmart:rules/log@{{contract_version}}';

/**
 * A 64-bit integer from the host, refused unless exact. The engine hands a
 * u64/s64 over as a Number, exact up to 2^53 - 1 (90 trillion dollars in
 * cents). A larger one arrives rounded to a Number of at least 2^53, never a
 * safe integer, or (a u64 from 2^63 on, converted through an i64) as a
 * negative number, which no u64 is: either is refused, so a rule sees every
 * amount exactly or fails the call, never a silently wrong amount.
 */
export const toNumber = (value, what, signed = false) => {
  const n = typeof value === 'bigint' ? Number(value) : value;
  if (!Number.isSafeInteger(n) || (!signed && n < 0)) {
    throw new RangeError(`${what} is beyond JavaScript's exact integers (it arrived as ${value}): amounts must stay below 2^53`);
  }
  return n;
};

/**
 * A whole number of cents (or units) >= 0 from the rule, for a u64. The
 * engine would truncate a fraction and clamp a negative number without a
 * word, so both are refused here, as is anything beyond 2^53 - 1.
 */
export const toU64 = (n, what) => {
  const value = typeof n === 'bigint' && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new TypeError(`${what} must be a whole number >= 0 and < 2^53 (use Math.floor to round), got ${n}`);
  }
  return value;
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
  ordered_at_ms: toNumber(o.orderedAtMs, 'ordered_at_ms', true),
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
