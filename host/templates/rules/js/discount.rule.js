// @ts-check
// {{name}}: the business rule, as plain functions over the order.
//
// `order` is exactly the `order` of examples/order.input.json (snake_case,
// amounts in cents as Numbers, tiers in upper case); `config` holds the
// manifest's `config` table (strings); `log.info('message', { key: value })`
// lands in the host's log and in `smartmart rules run`'s report.
//
// `apply` returns the discount in cents (0: none), or an array of lines
// `{ description, amount_cents, reasons }`. Amounts are whole cents: round
// with Math.floor. Throw `fail('invalid-coupon', why)` for the customer's
// mistake (the order is refused) and `fail('bad-config', why)` for a broken
// configuration; anything else thrown is reported as the rule's failure.

/** @type {import('./types.js').RuleInfo} */
export const info = {
  name: '{{name}}',
  version: '1.0.0',
  description: '{{description}}',
};

/** @param {import('./types.js').ApplyErrorCode} code @param {string} message */
const fail = (code, message) => Object.assign(new Error(message), { code });

const TIERS = ['GOLD', 'SILVER', 'STANDARD'];

/** @param {import('./types.js').Config} config */
export const settings = (config) => {
  const raw = config.percent ?? '5';
  if (!/^\s*\d{1,3}\s*$/.test(raw) || Number(raw) > 100) {
    throw fail('bad-config', `percent must be a whole number from 0 to 100, got ${JSON.stringify(raw)}`);
  }
  const tier = (config.tier ?? 'GOLD').trim().toUpperCase();
  if (!TIERS.includes(tier)) throw fail('bad-config', `tier must be one of ${TIERS.join(', ')}, got ${JSON.stringify(config.tier)}`);
  return { percent: Number(raw), tier };
};

/** @type {import('./types.js').Apply} */
export const apply = (order, config, log) => {
  const { percent, tier } = settings(config);
  const amount = order.customer.tier === tier ? Math.floor((order.payable_cents * percent) / 100) : 0;
  log.info('{{name}} applied', { order_id: order.order_id, amount_cents: amount });
  if (amount === 0) return [];
  return [{ description: `${tier} tier ${percent}%`, amount_cents: amount, reasons: [`tier=${tier}`, `percent=${percent}`] }];
};
