// @ts-check
// coupons, in JavaScript: the bundled Rust rule `plugins/coupons/` ported
// to arrow functions over the order, answering exactly as it does (the
// integration tests run both on examples/ and compare).
//
// A coupon code typed by the customer takes a percentage or a fixed amount
// off what is left to pay. Codes and their values come only from the module
// config: `code.<CODE> = "percent:<1..=100>" | "amount:<cents>"`, codes
// compared case-insensitively. An unknown code is the customer's mistake
// (`invalid-coupon`: the order is refused INVALID_COUPON); a malformed
// `code.*` entry is `bad-config`.

/** @type {import('./types.js').RuleInfo} */
export const info = {
  name: 'coupons',
  version: '1.0.0',
  description:
    'Coupon codes from the module config: a percentage or a fixed amount off what is left to pay; an unknown code is refused.',
};

const CODE_PREFIX = 'code.';

/** @param {import('./types.js').ApplyErrorCode} code @param {string} message */
const fail = (code, message) => Object.assign(new Error(message), { code });

/** One config value: `{ percent }` or `{ amount }` (kind case-insensitive, blanks allowed). */
/**
 * @param {string} key @param {string} value
 * @returns {{ percent: number } | { amount: number }}
 */
export const parseOffer = (key, value) => {
  const bad = () =>
    fail('bad-config', `${key} must be "percent:<1..=100>" or "amount:<cents>", got ${JSON.stringify(value)}`);
  const colon = value.indexOf(':');
  if (colon < 0) throw bad();
  const kind = value.slice(0, colon).trim().toLowerCase();
  const digits = value.slice(colon + 1).trim();
  if (!/^\+?\d+$/.test(digits)) throw bad();
  const n = Number(digits);
  if (kind === 'percent' && n >= 1 && n <= 100) return { percent: n };
  // Amounts beyond JavaScript's exact integers (90 trillion dollars) are refused.
  if (kind === 'amount' && n >= 1 && Number.isSafeInteger(n)) return { amount: n };
  throw bad();
};

/**
 * Looks `code` up among the `code.*` entries. Every entry is checked, so a
 * malformed or ambiguous config is reported whichever code was typed.
 * Returns the code as configured, upper case, and its offer.
 */
/** @param {string} code @param {[string, string][]} entries */
export const find = (code, entries) => {
  const wanted = code.toUpperCase();
  /** @type {string[]} */
  const seen = [];
  let found = null;
  for (const [key, value] of entries) {
    if (!key.startsWith(CODE_PREFIX)) continue;
    const name = key.slice(CODE_PREFIX.length).trim().toUpperCase();
    if (name === '') throw fail('bad-config', `${JSON.stringify(key)} names no code`);
    if (seen.includes(name)) {
      throw fail('bad-config', `code ${name} is configured more than once (codes are case-insensitive)`);
    }
    const offer = parseOffer(key, value);
    if (name === wanted) found = { code: name, offer };
    seen.push(name);
  }
  if (!found) throw fail('invalid-coupon', `unknown coupon code ${JSON.stringify(code)}`);
  return found;
};

/** The discount line for the order's coupon; none without a code or with nothing to pay. */
/** @type {import('./types.js').Apply} */
export const apply = (order, config, log) => {
  const typed = (order.coupon_code ?? '').trim();
  if (typed === '') {
    log.debug('coupons applied', { order_id: order.order_id, outcome: 'none' });
    return [];
  }
  const { code, offer } = find(typed, Object.entries(config));
  const payable = order.payable_cents;
  const reasons = [`coupon=${code}`];
  let description;
  let amount;
  if ('percent' in offer) {
    reasons.push(`percent=${offer.percent}`);
    description = `Coupon ${code}: ${offer.percent}%`;
    // Exact for any amount: BigInt, rounded down like the Rust rule.
    amount = Number((BigInt(payable) * BigInt(offer.percent)) / 100n);
  } else {
    reasons.push(`amount_cents=${offer.amount}`);
    if (offer.amount > payable) reasons.push(`capped_at_payable=${payable}`);
    description = `Coupon ${code}: ${offer.amount} off`;
    amount = Math.min(offer.amount, payable);
  }
  log.debug('coupons applied', { order_id: order.order_id, outcome: amount });
  return amount > 0 ? [{ description, amount_cents: amount, reasons }] : [];
};
