// @ts-check
// {{name}}: the business rule, as plain functions over the order.
//
// `order` and each of `candidates` are exactly the `order` and `candidates`
// of examples/order.input.json (snake_case, amounts in cents as Numbers);
// `config` holds the manifest's `config` table (strings);
// `log.info('message', { key: value })` lands in the host's log and in
// `smartmart rules run`'s report.
//
// `select` returns the plan `{ allocations: [{ warehouse_id, lines: [{ sku,
// quantity }] }], reasons }`: every unit of every line allocated once, from
// stock the candidates have (the host checks). When no plan can cover the
// order, throw `fail('cannot-fulfil', why, { sku, requested, available })`
// (the order is refused OUT_OF_STOCK); `fail('bad-config', why)` for a
// broken configuration. Anything else thrown is the rule's failure.

/** @type {import('./types.js').RuleInfo} */
export const info = {
  name: '{{name}}',
  version: '1.0.0',
  description: '{{description}}',
};

/** @param {import('./types.js').SelectErrorCode} code @param {string} message */
const fail = (code, message, extra = {}) => Object.assign(new Error(message), { code, ...extra });

/** Units wanted per sku, in the order the skus first appear. */
/** @param {import('./types.js').CartLine[]} lines */
export const wanted = (lines) => {
  const units = new Map();
  for (const l of lines) units.set(l.sku, (units.get(l.sku) ?? 0) + l.quantity);
  return units;
};

/** @type {import('./types.js').Select} */
export const select = (order, candidates, config, log) => {
  const units = wanted(order.lines);
  /** @type {(c: import('./types.js').Candidate, sku: string, n: number) => boolean} */
  const has = (c, sku, n) => (c.stock.find((s) => s.sku === sku)?.available ?? 0) >= n;
  const chosen = candidates.find((c) => [...units].every(([sku, n]) => has(c, sku, n)));
  if (!chosen) {
    /** @param {string} sku */
    const best = (sku) => Math.max(0, ...candidates.map((c) => c.stock.find((s) => s.sku === sku)?.available ?? 0));
    const [sku, requested] = [...units].find(([sku, n]) => best(sku) < n) ?? [...units][0];
    throw fail('cannot-fulfil', 'no single warehouse has every line', { sku, requested, available: best(sku) });
  }
  log.info('{{name}} chose a warehouse', { order_id: order.order_id, warehouse_id: chosen.id });
  return {
    allocations: [{ warehouse_id: chosen.id, lines: [...units].map(([sku, quantity]) => ({ sku, quantity })) }],
    reasons: [`first_covering=${chosen.id}`],
  };
};
