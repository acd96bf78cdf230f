// The browser dashboard of Tandem: who's online, the activity feed, notifications, chat badges,
// the queries with who is in each, and the collaborative query editor (CodeMirror bound to the
// query document's Y.Text, with live cursors, the "is editing" banner, a title lock and the
// live result panel).
import * as Y from 'yjs'
import * as awarenessProtocol from 'y-protocols/awareness'
import * as decoding from 'lib0/decoding'
import { WebsocketProvider } from 'y-websocket'
import { IndexeddbPersistence } from 'y-indexeddb'
import { EditorView, basicSetup } from 'codemirror'
import { Compartment, EditorState } from '@codemirror/state'
import { sql } from '@codemirror/lang-sql'
import { yCollab } from 'y-codemirror.next'

const params = new URLSearchParams(location.search)
const wsBase = location.origin.replace(/^http/, 'ws')
const IDLE_AFTER_MS = 5 * 60 * 1000
// A user at work tells the server at most this often (and more often when the server counts
// users idle sooner than three times this).
const ACTIVE_HEARTBEAT_MS = 60 * 1000
// A WebSocket that failed this many times in a row gives way to HTTP polling until it is back.
const DEGRADED_AFTER_FAILURES = 3
// Reconnect backoff: exponential from 100 ms (as y-websocket's), capped, each delay jittered.
const BACKOFF_MAX_MS = 30000
// Polling a document: every 2 s while anything changes, doubling to 30 s while nothing does.
const POLL_MIN_MS = 2000
const POLL_MAX_MS = 30000
// While the tab is hidden, cursor and presence updates go out at most this often.
const HIDDEN_FLUSH_MS = 10000
// A long-lived tab keeps this many entries of each list (notifications, activity, a chat).
const MAX_LISTED = 200
// Toasts shown at once; more are counted in one "+N more".
const MAX_TOASTS = 4
// The title lock is renewed at least this often while its field has the focus.
const LOCK_RENEW_MS = 10000
// The y-websocket message type of the auth protocol, and its kinds.
const AUTH_MESSAGE = 2
const READ_ONLY_NOTE = 'Read only: you may not edit this query'
const AUTH_DENIED = 0
const AUTH_GRANTED = 1
// The dashboard waits this long at most for its history before it goes live without it.
const SNAPSHOT_TIMEOUT_MS = 5000
// Long-poll rounds start at least this far apart, whatever the server answers.
const POLL_GAP_MS = 500
const COLORS = ['#b91c1c', '#1d4ed8', '#047857', '#7c3aed', '#b45309', '#0e7490', '#be185d', '#4d7c0f']

const $ = (selector) => document.querySelector(selector)
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props)
  for (const child of children) node.append(child)
  return node
}
/** `value` when it is one CSS colour (what users send is put into styles), else `fallback`. */
const cssColor = (value, fallback) => typeof value === 'string' && value.length < 64 && CSS.supports('color', value) ? value : fallback
const colorOf = (id) => COLORS[[...String(id)].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7) % COLORS.length]
const initials = (name) => String(name || '?').split(/\s+/).map((w) => w[0]).join('').slice(0, 2).toUpperCase()
const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : '')
/** `decodeURIComponent`, or `null` for text that is no valid encoding. */
const safeDecode = (text) => { try { return decodeURIComponent(text) } catch { return null } }

// --- Signing in ----------------------------------------------------------------------------

/** The claims of a JWT, unverified (the server verifies; the page only reads who it is). */
function claimsOf (token) {
  try {
    return JSON.parse(atob(token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')))
  } catch {
    return {}
  }
}

async function devToken (name) {
  const response = await fetch('/api/v1/dev/token', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ name })
  })
  if (!response.ok) throw new Error(`could not sign in: ${response.status}`)
  const minted = await response.json()
  return { token: minted.token, user: minted.user, name: minted.name, workspace: minted.workspace }
}

function askName () {
  return new Promise((resolve) => {
    const input = el('input', { type: 'text', id: 'name', required: true, autocomplete: 'nickname' })
    const form = el('form', { className: 'card signin' },
      el('h2', { textContent: 'Who are you?' }),
      el('label', { htmlFor: 'name', textContent: 'Your name' }), input, el('p'),
      el('button', { className: 'primary', type: 'submit', textContent: 'Sign in' }))
    form.addEventListener('submit', (e) => { e.preventDefault(); resolve(input.value.trim()) })
    $('#app').replaceChildren(el('section', { className: 'card' }, form))
    input.focus()
  })
}

const sessionOf = (token) => {
  const claims = claimsOf(token)
  return { token, user: String(claims.sub), name: claims.name || String(claims.sub), workspace: claims.workspace }
}

/** Asks the embedding app for a token (`tandem:ready`); it answers with `tandem:token`. */
function askForToken () {
  try {
    window.parent.postMessage({ type: 'tandem:ready' }, params.get('parent_origin') || '*')
  } catch (err) {
    console.error('tandem: ?parent_origin= is no origin', err)
  }
}

/** How long a framed page waits for its app's token before signing in by itself. */
const EMBED_WAIT_MS = 5000

/**
 * A page embedded in an app (an iframe; the server's `--frame-ancestors` says which apps may)
 * gets its token from that app: it posts `{type: 'tandem:ready'}` to its parent every second
 * (to `?parent_origin=` when given, and then takes messages from that origin only) and takes
 * `{type: 'tandem:token', token}` back, from the parent only. Resolves `null` when no token
 * came within 5 s (an app that does not hand one yet, or a plain frame); every token after the
 * first, or after that, goes to `onLater` (a refresh before expiry, or a late first token).
 */
function embeddedToken (onLater) {
  const parentOrigin = params.get('parent_origin')
  return new Promise((resolve) => {
    let first = true
    addEventListener('message', (event) => {
      if (event.source !== window.parent || (parentOrigin && event.origin !== parentOrigin)) return
      if (event.data?.type !== 'tandem:token' || typeof event.data.token !== 'string') return
      if (first) { first = false; resolve(event.data.token) } else onLater(event.data.token)
    })
    askForToken()
    const asking = setInterval(() => { if (first) askForToken(); else clearInterval(asking) }, 1000)
    setTimeout(() => { if (first) { first = false; clearInterval(asking); resolve(null) } }, EMBED_WAIT_MS)
  })
}

