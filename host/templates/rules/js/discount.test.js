// The rule's logic, natively in Node (`npm test` runs it, and
// examples.test.js runs the component itself on examples/).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { apply } from './rule.js';

const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };
const order = (tier, payable) => ({ order_id: 'ord_test', customer: { id: 'C-1', tier, status: 'ACTIVE' }, payable_cents: payable });

test('the configured tier gets the percentage, rounded down', () => {
  assert.deepEqual(apply(order('GOLD', 1999), {}, quiet), [
    { description: 'GOLD tier 5%', amount_cents: 99, reasons: ['tier=GOLD', 'percent=5'] },
  ]);
  assert.equal(apply(order('SILVER', 1000), { tier: 'silver', percent: '10' }, quiet)[0].amount_cents, 100);
});

test('other tiers and nothing to pay get no line', () => {
  assert.deepEqual(apply(order('STANDARD', 1000), {}, quiet), []);
  assert.deepEqual(apply(order('GOLD', 0), {}, quiet), []);
});

test('a broken config is bad-config', () => {
  for (const config of [{ percent: 'x' }, { percent: '101' }, { percent: '' }, { tier: 'PLATINUM' }]) {
    assert.throws(() => apply(order('GOLD', 1000), config, quiet), { code: 'bad-config' }, JSON.stringify(config));
  }
});
