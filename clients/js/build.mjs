// Builds dist/: ESM and CJS for bundlers and Node, a minified IIFE (window.Clarion) for a
// <script> tag. Declarations come from tsc (npm run build). No runtime dependencies.
import { build } from "esbuild";
import { rmSync } from "node:fs";

rmSync("dist", { recursive: true, force: true });
const common = { bundle: true, target: "es2020", logLevel: "warning", legalComments: "none" };
await Promise.all([
  build({ ...common, entryPoints: ["src/index.ts"], format: "esm", outfile: "dist/index.js", sourcemap: true }),
  build({ ...common, entryPoints: ["src/index.ts"], format: "cjs", outfile: "dist/index.cjs", sourcemap: true }),
  build({ ...common, entryPoints: ["src/global.ts"], format: "iife", outfile: "dist/clarion.global.min.js", minify: true }),
]);
