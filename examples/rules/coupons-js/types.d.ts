// The types of a `discount-rule` rule (smartmart:rules@0.1.0) as rule.js sees them: generated
// from wit/ by `smartmart rules types`. Do not edit; regenerate after a
// contract change:
//   smartmart rules types --world discount-rule --wit wit --out types.d.ts
//
// The shape is the one convert.js makes of the host's values: snake_case
// fields, every integer a number (64-bit amounts are exact below 2^53: a
// larger one fails the call, it is never rounded), enums as their
// upper-case names, an absent option as null.

/** The module's `config` table from the plug-in manifest: strings only; the rule parses them. */
export type Config = Readonly<Record<string, string>>;

/** Structured logging into the service's log (and `rules run`'s report): `log.info('message', { key: value })`. */
export interface Log {
  trace(message: string, fields?: Record<string, unknown>): void;
  debug(message: string, fields?: Record<string, unknown>): void;
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

/** What rule.js exports as `info` (reported by `rules check` and the service). */
export interface RuleInfo {
  /** Rule name, e.g. "gold-loyalty" (a Rust guest: its package name). */
  name: string;
  /** Semantic version, e.g. "1.0.0" (a Rust guest: its package version). */
  version: string;
  /** One sentence on what the rule does. */
  description: string;
}

/** Loyalty tier of a customer. */
export type Tier = 'GOLD' | 'SILVER' | 'STANDARD';

/** Account status. Orders of blocked customers never reach a rule, but fraud checks may see either value in the future. */
export type AccountStatus = 'ACTIVE' | 'BLOCKED';

/** The customer as rules see it: no name, email, phone or address. */
export interface Customer {
  /** Stable customer id, e.g. "C-1001". */
  id: string;
  tier: Tier;
  status: AccountStatus;
}

/** One line of the cart, priced at order time. */
export interface CartLine {
  /** Stock keeping unit, e.g. "TV-55-OLED". */
  sku: string;
  /** Product name shown on the invoice. */
  name: string;
  /** Product category, e.g. "electronics", "home-appliances", "accessories". */
  category: string;
  /** Units ordered, 1..=1000000. */
  quantity: number;
  /** Price of one unit in minor units of the order's currency. */
  unit_price_cents: number;
}

/** A point on Earth in decimal degrees (WGS 84). */
export interface GeoPoint {
  /** Latitude, -90..=90. */
  lat: number;
  /** Longitude, -180..=180. */
  lon: number;
}

/** Everything a rule may base its decision on. */
export interface OrderContext {
  /** The order's id, e.g. "ord_0193…"; for logs and reasons only. */
  order_id: string;
  /** Sales channel: "web", "mobile" or "partner". */
  channel: string;
  /** ISO 4217 currency of every amount, e.g. "USD". */
  currency: string;
  customer: Customer;
  lines: CartLine[];
  /** Sum of quantity × unit price over all lines. */
  subtotal_cents: number;
  /** What is still payable when this rule runs: the subtotal minus the discounts of the rules that ran before it (discounts stack in the configured order). Equal to the subtotal for non-discount rules that run before discounting, and to the final total for fraud checks. */
  payable_cents: number;
  /** Coupon code as the customer typed it, if any. */
  coupon_code: string | null;
  /** Where the order ships to. */
  ship_to: GeoPoint;
  /** When the order was placed, milliseconds since the Unix epoch (UTC). Rules have no clock: this is the time to reason about. */
  ordered_at_ms: number;
}

/** One discount a rule grants. */
export interface DiscountLine {
  /** Short machine name of the rule, e.g. "gold-loyalty". */
  rule?: string;
  /** Human readable, shown on the invoice, e.g. "GOLD tier 10%". */
  description: string;
  /** Amount taken off, in minor units. The host caps the sum so the total never goes below zero; a zero amount is not listed. */
  amount_cents: number;
  /** Machine-readable reasons, e.g. ["tier=GOLD", "rate=10%"]. */
  reasons?: string[];
}

/** Compute zero or more discounts for the order. */
export type Apply = (order: OrderContext, config: Config, log: Log) => DiscountLine[] | number;

/** What rule.js may throw as `Object.assign(new Error(why), { code })`; anything else is the rule's failure. */
export type ApplyErrorCode = 'invalid-coupon' | 'bad-config';
