#!/usr/bin/env node
// Shim: loads the compiled CLI. dist/ comes with the package (npm pack and a git install build it
// through the `prepare` script); a source checkout has it only after `npm install` or `npm run build`.
import { existsSync } from 'node:fs';

const cli = new URL('../dist/cli.js', import.meta.url);
if (!existsSync(cli)) {
  process.stderr.write(
    'ptth-proxy: the compiled CLI (dist/cli.js) is missing: this is a source checkout that has not been built.\n' +
      '  Run `npm install` (it builds dist/) or `npm run build` in the checkout, then try again.\n',
  );
  process.exit(1);
}
await import(cli.href);
