// The browser dashboard of Tandem: who's online, the activity feed, notifications, chat badges,
// the queries with who is in each, and the collaborative query editor (CodeMirror bound to the
// query document's Y.Text, with live cursors, the "is editing" banner, a title lock and the
// live result panel).
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { IndexeddbPersistence } from 'y-indexeddb'
import { EditorView, basicSetup } from 'codemirror'
import { sql } from '@codemirror/lang-sql'
import { yCollab } from 'y-codemirror.next'

const params = new URLSearchParams(location.search)
const wsBase = location.origin.replace(/^http/, 'ws')
const IDLE_AFTER_MS = 5 * 60 * 1000
const COLORS = ['#b91c1c', '#1d4ed8', '#047857', '#7c3aed', '#b45309', '#0e7490', '#be185d', '#4d7c0f']

const $ = (selector) => document.querySelector(selector)
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props)
  for (const child of children) node.append(child)
  return node
}
const colorOf = (id) => COLORS[[...String(id)].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7) % COLORS.length]
const initials = (name) => String(name || '?').split(/\s+/).map((w) => w[0]).join('').slice(0, 2).toUpperCase()
const time = (iso) => (iso ? new Date(iso).toLocaleTimeString() : '')

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

async function signIn () {
  const token = params.get('token')
  if (token) {
    const claims = claimsOf(token)
    return { token, user: String(claims.sub), name: claims.name || String(claims.sub), workspace: claims.workspace }
  }
  const wanted = params.get('name')
  const saved = JSON.parse(sessionStorage.getItem('tandem.session') || 'null')
  if (saved && (!wanted || saved.name === wanted)) return saved
  const session = await devToken(wanted || await askName())
  sessionStorage.setItem('tandem.session', JSON.stringify(session))
  return session
}

// --- The connection indicator --------------------------------------------------------------

const LABELS = {
  connecting: 'Connecting…',
  connected: 'Connected',
  disconnected: 'Disconnected: reconnecting…',
  degraded: 'Degraded: polling over HTTP'
}
function showConnection (state) {
  const node = $('#connection')
  node.className = `connection ${state}`
  node.querySelector('.label').textContent = LABELS[state]
  node.dataset.state = state
}

// --- The dashboard connection: WebSocket, with a long-polling fallback ---------------------

class Live {
  constructor (session) {
    this.session = session
    this.handlers = new Set()
    this.lastId = 0
    this.failures = 0
    this.presence = { status: 'online', current_page: location.pathname }
    this.connect()
  }

  on (handler) { this.handlers.add(handler) }

  emit (event) { for (const handler of this.handlers) handler(event) }

  connect () {
    showConnection(this.failures >= 3 ? 'degraded' : (this.everConnected ? 'disconnected' : 'connecting'))
    const ws = new WebSocket(`${wsBase}/ws?token=${encodeURIComponent(this.session.token)}`)
    this.ws = ws
    ws.onopen = () => {
      this.failures = 0
      this.everConnected = true
      this.polling = false
      showConnection('connected')
      const since = this.lastId || undefined
      ws.send(JSON.stringify({ action: 'subscribe', channels: ['presence', 'queries', 'agents', 'approvals', 'chat_sessions', 'notifications', 'activity', 'system', 'workflows'], since }))
      this.send({ action: 'presence', ...this.presence })
    }
    ws.onmessage = (message) => {
      const frame = JSON.parse(message.data)
      for (const event of frame.type === 'batch' ? frame.events : [frame]) {
        if (typeof event.id === 'number') this.lastId = Math.max(this.lastId, event.id)
        this.emit(event)
      }
    }
    ws.onclose = () => {
      if (this.ws !== ws) return
      this.failures++
      showConnection(this.failures >= 3 ? 'degraded' : 'disconnected')
      if (this.failures >= 3) this.poll()
      // Exponential backoff with jitter, capped at 30 s.
      const delay = Math.min(30000, 500 * 2 ** Math.min(this.failures, 6)) * (0.5 + Math.random())
      setTimeout(() => this.connect(), delay)
    }
  }

