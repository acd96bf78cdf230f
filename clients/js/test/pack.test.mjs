// The package as an app installs it: `npm pack` makes the tarball, an app installs it, imports
// it, talks to a real server with it, and type-checks against its declarations.

import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { Server } from './server.mjs'

const root = resolve(import.meta.dirname, '..')

test('npm pack makes a package an app installs, runs against a server, and type-checks', async () => {
  // The app lives inside the package's folder, so its imports of the peer dependencies
  // (yjs and the others) find the ones installed here, as an app's own would be.
  const app = mkdtempSync(join(root, '.pack-check-'))
  const server = await Server.start()
  try {
    const [packed] = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', app], { cwd: root, encoding: 'utf8' }))
    const files = packed.files.map((f) => f.path).sort()
    for (const needed of ['package.json', 'README.md', 'CHANGELOG.md', 'src/index.js', 'src/tandem.js', 'types/index.d.ts']) {
      assert.ok(files.includes(needed), `${needed} is packed: ${files}`)
    }
    assert.deepEqual(files.filter((f) => /^(test|examples|node_modules)\//.test(f)), [], 'no tests, examples or dependencies packed')

    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'an-app', private: true, type: 'module' }))
    execFileSync('npm', ['install', '--offline', '--legacy-peer-deps', '--no-audit', '--no-fund', join(app, packed.filename)], { cwd: app, stdio: 'pipe' })

    writeFileSync(join(app, 'main.mjs'), `
      import WebSocket from 'ws'
      import { createTandem, devToken } from '@tandem/client'
      const url = process.argv[2]
      const { token } = await devToken(url, 'App')
      const t = createTandem({ url, token, WebSocket })
      const got = new Promise((resolve) => t.subscribe('system', resolve))
      await t.ready
      while (t.status !== 'connected') await new Promise((resolve) => setTimeout(resolve, 20))
      await fetch(url + '/api/v1/events?workspace=default', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ type: 'system_alert', message: 'from the tarball', severity: 'info' }) })
      console.log((await got).message)
      t.destroy()
    `)
    const out = execFileSync(process.execPath, ['main.mjs', server.url], { cwd: app, encoding: 'utf8', timeout: 30000 })
    assert.equal(out.trim(), 'from the tarball')

    writeFileSync(join(app, 'main.ts'), `
      import { createTandem, type TandemEvent } from '@tandem/client'
      const t = createTandem({ url: 'http://localhost:8000', token: 'x' })
      t.subscribe(['queries'], (event: TandemEvent) => console.log(event.id))
      const doc = t.doc('acme/queries/1')
      doc.ydoc.getText('query').insert(0, 'SELECT 1')
    `)
    writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', lib: ['ES2022', 'DOM'], strict: true, noEmit: true, types: [] }, files: ['main.ts'] }))
    execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], { cwd: app, stdio: 'pipe' })
  } finally {
    await server.stop()
    rmSync(app, { recursive: true, force: true })
  }
})
