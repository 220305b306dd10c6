// The rule's logic, natively in Node: `npm test`. The same cases as the
// Rust rule's unit tests (plugins/coupons/src/lib.rs).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { apply } from './rule.js';

const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };
const bundled = { 'code.FLAT500': 'amount:500', 'code.WELCOME10': 'percent:10' };
const run = (code, payable, config = bundled) => apply({ order_id: 'ord_test', coupon_code: code, payable_cents: payable }, config, quiet);

test('percent and amount coupons', () => {
  assert.deepEqual(run('WELCOME10', 100000), [
    { description: 'Coupon WELCOME10: 10%', amount_cents: 10000, reasons: ['coupon=WELCOME10', 'percent=10'] },
  ]);
  assert.deepEqual(run('FLAT500', 100000), [
    { description: 'Coupon FLAT500: 500 off', amount_cents: 500, reasons: ['coupon=FLAT500', 'amount_cents=500'] },
  ]);
});

test('codes are case-insensitive both ways', () => {
  assert.equal(run(' welcome10 ', 1000)[0].description, 'Coupon WELCOME10: 10%');
  assert.equal(run('Flat500', 1000, { 'code.flat500': 'AMOUNT: 500' })[0].description, 'Coupon FLAT500: 500 off');
});

test('amount never exceeds payable; percent rounds down', () => {
  const [line] = run('FLAT500', 120);
  assert.equal(line.amount_cents, 120);
  assert.ok(line.reasons.includes('capped_at_payable=120'));
  assert.equal(run('WELCOME10', 1999)[0].amount_cents, 199);
});

test('nothing to pay, or no code, is no line', () => {
  assert.deepEqual(run('WELCOME10', 0), []);
  assert.deepEqual(run('WELCOME10', 9), []);
  assert.deepEqual(run(null, 1000), []);
  assert.deepEqual(run('  ', 1000), []);
});

test('unknown code is invalid-coupon', () => {
  assert.throws(() => run('NOPE', 1000), { code: 'invalid-coupon', message: 'unknown coupon code "NOPE"' });
  assert.throws(() => run('WELCOME10', 1000, {}), { code: 'invalid-coupon' });
});

test('malformed, ambiguous or empty codes are bad-config', () => {
  for (const bad of ['10', 'percent:', 'percent:abc', 'percent:0', 'percent:101', 'percent:-5', 'percent:10.5', 'amount:0', 'amount:-1', 'amount:5.00', 'free:10', '']) {
    assert.throws(() => run('A', 1000, { 'code.A': bad }), { code: 'bad-config' }, bad);
  }
  assert.throws(() => run('OK', 1000, { 'code.BROKEN': 'percent:x', 'code.OK': 'percent:5' }), /code\.BROKEN/);
  assert.throws(() => run('SAVE', 1000, { 'code.SAVE': 'percent:5', 'code.save': 'percent:50' }), { code: 'bad-config' });
  assert.throws(() => run('SAVE', 1000, { 'code.': 'percent:5' }), { code: 'bad-config' });
});