async function signIn () {
  const token = params.get('token')
  if (token) return sessionOf(token)
  if (window.parent !== window) {
    let session = null
    // A token that comes after the page gave up waiting still signs it in.
    const handed = await embeddedToken((fresh) => {
      if (session) tokenRefreshed(session, fresh)
      else if (!started) start(session = sessionOf(fresh))
    })
    if (handed) {
      session = sessionOf(handed)
      return session
    }
  }
  const wanted = params.get('name')
  const saved = JSON.parse(sessionStorage.getItem('tandem.session') || 'null')
  if (saved && (!wanted || saved.name === wanted)) return saved
  let session
  try {
    session = await devToken(wanted || await askName())
  } catch (err) {
    // A token from the app came meanwhile: the page is signed in already.
    if (started) return null
    // A server that checks tokens mints none: the page needs one from the URL or its app.
    $('#connection').hidden = true
    $('#app').replaceChildren(el('section', { className: 'card', role: 'alert' },
      el('h2', { textContent: 'Sign-in needed' }),
      el('p', { textContent: 'This server checks tokens: open the page with ?token=<your token>, or embed it in your app, which hands it a token.' }),
      el('p', { className: 'sub', textContent: String(err.message) })))
    return null
  }
  sessionStorage.setItem('tandem.session', JSON.stringify(session))
  return session
}

// --- An expired session ------------------------------------------------------------------

/** What goes on with a fresh token: the connections, which use it from their next attempt. */
const tokenListeners = new Set()

/** `session` has a fresh token: whatever waits for one goes on at once. */
function tokenRefreshed (session, fresh) {
  session.token = fresh
  showConnection('session', 'connected')
  for (const listener of tokenListeners) listener(fresh)
}

/**
 * The server refused the session's token as expired (development tokens never are: they only
 * name the user). An embedded page asks its app for one (which answers as to the first); one
 * opened with `?token=` can only say so. Meanwhile the connections keep trying, with the token
 * of the time.
 */
function sessionExpired () {
  showConnection('session', 'expired')
  if (window.parent !== window) askForToken()
}

// --- The connection indicator --------------------------------------------------------------

const LABELS = {
  connecting: 'Connecting…',
  connected: 'Connected',
  disconnected: 'Disconnected: reconnecting…',
  degraded: 'Degraded: polling over HTTP',
  expired: 'Signed out: the session expired'
}
const SEVERITY = ['connected', 'connecting', 'disconnected', 'degraded', 'expired']
const connectionParts = new Map()
/** The dashboard and the open document each report their connection; the page shows the worst. */
function showConnection (part, state) {
  connectionParts.set(part, state)
  const worst = [...connectionParts.values()].reduce((a, b) => SEVERITY.indexOf(b) > SEVERITY.indexOf(a) ? b : a)
  const node = $('#connection')
  node.className = `connection ${worst}`
  node.querySelector('.label').textContent = LABELS[worst]
  node.dataset.state = worst
}

/**
 * The reconnect delay after `failures` failures in a row: 100 ms · 2^failures, capped at 30 s,
 * then a random 50–100% of that, so clients cut off together do not come back together.
 */
const backoff = (failures) => Math.min(BACKOFF_MAX_MS, 100 * 2 ** Math.min(failures, 9)) * (0.5 + Math.random() / 2)

// --- The dashboard connection: WebSocket, with a long-polling fallback ---------------------

class Live {
  constructor (session) {
    this.session = session
    this.handlers = new Set()
    this.lastId = 0
    // Ids of events the page already shows from a snapshot: not handed on again.
    this.known = new Set()
    this.failures = 0
    this.presence = { status: 'online', current_page: location.pathname, workspace: location.pathname.startsWith('/queries/') ? 'queries' : 'dashboard' }
  }

  /** Goes live after the events up to `lastId`, which the page shows already (`known`). */
  resumeAfter (lastId, known) {
    this.lastId = lastId
    // From there even when it is 0 (a workspace without events yet).
    this.resuming = true
    this.known = new Set(known)
    this.connect()
  }

  on (handler) { this.handlers.add(handler) }

  /** Hands `event` to every handler; one that fails does not keep it from the others. */
  emit (event) {
    for (const handler of this.handlers) {
      try { handler(event) } catch (err) { console.error('tandem: an event handler failed', event.type, err) }
    }
  }

  connect () {
    showConnection('dashboard', this.failures >= DEGRADED_AFTER_FAILURES ? 'degraded' : (this.everConnected ? 'disconnected' : 'connecting'))
    const token = this.session.token
    const ws = new WebSocket(`${wsBase}/ws?token=${encodeURIComponent(token)}`)
    this.ws = ws
    ws.onopen = () => {
      this.failures = 0
      this.everConnected = true
      this.stopPolling()
      showConnection('dashboard', 'connected')
      showConnection('session', 'connected')
      this.subscribe()
      this.send({ action: 'presence', ...this.presence })
    }
    ws.onmessage = (message) => {
      let frame
      try { frame = JSON.parse(message.data) } catch { return }
      this.deliver(frame.type === 'batch' ? frame.events : [frame])
      if (frame.type === 'error' && frame.code === 'storage_unavailable') {
        // The server could not replay what we missed (and the channels are live without it):
        // the page reloads what it shows instead.
        this.emit({ type: 'resync_required' })
      }
    }
    ws.onclose = (event) => {
      if (this.ws !== ws) return
      // Expired: unless the page has a fresher token already, with which it just reconnects.
      if (event.code === 4401 && token === this.session.token) sessionExpired()
      this.failures++
      const degraded = this.failures >= DEGRADED_AFTER_FAILURES
      showConnection('dashboard', degraded ? 'degraded' : 'disconnected')
      if (degraded && !this.polling) this.poll()
      this.retry = setTimeout(() => this.connect(), backoff(this.failures))
    }
  }

