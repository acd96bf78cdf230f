// Bundles src/ into dist/ (committed, and embedded in the `tandem` binary). CI rebuilds it and
// fails when the committed bundle differs.
import * as esbuild from 'esbuild'
import { copyFileSync, mkdirSync } from 'node:fs'

mkdirSync('dist', { recursive: true })
await esbuild.build({
  entryPoints: ['src/main.js'],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2022'],
  outfile: 'dist/app.js',
  legalComments: 'none',
  logLevel: 'warning'
})
copyFileSync('src/index.html', 'dist/index.html')
copyFileSync('src/style.css', 'dist/style.css')
