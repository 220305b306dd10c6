// The component itself on every example, as the service runs it: for each
// examples/NAME.input.json, `smartmart rules run coupons_js.wasm --input …
// --expect examples/NAME.expected.json` must pass. `npm test` builds the
// component first; `smartmart` must be on PATH.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const project = fileURLToPath(new URL('.', import.meta.url));
const component = 'coupons_js.wasm';

const inputs = readdirSync(new URL('examples/', import.meta.url)).filter((f) => f.endsWith('.input.json')).sort();

test('there is an example to run', () => assert.ok(inputs.length > 0, 'no examples/*.input.json'));

for (const input of inputs) {
  const name = input.slice(0, -'.input.json'.length);
  test(`examples/${name} through ${component}`, () => {
    const args = ['rules', 'run', component, '--input', `examples/${input}`, '--expect', `examples/${name}.expected.json`];
    const run = spawnSync('smartmart', args, { cwd: project, encoding: 'utf8' });
    if (run.error) throw new Error(`could not start smartmart (is it on PATH?): ${run.error.message}`);
    assert.equal(run.status, 0, `smartmart ${args.join(' ')}\n${run.stdout}${run.stderr}`);
  });
}
