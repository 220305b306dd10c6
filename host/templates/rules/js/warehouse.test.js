// The rule's logic, natively in Node (`npm test` runs it, and
// examples.test.js runs the component itself on examples/).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { select } from './rule.js';

const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };
const order = (lines) => ({ order_id: 'ord_test', lines });
const wh = (id, stock) => ({ id, name: id, location: { lat: 0, lon: 0 }, stock });

test('the first warehouse with every line ships it all, duplicate skus summed', () => {
  const plan = select(
    order([{ sku: 'A', quantity: 1 }, { sku: 'B', quantity: 2 }, { sku: 'A', quantity: 1 }]),
    [wh('W1', [{ sku: 'A', available: 5 }]), wh('W2', [{ sku: 'A', available: 2 }, { sku: 'B', available: 2 }])],
    {},
    quiet,
  );
  assert.deepEqual(plan, {
    allocations: [{ warehouse_id: 'W2', lines: [{ sku: 'A', quantity: 2 }, { sku: 'B', quantity: 2 }] }],
    reasons: ['first_covering=W2'],
  });
});

test('no covering warehouse is cannot-fulfil naming the short sku', () => {
  assert.throws(
    () => select(order([{ sku: 'A', quantity: 3 }]), [wh('W1', [{ sku: 'A', available: 2 }])], {}, quiet),
    { code: 'cannot-fulfil', sku: 'A', requested: 3, available: 2 },
  );
});