  send (frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame))
  }

  setPresence (changes) {
    Object.assign(this.presence, changes)
    this.send({ action: 'presence', ...changes })
  }

  auth () { return { authorization: `Bearer ${this.session.token}` } }

  /** Long-polling while the WebSocket keeps failing; stops once it is back. */
  async poll () {
    if (this.polling) return
    this.polling = true
    let lastPresence = 0
    while (this.polling && this.failures >= 3) {
      try {
        if (Date.now() - lastPresence > 30000) {
          lastPresence = Date.now()
          await fetch('/api/v1/presence', { method: 'POST', headers: { ...this.auth(), 'content-type': 'application/json' }, body: JSON.stringify(this.presence) })
        }
        const response = await fetch(`/api/v1/events?since=${this.lastId}&timeout=25`, { headers: this.auth() })
        if (!response.ok) throw new Error(String(response.status))
        const page = await response.json()
        for (const event of page.events) this.emit(event)
        this.lastId = Math.max(this.lastId, page.last_id)
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 30000))
      }
    }
    this.polling = false
  }
}

// --- Idle detection and battery care -------------------------------------------------------

function watchActivity (live) {
  let last = Date.now()
  let idle = false
  const active = () => {
    last = Date.now()
    if (idle) { idle = false; live.setPresence({ status: 'online' }) }
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
  const queries = el('ul', { className: 'plain', id: 'queries' })
  const details = el('p', { className: 'sub', id: 'user-details' })
  const editing = new Map()

  const renderUsers = () => {
    const sorted = [...users.values()].sort((a, b) => String(a.name || a.user_id).localeCompare(String(b.name || b.user_id)))
    usersList.replaceChildren(...sorted.map((u) => {
      const name = u.name || String(u.user_id)
      const button = el('button', { className: 'user', type: 'button' },
        el('span', { className: 'avatar', style: `background:${u.color || colorOf(u.user_id)}` }, initials(name),
          el('span', { className: `status ${u.status}`, title: u.status })),
        el('span', {}, el('strong', { textContent: name }), el('br'),
          el('span', { className: 'sub', textContent: u.status === 'offline' ? `last seen ${time(u.last_seen)}` : `${u.status} · ${u.current_page || ''}` })))
      button.setAttribute('aria-label', `${name}, ${u.status}`)
      button.addEventListener('click', () => {
        details.textContent = `${name}: ${u.status}, ${u.current_page || 'no page'}, workspace ${u.workspace || '–'}, last active ${time(u.last_active) || '–'}`
      })
      return el('li', {}, button)
    }))
  }
  const renderQueries = () => {
    queries.replaceChildren(...[1, 2, 3].map((id) => {
      const who = editing.get(String(id)) || []
      return el('li', {}, el('a', { href: `/queries/${id}`, textContent: `Query ${id}` }),
        el('span', { className: 'sub', textContent: who.length ? ` · ${who.map((u) => u.name || u.user_id).join(', ')}` : '' }))
    }))
  }
  const addActivity = (event) => {
    const what = { query_executed: 'ran query', template_created: 'created template', agent_triggered: 'triggered agent', file_uploaded: 'uploaded' }[event.type]
    const object = event.query_id ?? event.template_id ?? event.agent_id ?? event.file_name
    feed.append(el('li', { textContent: `${time(event.timestamp)} · ${event.user_id} ${what} ${object}` }))
    feed.scrollTop = feed.scrollHeight
  }

  $('#app').className = ''
  $('#app').replaceChildren(
    el('section', { className: 'card' }, el('h2', { textContent: 'Online users' }), usersList, details),
    el('section', { className: 'card' }, el('h2', { textContent: 'Queries' }), queries),
    el('section', { className: 'card' }, el('h2', { textContent: 'Live activity' }), feed),
    el('section', { className: 'card' }, el('h2', { textContent: 'Notifications' }), unread),
    el('section', { className: 'card' }, el('h2', { textContent: 'Chat' }), badges))
  renderQueries()

  fetch('/api/v1/presence?include_offline=true', { headers: live.auth() }).then((r) => r.json()).then((body) => {
    for (const u of body.users || []) users.set(String(u.user_id), u)
    renderUsers()
  }).catch(() => {})
  fetch('/api/v1/activity?limit=30', { headers: live.auth() }).then((r) => r.json()).then((body) => {
    for (const event of body.events || []) addActivity(event)
  }).catch(() => {})

  live.on((event) => {
    switch (event.type) {
      case 'presence_update':
        users.set(String(event.user_id), { ...users.get(String(event.user_id)), ...event })
        renderUsers()
        break
      case 'editing':
        if (event.query_id !== undefined) { editing.set(String(event.query_id), event.users); renderQueries() }
        break
      case 'chat_badges':
        badges.replaceChildren(...Object.entries(event.unread).map(([sessionId, count]) => {
          const button = el('button', { className: 'user', type: 'button' }, `Chat ${sessionId} `, el('span', { className: 'badge', textContent: String(count) }))
          button.addEventListener('click', () => live.send({ action: 'mark_read', session_id: sessionId }))
          return el('li', {}, button)
        }))
        break
      case 'query_executed': case 'template_created': case 'agent_triggered': case 'file_uploaded':
        addActivity(event)
        break
      default:
        if (event.id !== undefined && !['lock_acquired', 'lock_released'].includes(event.type)) {
          unread.prepend(el('li', { textContent: `${time(event.timestamp)} · ${describe(event)}` }))
        }
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

function toast (text) {
  const node = el('div', { className: 'toast', textContent: text })
  $('#toasts').append(node)
  setTimeout(() => node.remove(), 6000)
}

// --- The query editor ----------------------------------------------------------------------

function editor (session, live, queryId) {
  const docName = `${session.workspace}/queries/${queryId}`
  const doc = new Y.Doc()
  // Offline edits are kept in the browser and sync when the connection is back.
  const local = new IndexeddbPersistence(docName, doc)
  const provider = new WebsocketProvider(`${wsBase}/ws`, docName, doc, { params: { token: session.token } })
  const color = colorOf(session.user)
  provider.awareness.setLocalStateField('user', { name: session.name, color, colorLight: `${color}33` })
  provider.on('status', ({ status }) => {
    if (status === 'connected') showConnection('connected')
    else if (status === 'disconnected') showConnection('disconnected')
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
  const view = new EditorView({ parent: host, extensions: [basicSetup, sql(), yCollab(ytext, provider.awareness)] })
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
  title.addEventListener('focus', () => live.send({ action: 'lock', resource }))
  title.addEventListener('blur', () => live.send({ action: 'unlock', resource }))
  title.addEventListener('input', () => {
    doc.transact(() => { ytitle.delete(0, ytitle.length); ytitle.insert(0, title.value) })
  })
  live.on((event) => {
    if (event.resource !== resource) return
    const mine = String(event.user_id) === session.user
    if (event.type === 'lock_denied') {
      title.disabled = true
      titleNote.textContent = `locked by ${event.holder?.name || event.holder?.user_id}`
      title.blur()
    } else if (event.type === 'lock_acquired' && !mine) {
      title.disabled = true
      titleNote.textContent = `${event.name || event.user_id} is editing the title`
    } else if (event.type === 'lock_released') {
      title.disabled = false
      titleNote.textContent = ''
    }
  })

  // The live result: the `status` map the server writes from query events.
  const status = doc.getMap('status')
  const showStatus = () => {
    const s = status.toJSON()
    result.classList.toggle('updating', s.status === 'running')
    result.replaceChildren(el('dl', { className: 'kv' },
      el('dt', { textContent: 'Status' }), el('dd', { id: 'result-status', textContent: s.status || 'not run yet' }),
      el('dt', { textContent: 'Rows' }), el('dd', { id: 'result-count', textContent: s.result_count ?? '–' }),
      el('dt', { textContent: 'Time' }), el('dd', { textContent: s.execution_time != null ? `${s.execution_time} s` : '–' }),
      el('dt', { textContent: 'Finished' }), el('dd', { textContent: time(s.finished_at) || '–' })))
    if (s.status === 'completed') {
      result.classList.add('fresh')
      setTimeout(() => result.classList.remove('fresh'), 1200)
    }
  }
  status.observe(showStatus)
  showStatus()
  window.tandem = { doc, provider, view, local }
}

// --- Start ---------------------------------------------------------------------------------

const session = await signIn()
$('#me').textContent = `Signed in as ${session.name}`
const live = new Live(session)
watchActivity(live)
// A hidden tab shows its user as idle, and sends nothing until it is visible again.
document.addEventListener('visibilitychange', () => {
  live.setPresence({ status: document.hidden ? 'idle' : 'online' })
})
live.on((event) => {
  if (['query_completed', 'query_failed', 'agent_executed', 'approval_request', 'new_chat_message', 'new_chat_session', 'system_alert', 'workflow_triggered'].includes(event.type)) {
    toast(describe(event))
  }
})
const match = location.pathname.match(/^\/queries\/([^/]+)$/)
if (match) editor(session, live, decodeURIComponent(match[1]))
else dashboard(session, live)
