// Serves the example on http://localhost:8080 (PORT), bundled by esbuild on every request.
// The Tandem server must let this origin call it:
//   cargo run --release -- --cors-origins http://localhost:8080
import * as esbuild from 'esbuild'

const port = Number(process.env.PORT ?? 8080)
const context = await esbuild.context({
  entryPoints: ['app.js'],
  bundle: true,
  format: 'esm',
  target: ['es2022'],
  outdir: '.',
  write: false,
  logLevel: 'warning'
})
const { host } = await context.serve({ servedir: '.', port, host: '127.0.0.1' })
console.log(`the example: http://localhost:${port}/?name=Ada (its server: ?server=http://${host === '127.0.0.1' ? 'localhost' : host}:8000 by default)`)
