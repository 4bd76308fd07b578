#!/usr/bin/env node
// Shim: loads the compiled CLI (npm run build writes dist/).
import '../dist/cli.js';
