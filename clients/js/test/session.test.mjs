// Tokens, locks, presence and badges against a real server.

import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { Server, until, secret } from './server.mjs'
import { client, destroyAll } from './clients.mjs'

after(destroyAll)

test('a token that expires is renewed through getToken: the dashboard and a document go on', async () => {
  const server = await Server.start({ secret: secret() })
  try {
    let minted = 0
    // Each token lives 3 s: the server closes the sockets with 4401 when it passes.
    const getToken = () => { minted++; return server.token('ada', { ttl: 3 }) }
    const t = client(server, 'ada', { token: undefined, getToken })
    const statuses = []
    t.on('status', (status) => statuses.push(status))
    const seen = []
    t.subscribe('queries', (event) => seen.push(event.id))
    await t.ready
    const doc = t.doc('acme/queries/renewed')
    await doc.whenSynced
    await until(() => minted >= 3, 'two renewals')
    const id = await server.publish({ type: 'query_started', query_id: 'renewed', started_by: 'backend' })
    await until(() => seen.includes(id), 'an event after the renewals')
    doc.ydoc.getText('query').insert(0, 'SELECT 1')
    const bob = client(server, 'bob')
    const bobs = bob.doc('acme/queries/renewed')
    await until(() => bobs.ydoc.getText('query').toString() === 'SELECT 1', 'the edit made after the renewals')
    assert.ok(!statuses.includes('signed-out'), `statuses: ${statuses}`)
  } finally {
    await server.stop()
  }
})

test('an expired token without getToken signs out; setToken brings it back', async () => {
  const server = await Server.start({ secret: secret() })
  try {
    const t = client(server, 'ada', { token: server.token('ada', { ttl: 2 }) })
    await t.ready
    await until(() => t.status === 'connected', 'connected')
    await until(() => t.status === 'signed-out', 'signed out once the token expired')
    t.setToken(server.token('ada'))
    await until(() => t.status === 'connected', 'connected again with the fresh token')
  } finally {
    await server.stop()
  }
})

test('a client without a token at start is signed out, and starts with the first token it gets', async () => {
  const server = await Server.start({ secret: secret() })
  try {
    let calls = 0
    const getToken = () => { calls++; throw new Error('the app has no session yet') }
    const t = client(server, 'ada', { token: undefined, getToken })
    const seen = []
    t.subscribe('queries', (event) => seen.push(event.id))
    await until(() => t.status === 'signed-out', 'signed out')
    assert.equal(calls, 1)
    t.setToken(server.token('ada'))
    await until(() => t.status === 'connected', 'connected with the token it got')
    const id = await server.publish({ type: 'query_started', query_id: 1, started_by: 'backend' })
    await until(() => seen.includes(id), 'an event')
  } finally {
    await server.stop()
  }
})

test('a lock renews itself, is denied to others with its holder, and is released', async () => {
  // Leases of 1.5 s: held for 5 s only if renewed.
  const server = await Server.start({ secret: secret(), args: ['--lock-ttl-ms', '1500'] })
  try {
    const ada = client(server, 'ada')
    const bob = client(server, 'bob')
    await Promise.all([ada.ready, bob.ready])
    await until(() => ada.status === 'connected' && bob.status === 'connected', 'both connected')
    const resource = 'acme/queries/1#title'
    const mine = await ada.locks.acquire(resource)
    assert.equal(mine.state, 'held')
    await new Promise((resolve) => setTimeout(resolve, 5000))
    const theirs = await bob.locks.acquire(resource)
    assert.equal(theirs.state, 'denied')
    assert.equal(String(theirs.holder.user_id), 'ada')
    assert.equal(mine.state, 'held')
    const available = new Promise((resolve) => theirs.on('available', resolve))
    mine.release()
    await available
    theirs.retry()
    await until(() => theirs.state === 'held', 'bob takes it after the release')
  } finally {
    await server.stop()
  }
})