  /** Every channel the page shows, from after the last event it has (all new ones at first). */
  subscribe () {
    this.send({ action: 'subscribe', channels: ['presence', 'queries', 'agents', 'approvals', 'chat_sessions', 'notifications', 'activity', 'system', 'workflows'], since: this.resuming || this.lastId ? this.lastId : undefined })
  }

  /**
   * Hands on frames from the socket or a poll, each event once: events come in id order, so one
   * at or below the last id is one the page has (the socket and a poll can overlap when the
   * page switches between them), and so is one a snapshot showed.
   */
  deliver (events) {
    for (const event of events) {
      if (typeof event.id === 'number') {
        if (event.id <= this.lastId) continue
        this.lastId = event.id
        if (this.known.has(event.id)) continue
      } else if (event.type === 'resync_required') {
        // What the page missed is gone from the log: it reloads what it shows (its handlers
        // do), and goes on from the latest event.
        if (typeof event.latest === 'number') this.lastId = event.latest
      }
      this.emit(event)
    }
  }

  send (frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame))
  }

  /** The network (or a fresh token) is back: try now rather than at the end of the backoff. */
  reconnectNow () {
    // Not live yet (the page is still loading), or connecting or connected already.
    if (!this.ws || this.ws.readyState <= WebSocket.OPEN) return
    clearTimeout(this.retry)
    this.connect()
  }

  setPresence (changes) {
    Object.assign(this.presence, changes)
    this.send({ action: 'presence', ...changes })
    // A poller's presence goes with its next round; a change of status goes at once.
    if (this.polling && changes.status) this.postPresence().catch(() => {})
  }

  postPresence () {
    return fetch('/api/v1/presence', { method: 'POST', headers: { ...this.auth(), 'content-type': 'application/json' }, body: JSON.stringify(this.presence) })
  }

  auth () { return { authorization: `Bearer ${this.session.token}` } }

  /**
   * Long-polls while the WebSocket keeps failing; the socket's return ends it (and the request
   * it has out). One loop at a time: a newer one ends an older one.
   */
  async poll () {
    this.stopPolling()
    const run = this.pollRun
    const abort = new AbortController()
    this.pollAbort = abort
    this.polling = true
    const current = () => run === this.pollRun
    const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
    let lastPresence = 0
    let errors = 0
    while (current()) {
      const began = Date.now()
      try {
        if (Date.now() - lastPresence > 30000) {
          lastPresence = Date.now()
          await this.postPresence()
        }
        // Without a last id, from now on.
        const since = this.resuming || this.lastId ? `&since=${this.lastId}` : ''
        const response = await fetch(`/api/v1/events?timeout=25${since}`, { headers: this.auth(), signal: abort.signal })
        if (response.status === 401) sessionExpired()
        if (!response.ok) throw new Error(String(response.status))
        const page = await response.json()
        if (!current()) return
        errors = 0
        // From here on, from where this answer ends (even at 0, in a workspace without events).
        this.resuming = true
        this.deliver(page.events)
        if (page.resync_required) this.deliver([{ type: 'resync_required', oldest: page.oldest, latest: page.last_id }])
        this.lastId = Math.max(this.lastId, page.last_id)
        // Never a tight loop, whatever the answers.
        await pause(Math.max(0, POLL_GAP_MS - (Date.now() - began)))
      } catch {
        if (!current()) return
        errors++
        await pause(Math.min(POLL_MAX_MS, POLL_MIN_MS * 2 ** errors))
      }
    }
  }

  stopPolling () {
    this.pollRun = (this.pollRun ?? 0) + 1
    this.pollAbort?.abort()
    this.polling = false
  }
}

// --- Idle detection and battery care -------------------------------------------------------

function watchActivity (live) {
  let last = Date.now()
  let told = Date.now()
  let idle = false
  // The server says after how long it counts someone idle: a third of it, at most a minute.
  let heartbeat = ACTIVE_HEARTBEAT_MS
  live.on((event) => {
    if (event.type === 'subscribed' && event.idle_after_ms > 0) heartbeat = Math.min(ACTIVE_HEARTBEAT_MS, event.idle_after_ms / 3)
  })
  // The server counts a user idle after a while without a presence frame: someone who works
  // says so now and then (and at once when they come back from idle).
  const active = () => {
    last = Date.now()
    if (idle || last - told > heartbeat) {
      idle = false
      told = last
      live.setPresence({ status: 'online' })
    }
  }
  for (const type of ['keydown', 'pointerdown', 'pointermove', 'wheel']) addEventListener(type, active, { passive: true })
  setInterval(() => {
    if (!idle && Date.now() - last > IDLE_AFTER_MS) { idle = true; live.setPresence({ status: 'idle' }) }
  }, 10000)
}

// --- The dashboard page --------------------------------------------------------------------

