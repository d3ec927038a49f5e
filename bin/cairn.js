#!/usr/bin/env node
// The `cairn` command. Install (`npm ci`) builds dist/ via the `prepare` script.
import { main } from '../dist/cli/main.js';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
    // Servers return only after a clean shutdown; nothing else should keep us alive.
    setTimeout(() => process.exit(code), 200).unref();
  },
  (err) => {
    process.stderr.write(`error: ${err?.message ?? err}\n`);
    process.exit(1);
  },
);
