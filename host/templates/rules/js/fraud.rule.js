// @ts-check
// {{name}}: the business rule, as plain functions over the order.
//
// `order` and `payment` are exactly the `order` and `payment` of
// examples/order.input.json (snake_case, amounts in cents as Numbers);
// `config` holds the manifest's `config` table (strings; the service adds
// `threshold_cents` unless the manifest sets it);
// `log.info('message', { key: value })` lands in the host's log and in
// `smartmart rules run`'s report.
//
// `check` returns the verdict `{ action: 'ALLOW' | 'REVIEW' | 'ESCALATE',
// score: 0..100, flags, reasons }`. Throw `fail('bad-config', why)` for a
// broken configuration; anything else thrown is the rule's failure.

/** @type {import('./types.js').RuleInfo} */
export const info = {
  name: '{{name}}',
  version: '1.0.0',
  description: '{{description}}',
};

/** @param {import('./types.js').CheckErrorCode} code @param {string} message */
const fail = (code, message) => Object.assign(new Error(message), { code });

/** @param {import('./types.js').Config} config */
export const threshold = (config) => {
  const raw = config.threshold_cents ?? '100000';
  if (!/^\s*\d{1,15}\s*$/.test(raw)) {
    throw fail('bad-config', `threshold_cents must be a whole number of cents, got ${JSON.stringify(raw)}`);
  }
  return Number(raw);
};

/** @type {import('./types.js').Check} */
export const check = (order, payment, config, log) => {
  const limit = threshold(config);
  const total = order.payable_cents;
  log.info('{{name}} checked', { order_id: order.order_id, total_cents: total, threshold_cents: limit });
  if (total >= limit) {
    return { action: 'REVIEW', score: 50, flags: ['LARGE_ORDER'], reasons: [`total_cents=${total} >= threshold_cents=${limit}`] };
  }
  return { action: 'ALLOW', score: 0, flags: [], reasons: [`total_cents=${total} < threshold_cents=${limit}`] };
};