test('presence: a client at work stays online past the idle window; what it sets reaches others', async () => {
  const server = await Server.start({ secret: secret(), args: ['--presence-idle-ms', '1500', '--presence-debounce-ms', '0'] })
  try {
    const ada = client(server, 'ada', { presence: { name: 'Ada', current_page: '/queries/7' } })
    const bob = client(server, 'bob')
    await Promise.all([ada.ready, bob.ready])
    const adaSeen = () => bob.presence.get('ada')
    await until(() => adaSeen()?.status === 'online' && adaSeen().current_page === '/queries/7', 'ada online on her page')
    assert.equal(adaSeen().name, 'Ada')
    await new Promise((resolve) => setTimeout(resolve, 4000))
    assert.equal(adaSeen().status, 'online', 'heartbeats kept ada online')
    ada.presence.set({ status: 'idle' })
    await until(() => adaSeen()?.status === 'idle', 'ada idle')
    ada.presence.set({ status: 'online', current_page: '/queries/8' })
    await until(() => adaSeen()?.status === 'online' && adaSeen().current_page === '/queries/8', 'ada back on another page')
    ada.destroy()
    await until(() => adaSeen()?.status === 'offline', 'ada offline once her client is destroyed')
  } finally {
    await server.stop()
  }
})

test('chat badges count unread messages and clear on every client of the user', async () => {
  const server = await Server.start({ secret: secret() })
  try {
    const phone = client(server, 'ada')
    const laptop = client(server, 'ada')
    await Promise.all([phone.ready, laptop.ready])
    await until(() => phone.status === 'connected' && laptop.status === 'connected', 'both connected')
    await server.publish({ type: 'new_chat_message', session_id: 999, message: 'hi', sender: 'bob', user_ids: ['ada'] })
    await server.publish({ type: 'new_chat_message', session_id: 999, message: 'there', sender: 'bob', user_ids: ['ada'] })
    await until(() => phone.badges.total === 2 && laptop.badges.unread['999'] === 2, 'two unread on both')
    await laptop.badges.markRead(999)
    await until(() => phone.badges.total === 0, 'read on the phone too')
  } finally {
    await server.stop()
  }
})

test('preferences: a muted event type is not pushed; the others are', async () => {
  const server = await Server.start({ secret: secret() })
  try {
    const t = client(server, 'ada')
    const seen = []
    t.subscribe(['agents', 'queries'], (event) => seen.push(event.type))
    await t.ready
    await until(() => t.status === 'connected', 'connected')
    const realtime = await t.preferences.set({ agent_executed: false })
    assert.equal(realtime.agent_executed, false)
    assert.equal((await t.preferences.load()).agent_executed, false)
    await server.publish({ type: 'agent_executed', agent_id: 1, status: 'done', insights_found: 2, needs_approval: false })
    const id = await server.publish({ type: 'query_started', query_id: 1, started_by: 'backend' })
    await until(() => t.lastId >= id && seen.includes('query_started'), 'the query event')
    assert.deepEqual(seen, ['query_started'])
  } finally {
    await server.stop()
  }
})

test('approvals: a decision is an approval_decided event, with who decided, to everyone on approvals', async () => {
  const server = await Server.start({ secret: secret() })
  try {
    const ada = client(server, 'ada')
    const bob = client(server, 'bob')
    const seen = []
    bob.subscribe('approvals', (event) => seen.push(event))
    await Promise.all([ada.ready, bob.ready])
    await until(() => bob.status === 'connected', 'bob connected')
    await server.publish({ type: 'approval_request', approval_id: 42, title: 'Run the migration' })
    const id = await ada.approvals.decide(42, 'approved', { comment: 'go' })
    await until(() => seen.some((e) => e.id === id), 'the decision')
    const decided = seen.find((e) => e.id === id)
    assert.equal(decided.type, 'approval_decided')
    assert.equal(decided.approval_id, 42)
    assert.equal(decided.decision, 'approved')
    assert.equal(decided.user_id, 'ada')
    assert.equal(decided.comment, 'go')
    await assert.rejects(ada.approvals.decide(42, 'maybe'), /approved.*denied/)
  } finally {
    await server.stop()
  }
})
