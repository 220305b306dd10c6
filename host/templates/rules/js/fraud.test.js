// The rule's logic, natively in Node (`npm test` runs it, and
// examples.test.js runs the component itself on examples/).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { check } from './rule.js';

const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };
const order = (payable) => ({ order_id: 'ord_test', payable_cents: payable });
const payment = { status: 'CAPTURED', amount_cents: 0, attempts: 1, gateway: 'sandbox' };

test('at or over the threshold is REVIEW, under is ALLOW', () => {
  assert.equal(check(order(100000), payment, {}, quiet).action, 'REVIEW');
  assert.deepEqual(check(order(99999), payment, {}, quiet).flags, []);
  assert.equal(check(order(500), payment, { threshold_cents: '500' }, quiet).action, 'REVIEW');
});

test('a broken threshold is bad-config', () => {
  assert.throws(() => check(order(1), payment, { threshold_cents: 'lots' }, quiet), { code: 'bad-config' });
});
