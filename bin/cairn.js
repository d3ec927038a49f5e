#!/usr/bin/env node
// The `cairn` command. In a checkout, `npm ci` builds dist/ (the `prepare` script);
// the package from `npm pack` ships it built, beside this file.
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