function dashboard (session, live) {
  const users = new Map()
  const usersList = el('ul', { className: 'plain', id: 'online-users' })
  const feed = el('ul', { className: 'plain feed', id: 'activity' })
  const unread = el('ul', { className: 'plain', id: 'unread' })
  const badges = el('ul', { className: 'plain', id: 'chat-badges' })
  const chat = el('div', { id: 'chat-session', hidden: true })
  const messages = new Map()
  let unreadChats = {}
  // The session open in the panel: it shows new messages as they come, and stays read.
  let openChat = null
  const showChat = () => {
    if (openChat === null) return
    chat.hidden = false
    chat.replaceChildren(el('h3', { textContent: `Chat ${openChat}` }),
      el('ul', { className: 'plain feed' }, ...(messages.get(openChat) || []).map((m) => el('li', { textContent: m.text }))))
    if (unreadChats[openChat] && !document.hidden) live.send({ action: 'mark_read', session_id: openChat })
  }
  document.addEventListener('visibilitychange', showChat)
  // Every session with unread messages or seen here, its badge showing what is unread.
  const renderChats = () => {
    const sessions = [...new Set([...Object.keys(unreadChats), ...messages.keys()])].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))
    badges.replaceChildren(...sessions.map((sessionId) => {
      const count = unreadChats[sessionId] || 0
      const button = el('button', { className: 'user', type: 'button' }, `Chat ${sessionId} `,
        ...(count ? [el('span', { className: 'badge', textContent: String(count), ariaLabel: `${count} unread` })] : []))
      // Viewing the session reads it: its badge clears here and in the user's other tabs.
      button.addEventListener('click', () => {
        openChat = sessionId
        showChat()
      })
      return el('li', {}, button)
    }))
  }
  const queries = el('ul', { className: 'plain', id: 'queries' })
  const details = el('p', { className: 'sub', id: 'user-details' })
  const editing = new Map()
  const editingSeen = new Set()

  const avatar = (u, name) => {
    const node = el('span', { className: 'avatar' }, initials(name), el('span', { className: `status ${u.status}`, title: u.status }))
    node.style.backgroundColor = cssColor(u.color, colorOf(u.user_id))
    return node
  }
  const renderUsers = () => {
    const sorted = [...users.values()].sort((a, b) => String(a.name || a.user_id).localeCompare(String(b.name || b.user_id)))
    usersList.replaceChildren(...sorted.map((u) => {
      const name = u.name || String(u.user_id)
      const button = el('button', { className: 'user', type: 'button' },
        avatar(u, name),
        el('span', {}, el('strong', { textContent: name }), el('br'),
          el('span', { className: 'sub', textContent: u.status === 'offline' ? `last seen ${time(u.last_seen)}` : `${u.status} · ${u.current_page || ''}` })))
      button.setAttribute('aria-label', `${name}, ${u.status}`)
      button.addEventListener('click', () => {
        details.textContent = `${name}: ${u.status}, ${u.current_page || 'no page'}, workspace ${u.workspace || '–'}, last active ${time(u.last_active) || '–'}`
      })
      return el('li', {}, button)
    }))
  }
  // The first queries, and any other someone is in: who is in a query is known from the
  // `editing` events of its document and from the pages in everyone's presence (which a page
  // opened later learns from GET /api/v1/presence).
  const renderQueries = () => {
    const inQuery = new Map()
    const add = (id, user) => {
      const who = inQuery.get(id) || new Map()
      who.set(String(user.user_id), who.get(String(user.user_id))?.name ? who.get(String(user.user_id)) : user)
      inQuery.set(id, who)
    }
    for (const [id, list] of editing) for (const user of list) add(id, user)
    for (const user of users.values()) {
      const page = user.status !== 'offline' && /^\/queries\/([^/]+)$/.exec(user.current_page || '')
      // Pages are whatever clients say; one that is no valid path names no query.
      const id = page && safeDecode(page[1])
      if (id) add(id, user)
    }
    const ids = [...new Set(['1', '2', '3', ...inQuery.keys()])].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))
    queries.replaceChildren(...ids.map((id) => {
      const who = [...(inQuery.get(id) || new Map()).values()]
      return el('li', {}, el('a', { href: `/queries/${encodeURIComponent(id)}`, textContent: `Query ${id}` }),
        el('span', { className: 'sub', textContent: who.length ? ` · ${who.map((u) => u.name || u.user_id).join(', ')}` : '' }))
    }))
  }
  // A notification in the list, newest on top, each event once (history and live may overlap);
  // a chat message also joins its session.
  const notified = new Set()
  let newestNotified = 0
  const notify = (event) => {
    if (notified.has(event.id)) return
    notified.add(event.id)
    if (typeof event.id === 'number') newestNotified = Math.max(newestNotified, event.id)
    if (event.type === 'new_chat_message') {
      // In id order: history and live messages may come in either order.
      const sessionId = String(event.session_id)
      const list = messages.get(sessionId) || []
      list.push({ id: event.id, text: `${time(event.timestamp)} · ${event.sender ?? ''} ${event.message ?? ''}` })
      list.sort((a, b) => a.id - b.id)
      messages.set(sessionId, list.slice(-MAX_LISTED))
      renderChats()
      if (sessionId === openChat) showChat()
    }
    const item = el('li', { textContent: `${time(event.timestamp)} · ${describe(event)}` })
    const older = [...unread.children].find((node) => Number(node.dataset.id) < event.id)
    item.dataset.id = event.id
    unread.insertBefore(item, older ?? null)
    // Newest on top: the oldest go at the bottom.
    while (unread.children.length > MAX_LISTED) {
      notified.delete(Number(unread.lastElementChild.dataset.id))
      unread.lastElementChild.remove()
    }
    renderUnread()
  }
  // Unread: what came after the last "Mark all read", remembered in this browser per user.
  const readKey = `tandem.read.${session.workspace}.${session.user}`
  let lastRead = Number(localStorage.getItem(readKey) || 0)
  const unreadCount = el('span', { className: 'badge', id: 'unread-count' })
  const markRead = el('button', { type: 'button', className: 'link', textContent: 'Mark all read' })
  const renderUnread = () => {
    let count = 0
    for (const node of unread.children) {
      const fresh = Number(node.dataset.id) > lastRead
      node.classList.toggle('unread', fresh)
      count += fresh
    }
    unreadCount.textContent = String(count)
    unreadCount.hidden = count === 0
    unreadCount.ariaLabel = `${count} unread`
    markRead.disabled = count === 0
  }
  markRead.addEventListener('click', () => {
    lastRead = Math.max(lastRead, newestNotified)
    localStorage.setItem(readKey, String(lastRead))
    renderUnread()
  })
  const addActivity = (event) => {
    if (feed.querySelector(`[data-id="${Number(event.id)}"]`)) return
    const what = { query_executed: 'ran query', template_created: 'created template', agent_triggered: 'triggered agent', file_uploaded: 'uploaded' }[event.type]
    const object = event.query_id ?? event.template_id ?? event.agent_id ?? event.file_name
    const item = el('li', { textContent: `${time(event.timestamp)} · ${event.user_id} ${what} ${object}` })
    item.dataset.id = event.id
    feed.append(item)
    // Oldest first: the oldest go at the top.
    while (feed.children.length > MAX_LISTED) feed.firstElementChild.remove()
    feed.scrollTop = feed.scrollHeight
  }

  $('#app').className = ''
  $('#app').replaceChildren(
    el('section', { className: 'card' }, el('h2', { textContent: 'Online users' }), usersList, details),
    el('section', { className: 'card' }, el('h2', { textContent: 'Queries' }), queries),
    el('section', { className: 'card' }, el('h2', { textContent: 'Live activity' }), feed),
    el('section', { className: 'card' }, el('h2', {}, 'Notifications ', unreadCount, ' ', markRead), unread),
    el('section', { className: 'card' }, el('h2', { textContent: 'Chat' }), badges, chat))
  renderQueries()
  renderUnread()

  // Who is online and in which query, now. On a resync the snapshot replaces what the page had
  // (it missed changes); at load a live event that came first is newer than it.
  const loadState = (replace) => {
    fetch('/api/v1/presence?include_offline=true', { headers: live.auth() }).then((r) => r.json()).then((body) => {
      if (replace) users.clear()
      for (const u of body.users || []) if (!users.has(String(u.user_id))) users.set(String(u.user_id), u)
      renderUsers()
      renderQueries()
    }).catch(() => {})
    fetch('/api/v1/editing', { headers: live.auth() }).then((r) => r.json()).then((body) => {
      if (replace) { editing.clear(); editingSeen.clear() }
      for (const entry of body.documents || []) {
        if (entry.query_id !== undefined && entry.users.length && !editingSeen.has(String(entry.query_id))) editing.set(String(entry.query_id), entry.users)
      }
      renderQueries()
    }).catch(() => {})
  }
  loadState(false)
  // The latest activity and notifications, oldest first, as if they had just come (no toasts
  // for them); then the page goes live from where they end, so what came in between is
  // replayed and nothing comes twice. Without them it goes live anyway.
  const history = (path) => fetch(path, { headers: live.auth(), signal: AbortSignal.timeout(SNAPSHOT_TIMEOUT_MS) })
    .then((r) => r.ok ? r.json() : Promise.reject(new Error(`${path}: ${r.status}`)))
  /** Shows the latest activity and notifications; resolves to both pages (`undefined` if failed). */
  const loadHistory = () => Promise.allSettled([history('/api/v1/activity?limit=30'), history('/api/v1/notifications?limit=30')]).then(([activity, notifications]) => {
    for (const event of activity.value?.events ?? []) addActivity(event)
    for (const event of notifications.value?.events ?? []) notify(event)
    return [activity.value, notifications.value]
  })
  loadHistory().then((pages) => {
    if (pages.every((page) => typeof page?.last_id === 'number')) {
      live.resumeAfter(Math.min(...pages.map((page) => page.last_id)), pages.flatMap((page) => page.events.map((event) => event.id)))
    } else {
      live.connect()
    }
  })

  live.on((event) => {
    switch (event.type) {
      case 'presence_update':
        users.set(String(event.user_id), { ...users.get(String(event.user_id)), ...event })
        renderUsers()
        renderQueries()
        break
      case 'editing':
        if (event.query_id !== undefined) {
          editingSeen.add(String(event.query_id))
          if (event.users.length) editing.set(String(event.query_id), event.users)
          else editing.delete(String(event.query_id))
          renderQueries()
        }
        break
      case 'chat_badges':
        unreadChats = event.unread
        renderChats()
        // A message to the open session is read as it comes, while the tab is seen.
        if (unreadChats[openChat]) showChat()
        break
      case 'resync_required':
        // Changes were missed for good: what the page shows comes again from the server.
        loadState(true)
        loadHistory()
        break
      case 'query_executed': case 'template_created': case 'agent_triggered': case 'file_uploaded':
        addActivity(event)
        break
      default:
        if (event.id !== undefined && !['lock_acquired', 'lock_released'].includes(event.type)) notify(event)
    }
  })
}

