// The browser dashboard of Tandem: who's online, the activity feed, notifications, chat badges,
// the queries with who is in each, and the collaborative query editor, built on the client
// library `@tandem/client` (clients/js), which holds the connections, presence, locks, badges,
// the fallbacks and the offline store. This module signs in and shows the page the path names:
// - session.js: signing in and fresh tokens; status.js: the connection indicator;
// - dashboard.js: the dashboard's widgets; editor.js: the query editor; history.js: its
//   versions; util.js: the DOM helpers.
import { createTandem } from '@tandem/client'
import { IndexeddbPersistence } from 'y-indexeddb'
import { $, el, safeDecode } from './util.js'
import { signIn, tokenListeners, tokenSource } from './session.js'
import { showConnection } from './status.js'
import { dashboard, toast } from './dashboard.js'
import { editor } from './editor.js'

const TOASTED = ['query_completed', 'query_failed', 'agent_executed', 'approval_request', 'approval_decided', 'new_chat_message', 'new_chat_session', 'system_alert', 'workflow_triggered']

let started = false

/** Connects as `session` and shows the page its path names (once). */
function start (session) {
  if (started) return
  started = true
  $('#me').textContent = `Signed in as ${session.name}`
  $('#connection').hidden = false
  const match = location.pathname.match(/^\/queries\/([^/]+)$/)
  const queryId = match && safeDecode(match[1])
  const t = createTandem({
    url: location.origin,
    token: session.token,
    getToken: tokenSource(session),
    offline: IndexeddbPersistence,
    presence: { status: 'online', current_page: location.pathname, workspace: queryId ? 'queries' : 'dashboard', name: session.name }
  })
  tokenListeners.add((fresh) => t.setToken(fresh))
  t.on('token', (fresh) => { session.token = fresh })
  t.on('status', (status, detail) => showConnection('dashboard', status, detail))
  showConnection('dashboard', t.status, t.statusDetail)
  // Live events only: what the history holds was seen before.
  t.subscribe(['queries', 'agents', 'approvals', 'chat_sessions', 'system', 'workflows', 'notifications'], (event) => {
    if (TOASTED.includes(event.type)) toast(event, t)
  })
  // Unread notifications and chat messages, on every page: a badge in the header that leads
  // to the dashboard.
  const headerBadge = el('a', { href: '/', className: 'badge header-badge', id: 'header-badge', hidden: true })
  $('#me').before(headerBadge)
  const showBadge = () => {
    const notifications = t.notifications.unread
    const chats = t.badges.total
    headerBadge.hidden = notifications + chats === 0
    headerBadge.textContent = String(notifications + chats)
    headerBadge.ariaLabel = `${notifications} unread notifications, ${chats} unread chat messages`
    headerBadge.title = headerBadge.ariaLabel
  }
  t.notifications.on('change', showBadge)
  t.badges.on('change', showBadge)
  window.tandem = { client: t }
  if (queryId) editor(session, t, queryId)
  else dashboard(session, t)
}

const session = await signIn({ start, started: () => started })
if (session) start(session)
