// `destroy()` leaves nothing running, and a document synced over HTTP polling (WebSockets
// refused) converges with one on a WebSocket.

import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { Server, until, secret } from './server.mjs'
import { blockable, client, destroyAll } from './clients.mjs'

after(destroyAll)

test('destroy() leaves no timer or socket: the process ends by itself', async () => {
  const server = await Server.start({ secret: secret() })
  try {
    const child = spawn(process.execPath, ['fixtures/destroy.mjs', server.url, server.token('ada')], { cwd: import.meta.dirname })
    let out = ''
    let err = ''
    child.stdout.on('data', (chunk) => { out += chunk })
    child.stderr.on('data', (chunk) => { err += chunk })
    let timer
    const code = await Promise.race([
      new Promise((resolve) => child.once('exit', resolve)),
      new Promise((resolve) => { timer = setTimeout(() => resolve('still running'), 30000) })
    ])
    clearTimeout(timer)
    if (code === 'still running') child.kill('SIGKILL')
    const [used, left] = out.trim().split('\n').map((line) => JSON.parse(line))
    assert.deepEqual(used, { status: 'connected', lock: 'held', doc: 'connected' }, err)
    assert.deepEqual(left.timers, [])
    assert.equal(code, 0, `the process did not end by itself: ${out} ${err}`)
    // The server saw the client go: its lock is free.
    const bob = client(server, 'bob')
    const lock = await bob.locks.acquire('acme/queries/destroyed#title')
    assert.equal(lock.state, 'held')
  } finally {
    await server.stop()
  }
})

test('a document synced over HTTP while WebSockets are refused converges with a WebSocket client', async () => {
  const server = await Server.start({ secret: secret() })
  try {
    const net = blockable()
    net.block()
    const ada = client(server, 'ada', { WebSocket: net.WebSocket })
    const bob = client(server, 'bob')
    const name = 'acme/queries/degraded'
    const adas = ada.doc(name, { user: { name: 'Ada' } })
    const bobs = bob.doc(name, { user: { name: 'Bob' } })
    await until(() => adas.status === 'degraded', 'ada degraded')
    await bobs.whenSynced
    const aText = adas.ydoc.getText('query')
    const bText = bobs.ydoc.getText('query')
    aText.insert(0, 'SELECT a')
    bText.insert(0, 'SELECT b; ')
    for (let i = 0; i < 20; i++) {
      aText.insert(aText.length, ` ${i}`)
      bText.insert(0, `-- ${i}\n`)
    }
    await until(() => aText.length > 0 && aText.toString() === bText.toString() && aText.toString().includes('SELECT a') && aText.toString().includes('SELECT b'), 'the same text on both')
    // Bob sees Ada's cursor state (her awareness goes with her polls).
    await until(() => [...bobs.awareness.getStates().values()].some((s) => s.user?.name === 'Ada'), 'ada in bob\'s awareness')
    net.unblock()
    await until(() => adas.status === 'connected', 'ada back on the socket', 60000)
    aText.insert(0, '-- back\n')
    await until(() => bText.toString().startsWith('-- back'), 'an edit over the socket again')
  } finally {
    await server.stop()
  }
})