function describe (event) {
  switch (event.type) {
    case 'query_started': return `Query ${event.query_id} started`
    case 'query_completed': return `Query ${event.query_id} completed: ${event.result_count} rows in ${event.execution_time} s`
    case 'query_failed': return `Query ${event.query_id} failed: ${event.error}`
    case 'agent_executed': return `Agent ${event.agent_id} ${event.status}: ${event.insights_found} insights`
    case 'approval_request': return `Approval requested: ${event.title}`
    case 'new_chat_message': return `Chat ${event.session_id}: ${event.message}`
    case 'new_chat_session': return `New chat session ${event.session_id}`
    case 'system_alert': return `${event.severity}: ${event.message}`
    case 'workflow_triggered': return `Workflow ${event.workflow_id} triggered`
    default: return event.type
  }
}

/** A toast for 6 s; past a few at once, they are counted in one "+N more" instead. */
function toast (text) {
  const toasts = $('#toasts')
  const shown = toasts.querySelectorAll('.toast:not(.more)').length
  if (shown >= MAX_TOASTS) {
    let more = toasts.querySelector('.more')
    if (!more) {
      more = el('div', { className: 'toast more' })
      more.dataset.count = '0'
      toasts.append(more)
    }
    more.dataset.count = String(Number(more.dataset.count) + 1)
    more.textContent = `+${more.dataset.count} more notifications`
    clearTimeout(more.timer)
    more.timer = setTimeout(() => more.remove(), 6000)
    return
  }
  const node = el('div', { className: 'toast', textContent: text })
  toasts.insertBefore(node, toasts.querySelector('.more'))
  setTimeout(() => node.remove(), 6000)
}

// --- Document sync over HTTP, for degraded mode ---------------------------------------------

const toBase64 = (bytes) => {
  let binary = ''
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000))
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}
const fromBase64 = (text) => Uint8Array.from(atob(text.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0))

/** The client ids an encoded awareness update holds. */
function awarenessClients (update) {
  const decoder = decoding.createDecoder(update)
  const clients = []
  for (let n = decoding.readVarUint(decoder); n > 0; n--) {
    clients.push(decoding.readVarUint(decoder))
    decoding.readVarUint(decoder) // clock
    decoding.readVarString(decoder) // state
  }
  return clients
}

/** Whether state vector `a` holds anything `b` lacks. */
function ahead (a, b) {
  const theirs = Y.decodeStateVector(b)
  for (const [client, clock] of Y.decodeStateVector(a)) if (clock > (theirs.get(client) ?? 0)) return true
  return false
}

