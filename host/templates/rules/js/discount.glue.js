// The component's exports for the `{{world}}` world ({{contract}}):
// converts the host's values, calls rule.js, converts the answer back.
// Rule logic belongs in rule.js; this file rarely needs a change.

import * as rule from './rule.js';
import { config, guarded, log, order, toU64 } from './convert.js';

export const meta = {
  info: () => ({ name: rule.info.name, version: rule.info.version, description: rule.info.description }),
};

// A number from `apply` is one line with the rule's description; an array
// lists the lines (`description`, `amount_cents`, optional `reasons`).
const lines = (answer) => {
  if (typeof answer === 'number') {
    return answer > 0 ? [{ description: rule.info.description, amount_cents: answer }] : [];
  }
  if (!Array.isArray(answer)) {
    throw new TypeError(`apply must return cents (a number) or an array of discount lines, got ${typeof answer}`);
  }
  return answer;
};

export const discount = {
  apply: (input) =>
    guarded(['invalid-coupon', 'bad-config'], () =>
      lines(rule.apply(order(input), config(), log)).map((line, i) => ({
        rule: line.rule ?? rule.info.name,
        description: String(line.description),
        amountCents: toU64(line.amount_cents, `discount line ${i}: amount_cents`),
        reasons: (line.reasons ?? []).map(String),
      })),
    ),
};
