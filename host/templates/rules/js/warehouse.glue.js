// The component's exports for the `{{world}}` world ({{contract}}):
// converts the host's values, calls rule.js, converts the answer back.
// Rule logic belongs in rule.js; this file rarely needs a change.

import * as rule from './rule.js';
import { config, guarded, log, order, toU32 } from './convert.js';

export const meta = {
  info: () => ({ name: rule.info.name, version: rule.info.version, description: rule.info.description }),
};

const candidate = (c) => ({
  id: c.id,
  name: c.name,
  location: { lat: c.location.lat, lon: c.location.lon },
  stock: c.stock.map((s) => ({ sku: s.sku, available: s.available })),
});

export const warehouse = {
  select: (input, candidates) =>
    guarded(['cannot-fulfil', 'bad-config'], () => {
      const plan = rule.select(order(input), candidates.map(candidate), config(), log);
      return {
        allocations: plan.allocations.map((a) => ({
          warehouseId: String(a.warehouse_id),
          lines: a.lines.map((l) => ({ sku: String(l.sku), quantity: toU32(l.quantity, `quantity of ${l.sku}`) })),
        })),
        reasons: (plan.reasons ?? []).map(String),
      };
    }),
};