/** How long one sync request may take before it is given up (and retried). */
const POLL_REQUEST_TIMEOUT_MS = 20000
// Others drop a cursor not renewed for 30 s: a renewal goes out within this long.
const RENEWAL_DELAY_MS = 10000

/**
 * Keeps a document in sync through `POST /api/v1/docs/{doc}/sync` while WebSockets fail: each
 * round posts the state vector, the edits the server has not confirmed and our cursor, and
 * applies what the server answers (its edits and everyone's cursors). It polls every 2 s while
 * anything changes and backs off to 30 s while nothing does; a local edit or cursor move polls
 * at once, and the renewal of our cursor (every 15 s) goes out within 10 s.
 */
class DocPoller {
  constructor (docName, doc, awareness, session) {
    this.url = `/api/v1/docs/${docName.split('/').map(encodeURIComponent).join('/')}/sync`
    this.doc = doc
    this.awareness = awareness
    this.session = session
    this.running = false
    this.readOnly = false
    this.serverStateVector = null
    this.onUpdate = (update, origin) => {
      if (origin === this || this.readOnly) return
      this.pending = this.pending ? Y.mergeUpdates([this.pending, update]) : update
      this.soon()
    }
    // A changed cursor goes soon; a renewal (same state, newer clock) only needs to go in time.
    this.onAwarenessChange = (_, origin) => { if (origin === 'local') this.soon() }
    this.onAwarenessUpdate = (_, origin) => {
      if (origin === 'local') this.schedule(Math.min(this.interval, RENEWAL_DELAY_MS))
    }
  }

  start () {
    if (this.running) return
    this.running = true
    // The first round learns the server's state vector; what it lacks goes in the second.
    this.serverStateVector = null
    this.pending = null
    // Set when the server refused what we hold; cleared by the next episode (a WebSocket's
    // full sync in between may have settled it).
    this.refused = false
    this.interval = POLL_MIN_MS
    this.doc.on('update', this.onUpdate)
    this.awareness.on('change', this.onAwarenessChange)
    this.awareness.on('update', this.onAwarenessUpdate)
    this.schedule(0)
  }

  stop () {
    this.running = false
    clearTimeout(this.timer)
    this.timer = null
    this.due = Infinity
    this.doc.off('update', this.onUpdate)
    this.awareness.off('change', this.onAwarenessChange)
    this.awareness.off('update', this.onAwarenessUpdate)
  }

  /** Polls within a moment (a hidden tab waits longer, to coalesce). */
  soon () {
    this.interval = POLL_MIN_MS
    this.schedule(document.hidden ? HIDDEN_FLUSH_MS : 250)
  }

  schedule (delay) {
    if (!this.running) return
    const at = Date.now() + delay
    if (this.timer && this.due <= at) return
    clearTimeout(this.timer)
    this.due = at
    this.timer = setTimeout(() => { this.timer = null; this.due = Infinity; this.round() }, delay)
  }

