// Events in id order, each once: across a server restart, and across the long-poll fallback
// and the return to the socket.

import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { Server, until, secret } from './server.mjs'
import { blockable, client, destroyAll } from './clients.mjs'

after(destroyAll)

const chat = (n) => ({ type: 'new_chat_message', session_id: 1, message: `message ${n}`, sender: 'backend' })
const completed = (n) => ({ type: 'query_completed', query_id: n, result_count: n, execution_time: 0.5 })

test('resumes across a server restart (SIGKILL) without gaps or duplicates', async () => {
  const server = await Server.start({ secret: secret() })
  try {
    const t = client(server, 'ada')
    const seen = []
    t.subscribe(['queries', 'chat_sessions'], (event) => seen.push(event.id))
    const statuses = []
    t.on('status', (status) => statuses.push(status))
    await t.ready
    await until(() => t.status === 'connected', 'the first connection')
    const published = []
    for (let n = 0; n < 10; n++) published.push(await server.publish(n % 2 ? chat(n) : completed(n)))
    await until(() => seen.length === 10, 'the first ten events')
    await server.restart('SIGKILL')
    // Published before the client is back: it gets them when it resumes.
    for (let n = 10; n < 20; n++) published.push(await server.publish(n % 2 ? chat(n) : completed(n)))
    await until(() => seen.length >= 20, 'the events published while it was away')
    for (let n = 20; n < 30; n++) published.push(await server.publish(completed(n)))
    await until(() => seen.length >= 30, 'the events after it came back')
    assert.deepEqual(seen, published)
    assert.ok(statuses.includes('reconnecting'), `statuses: ${statuses}`)
    assert.equal(t.status, 'connected')
  } finally {
    await server.stop()
  }
})

test('long-polls while WebSockets are refused, and goes back to the socket, each event once', async () => {
  const server = await Server.start({ secret: secret() })
  try {
    const net = blockable()
    net.block()
    const t = client(server, 'ada', { WebSocket: net.WebSocket })
    const seen = []
    t.subscribe('queries', (event) => seen.push(event.id))
    const statuses = []
    t.on('status', (status) => statuses.push(status))
    await t.ready
    await until(() => t.status === 'degraded', 'degraded mode')
    const published = []
    for (let n = 0; n < 5; n++) published.push(await server.publish(completed(n)))
    await until(() => seen.length >= 5, 'events over the long-poll')
    net.unblock()
    await until(() => t.status === 'connected', 'the socket again', 60000)
    for (let n = 5; n < 10; n++) published.push(await server.publish(completed(n)))
    await until(() => seen.length >= 10, 'events over the socket')
    // Nothing that came while switching comes twice.
    await new Promise((resolve) => setTimeout(resolve, 300))
    assert.deepEqual(seen, published)
    assert.ok(!statuses.includes('offline'), `the server answered polls all along: ${statuses}`)
  } finally {
    await server.stop()
  }
})

test('a server that is down is "offline" (with the next retry), not "degraded"', async () => {
  const server = await Server.start({ secret: secret() })
  try {
    const t = client(server, 'ada')
    await t.ready
    await until(() => t.status === 'connected', 'the first connection')
    await server.down('SIGKILL')
    const offline = await until(() => t.status === 'offline' && t.statusDetail, 'offline')
    assert.ok(offline.nextRetryAt > Date.now() - 1000, JSON.stringify(offline))
    await server.up()
    await until(() => t.status === 'connected' || t.status === 'degraded', 'back', 60000)
  } finally {
    await server.stop()
  }
})

test('history first, then live: notifications and activity, each once, with read state', async () => {
  const server = await Server.start({ secret: secret() })
  try {
    const early = [await server.publish(completed(1)), await server.publish({ type: 'query_executed', user_id: 'ada', query_id: 1 })]
    const t = client(server, 'ada', { historyLimit: 10 })
    await t.ready
    assert.deepEqual(t.notifications.items.map((e) => e.id), [early[0]])
    assert.deepEqual(t.activity.items.map((e) => e.id), [early[1]])
    assert.equal(t.notifications.unread, 1)
    const live = await server.publish({ type: 'system_alert', message: 'disk', severity: 'critical' })
    await until(() => t.notifications.items.length === 2, 'the live notification')
    await new Promise((resolve) => setTimeout(resolve, 200))
    assert.deepEqual(t.notifications.items.map((e) => e.id), [early[0], live])
    t.notifications.markRead()
    assert.equal(t.notifications.unread, 0)
  } finally {
    await server.stop()
  }
})
