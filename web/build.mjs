// Bundles src/ into dist/ (committed, and embedded in the `tandem` binary). CI rebuilds it and
// fails when the committed bundle differs.
import * as esbuild from 'esbuild'
import { copyFileSync, mkdirSync } from 'node:fs'

/**
 * @tandem/client is linked from ../clients/js, which has its own node_modules (for its
 * tests): its imports of its peer dependencies are resolved here, in web/node_modules, so the
 * page bundles one copy of each (two copies of yjs break it).
 */
const peersFromHere = {
  name: 'peers-from-here',
  setup (build) {
    const here = process.cwd()
    build.onResolve({ filter: /^(yjs|lib0|y-protocols|y-websocket|y-indexeddb)(\/.*)?$/ }, (args) => {
      if (args.resolveDir === here || args.pluginData?.fromHere) return undefined
      return build.resolve(args.path, { kind: args.kind, resolveDir: here, pluginData: { fromHere: true } })
    })
  }
}

mkdirSync('dist', { recursive: true })
await esbuild.build({
  entryPoints: ['src/main.js'],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2022'],
  outfile: 'dist/app.js',
  legalComments: 'none',
  plugins: [peersFromHere],
  logLevel: 'warning'
})
copyFileSync('src/index.html', 'dist/index.html')
copyFileSync('src/style.css', 'dist/style.css')