  async round () {
    if (!this.running) return
    if (this.inFlight) {
      // Asked for while a request is out: it goes right after.
      this.again = true
      return
    }
    this.inFlight = true
    this.again = false
    const sending = this.pending
    this.pending = null
    const body = { client_id: this.doc.clientID, state_vector: toBase64(Y.encodeStateVector(this.doc)) }
    if (sending) body.update = toBase64(sending)
    if (this.awareness.getLocalState() !== null) {
      body.awareness = toBase64(awarenessProtocol.encodeAwarenessUpdate(this.awareness, [this.doc.clientID]))
    }
    let next
    try {
      const response = await fetch(this.url, {
        method: 'POST',
        headers: { authorization: `Bearer ${this.session.token}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(POLL_REQUEST_TIMEOUT_MS)
      })
      if (!response.ok) {
        const refusal = await response.json().catch(() => ({}))
        // A refused update is not retried: a read-only token never writes, and an update the
        // server cannot take (too large, say) would be refused again. It stays in this
        // browser, and goes with the full sync of the next WebSocket.
        if (sending && [403, 400, 413].includes(response.status)) {
          if (refusal.error === 'read_only') {
            this.readOnly = true
            this.onReadOnly?.()
          }
          this.refused = true
          console.warn(`tandem: the server refused an update (${refusal.error}); it stays in this browser`)
          next = this.interval
          return
        }
        if (response.status === 401) sessionExpired()
        throw new Error(`sync answered ${response.status}`)
      }
      const answer = await response.json()
      if (!this.running) return
      if (answer.access === 'read' && !this.readOnly) {
        this.readOnly = true
        this.onReadOnly?.()
      }
      let changed = false
      const mark = (_, origin) => { if (origin === this) changed = true }
      this.doc.on('update', mark)
      try {
        Y.applyUpdate(this.doc, fromBase64(answer.update), this)
      } finally {
        this.doc.off('update', mark)
      }
      this.applyAwareness(answer.awareness ? fromBase64(answer.awareness) : null)
      const theirs = fromBase64(answer.state_vector)
      // Whatever we hold that the server lacks: on the first round everything (deletions made
      // while the socket was down included), later whatever its state vector says it lacks.
      if (!this.readOnly && !this.refused && (!this.serverStateVector || ahead(Y.encodeStateVector(this.doc), theirs))) {
        const lacking = Y.encodeStateAsUpdate(this.doc, theirs)
        this.pending = this.pending ? Y.mergeUpdates([lacking, this.pending]) : lacking
        next = 0
      }
      this.serverStateVector = theirs
      this.interval = changed || sending ? POLL_MIN_MS : Math.min(this.interval * 2, POLL_MAX_MS)
    } catch (err) {
      // Unconfirmed edits are sent again, after the backoff (updates are idempotent).
      this.pending = sending && this.pending ? Y.mergeUpdates([sending, this.pending]) : (sending || this.pending)
      this.interval = Math.min(this.interval * 2, POLL_MAX_MS)
      next = this.interval
    } finally {
      this.inFlight = false
      if (this.again) next = Math.min(next ?? 250, 250)
      this.schedule(next ?? (this.pending ? 250 : this.interval))
    }
  }

  /** Takes the room's awareness states; the clients it no longer holds have gone. */
  applyAwareness (update) {
    const present = new Set(update ? awarenessClients(update) : [])
    // States the provider dropped when its socket closed keep their clock, and the same clock
    // again would be ignored: forget it, so they come back at once.
    for (const client of present) {
      if (client !== this.doc.clientID && !this.awareness.states.has(client)) this.awareness.meta.delete(client)
    }
    // The answer also holds the removal of our own state, if the server removed it (when our
    // socket closed): y-protocols then raises our clock, and the next round announces it again.
    const clock = this.awareness.meta.get(this.doc.clientID)?.clock
    if (update) awarenessProtocol.applyAwarenessUpdate(this.awareness, update, this)
    if (this.awareness.meta.get(this.doc.clientID)?.clock !== clock) this.soon()
    const gone = [...this.awareness.getStates().keys()].filter((client) => client !== this.doc.clientID && !present.has(client))
    if (gone.length) awarenessProtocol.removeAwarenessStates(this.awareness, gone, this)
  }
}

/**
 * While the tab is hidden, our own awareness updates (cursor moves, renewals) are coalesced and
 * sent at most every 10 s; they go at once when the tab is visible again. Renewals come every
 * 15 s, so others never see our state lapse (they drop it after 30 s). Anything else the
 * provider sends (its removal of others' states when its socket closed, which only it hears)
 * goes as it always did.
 */
function slowWhenHidden (provider) {
  const send = provider._awarenessUpdateHandler
  const own = provider.doc.clientID
  let held = false
  let timer = null
  const flush = () => {
    clearTimeout(timer)
    timer = null
    if (!held) return
    held = false
    send({ added: [], updated: [own], removed: [] }, 'hidden-tab')
  }
  provider.awareness.off('update', send)
  provider.awareness.on('update', (changes, origin) => {
    const mine = origin === 'local' && [...changes.added, ...changes.updated].includes(own)
    if (!document.hidden || !mine) {
      if (mine) { held = false; clearTimeout(timer); timer = null }
      send(changes, origin)
      return
    }
    held = true
    timer ??= setTimeout(flush, HIDDEN_FLUSH_MS)
  })
  document.addEventListener('visibilitychange', () => { if (!document.hidden) flush() })
}

// --- The query editor ----------------------------------------------------------------------

function editor (session, live, queryId) {
  const docName = `${session.workspace}/queries/${queryId}`
  const doc = new Y.Doc()
  // Offline edits are kept in the browser and sync when the connection is back.
  const local = new IndexeddbPersistence(docName, doc)
  // y-websocket puts the room name into the URL as it is: its segments go percent-encoded.
  const room = docName.split('/').map(encodeURIComponent).join('/')
  const provider = new WebsocketProvider(`${wsBase}/ws`, room, doc, { params: { token: session.token }, maxBackoffTime: BACKOFF_MAX_MS })
  const color = colorOf(session.user)
  provider.awareness.setLocalStateField('user', { name: session.name, color, colorLight: `${color}33` })
  // The cursor colours others send go into styles: only a plain colour is taken (before the
  // editor draws the cursors, which it does on the same change).
  provider.awareness.on('change', ({ added, updated }) => {
    for (const client of [...added, ...updated]) {
      const user = provider.awareness.getStates().get(client)?.user
      if (!user || typeof user !== 'object' || client === doc.clientID) continue
      const safe = cssColor(user.color, colorOf(client))
      if (user.color !== safe) user.color = safe
      if (user.colorLight !== undefined && cssColor(user.colorLight, null) === null) user.colorLight = `${safe}33`
    }
  })
  slowWhenHidden(provider)
  // y-websocket waits min(2^n · 100 ms, maxBackoffTime) after the n-th failure; setting the cap
  // just before it computes the delay (at most 2^n · 100 ms) makes the delay ours, jittered.
  // The token is read again for every attempt, so a refreshed one is used.
  const poller = new DocPoller(docName, doc, provider.awareness, session)
  let everConnected = false
  provider.on('connection-close', (event) => {
    if (event?.code === 4401 && provider.params.token === session.token) sessionExpired()
    const failures = provider.wsUnsuccessfulReconnects + (provider.wsconnected ? 0 : 1)
    provider.maxBackoffTime = backoff(failures)
    provider.params.token = session.token
    if (failures >= DEGRADED_AFTER_FAILURES) {
      poller.start()
      showConnection('document', 'degraded')
    } else {
      showConnection('document', 'disconnected')
    }
  })
  provider.on('status', ({ status }) => {
    if (status === 'connected') {
      poller.stop()
      showConnection('document', 'connected')
      showConnection('session', 'connected')
    } else if (status === 'connecting' && !poller.running) {
      showConnection('document', provider.wsUnsuccessfulReconnects > 0 || everConnected ? 'disconnected' : 'connecting')
    }
  })
  provider.on('sync', (synced) => { if (synced) everConnected = true })
  const reconnect = () => { if (!provider.wsconnected && !provider.wsconnecting) provider.connect() }
  addEventListener('online', reconnect)
  tokenListeners.add((fresh) => {
    provider.params.token = fresh
    reconnect()
    poller.soon()
  })

  const banner = el('p', { className: 'banner', id: 'editing-banner', hidden: true })
  const title = el('input', { type: 'text', id: 'title', autocomplete: 'off' })
  const titleNote = el('span', { className: 'sub', id: 'title-lock' })
  const host = el('div', { id: 'editor' })
  const result = el('div', { className: 'result', id: 'result' })
  $('#app').className = 'editor'
  $('#app').replaceChildren(
    el('section', { className: 'card' },
      el('h2', { textContent: `Query ${queryId}` }), banner,
      el('label', { htmlFor: 'title', textContent: 'Title' }), title, titleNote, el('p'),
      el('label', { textContent: 'SQL', id: 'sql-label' }), host),
    el('section', { className: 'card' }, el('h2', { textContent: 'Result' }), result))

  const ytext = doc.getText('query')
  const editable = new Compartment()
  const view = new EditorView({ parent: host, extensions: [basicSetup, sql(), yCollab(ytext, provider.awareness), editable.of([])] })
  // A token that may only read: the server refuses its edits, and the page stops taking them.
  const readOnly = () => {
    if (title.readOnly) return
    title.readOnly = true
    view.dispatch({ effects: editable.reconfigure([EditorView.editable.of(false), EditorState.readOnly.of(true)]) })
    titleNote.textContent = READ_ONLY_NOTE
  }
  // The server says so at once (auth "permission granted: read"), and refuses edits with
  // "permission denied".
  provider.messageHandlers[AUTH_MESSAGE] = (_encoder, decoder) => {
    const kind = decoding.readVarUint(decoder)
    const text = decoding.readVarString(decoder)
    if (kind === AUTH_DENIED || (kind === AUTH_GRANTED && text === 'read')) readOnly()
  }
  poller.onReadOnly = readOnly
  view.contentDOM.setAttribute('aria-labelledby', 'sql-label')

  // "User X is editing": everyone else in the document's awareness.
  const others = () => {
    const names = []
    provider.awareness.getStates().forEach((state, client) => {
      if (client !== doc.clientID && state.user?.name) names.push(state.user.name)
    })
    banner.hidden = names.length === 0
    banner.textContent = names.length ? `${names.join(', ')} ${names.length > 1 ? 'are' : 'is'} editing` : ''
  }
  provider.awareness.on('change', others)

  // The title is a Y.Text too, locked while someone edits it.
  const ytitle = doc.getText('title')
  const resource = `${docName}#title`
  const showTitle = () => { if (document.activeElement !== title) title.value = ytitle.toString() }
  ytitle.observe(showTitle)
  // Held while the field has the focus: renewed well within its lifetime (a lock lapses when
  // not renewed), and taken again after a reconnect.
  let renewal = null
  const lock = () => {
    // Someone gone idle in the field lets it go, so others may edit the title.
    if (live.presence.status === 'idle') {
      title.blur()
      return
    }
    live.send({ action: 'lock', resource })
    // Asked again after a while even without an answer (the socket may be down).
    clearTimeout(renewal)
    renewal = setTimeout(lock, LOCK_RENEW_MS)
  }
  title.addEventListener('focus', () => { if (!title.readOnly) lock() })
  title.addEventListener('blur', () => {
    clearTimeout(renewal)
    live.send({ action: 'unlock', resource })
  })
  title.addEventListener('input', () => {
    doc.transact(() => { ytitle.delete(0, ytitle.length); ytitle.insert(0, title.value) })
  })
  live.on((event) => {
    if (event.resource !== resource) return
    const mine = String(event.user_id) === session.user
    if (event.type === 'lock_acquired' && mine && event.expires_in_ms > 0 && document.activeElement === title) {
      // Renewed at a third of the lock's lifetime, so a late renewal still comes in time.
      clearTimeout(renewal)
      renewal = setTimeout(lock, Math.min(LOCK_RENEW_MS, event.expires_in_ms / 3))
    }
    if (event.type === 'lock_denied') {
      title.disabled = true
      titleNote.textContent = `locked by ${event.holder?.name || event.holder?.user_id}`
      title.blur()
    } else if (event.type === 'lock_acquired' && !mine) {
      title.disabled = true
      titleNote.textContent = `${event.name || event.user_id} is editing the title`
    } else if (event.type === 'lock_released') {
      title.disabled = false
      titleNote.textContent = title.readOnly ? READ_ONLY_NOTE : ''
    }
  })

  // The live result: the `status` map the server writes from query events.
  const status = doc.getMap('status')
  // Whether the document has arrived: what changes after that arrived live, and is flashed.
  const arrived = () => provider.synced || poller.serverStateVector !== null
  const showStatus = () => {
    const s = status.toJSON()
    result.classList.toggle('updating', s.status === 'running')
    result.setAttribute('aria-busy', String(s.status === 'running'))
    result.replaceChildren(
      el('p', { className: 'updating-note', textContent: 'Updating…', hidden: s.status !== 'running' }),
      el('dl', { className: 'kv' },
        el('dt', { textContent: 'Status' }), el('dd', { id: 'result-status', textContent: s.status || 'not run yet' }),
        el('dt', { textContent: 'Rows' }), el('dd', { id: 'result-count', textContent: s.result_count ?? '–' }),
        el('dt', { textContent: 'Time' }), el('dd', { textContent: s.execution_time != null ? `${s.execution_time} s` : '–' }),
        el('dt', { textContent: 'Finished' }), el('dd', { textContent: time(s.finished_at) || '–' }),
        ...(s.status === 'failed' ? [el('dt', { textContent: 'Error' }), el('dd', { id: 'result-error', className: 'error', textContent: s.error || 'unknown' })] : [])))
    if (['completed', 'failed'].includes(s.status) && arrived()) {
      result.classList.add('fresh')
      setTimeout(() => result.classList.remove('fresh'), 1200)
    }
  }
  status.observe(showStatus)
  showStatus()
  window.tandem = { Y, doc, provider, view, local, poller, live }
}

// --- Start ---------------------------------------------------------------------------------

let started = false

/** Connects as `session` and shows the page its path names (once). */
function start (session) {
  if (started) return
  started = true
  $('#me').textContent = `Signed in as ${session.name}`
  $('#connection').hidden = false
  const live = new Live(session)
  addEventListener('online', () => live.reconnectNow())
  tokenListeners.add(() => live.reconnectNow())
  watchActivity(live)
  // A hidden tab shows its user as idle.
  document.addEventListener('visibilitychange', () => {
    live.setPresence({ status: document.hidden ? 'idle' : 'online' })
  })
  live.on((event) => {
    if (['query_completed', 'query_failed', 'agent_executed', 'approval_request', 'new_chat_message', 'new_chat_session', 'system_alert', 'workflow_triggered'].includes(event.type)) {
      toast(describe(event))
    }
  })
  const match = location.pathname.match(/^\/queries\/([^/]+)$/)
  const queryId = match && safeDecode(match[1])
  if (queryId) {
    editor(session, live, queryId)
    live.connect()
  } else {
    dashboard(session, live)
  }
}

const session = await signIn()
if (session) start(session)
