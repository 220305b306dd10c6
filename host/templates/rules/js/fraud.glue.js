// The component's exports for the `{{world}}` world ({{contract}}):
// converts the host's values, calls rule.js, converts the answer back.
// Rule logic belongs in rule.js; this file rarely needs a change.

import * as rule from './rule.js';
import { config, guarded, log, order, toNumber, toU32 } from './convert.js';

export const meta = {
  info: () => ({ name: rule.info.name, version: rule.info.version, description: rule.info.description }),
};

const ACTIONS = ['ALLOW', 'REVIEW', 'ESCALATE'];

export const fraud = {
  check: (input, payment) =>
    guarded(['bad-config'], () => {
      const verdict = rule.check(
        order(input),
        {
          status: payment.status,
          amount_cents: toNumber(payment.amountCents, 'amount_cents'),
          attempts: payment.attempts,
          gateway: payment.gateway,
        },
        config(),
        log,
      );
      if (!ACTIONS.includes(verdict.action)) {
        throw new TypeError(`action must be one of ${ACTIONS.join(', ')}, got ${JSON.stringify(verdict.action)}`);
      }
      return {
        action: verdict.action.toLowerCase(),
        score: toU32(verdict.score, 'score', 100),
        flags: (verdict.flags ?? []).map(String),
        reasons: (verdict.reasons ?? []).map(String),
      };
    }),
};
