// The dashboard page: online users, the queries with who is in each, the live activity feed,
// notifications (with toasts) and chat badges, all from the client library's state.

import { $, el, colorOf, cssColor, initials, safeDecode, time } from './util.js'

// Toasts shown at once; more are counted in one "+N more".
const MAX_TOASTS = 4
const MAX_TOASTS_PHONE = 2
// Queries listed even when nobody is in them.
const LISTED_QUERIES = ['1', '2', '3']

/** @param {import('@tandem/client').Tandem} t */
export function dashboard (session, t) {
  const usersList = el('ul', { className: 'plain', id: 'online-users' })
  const feed = el('ul', { className: 'plain feed', id: 'activity' })
  const unread = el('ul', { className: 'plain', id: 'unread' })
  const badges = el('ul', { className: 'plain', id: 'chat-badges' })
  const chat = el('div', { id: 'chat-session', hidden: true })
  const queries = el('ul', { className: 'plain', id: 'queries' })
  const details = el('p', { className: 'sub', id: 'user-details' })
  const unreadCount = el('span', { className: 'badge', id: 'unread-count' })
  const markRead = el('button', { type: 'button', className: 'link', textContent: 'Mark all read' })
  // The session open in the panel: it shows new messages as they come, and stays read.
  let openChat = null

  const avatar = (u, name) => {
    const node = el('span', { className: 'avatar' }, initials(name), el('span', { className: `status ${u.status}`, title: u.status }))
    node.style.backgroundColor = cssColor(u.color, colorOf(u.user_id))
    return node
  }
  const renderUsers = () => {
    const sorted = t.presence.list().sort((a, b) => String(a.name || a.user_id).localeCompare(String(b.name || b.user_id)))
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
  // `editing` events of its document and from the pages in everyone's presence.
  const renderQueries = () => {
    const inQuery = new Map()
    const add = (id, user) => {
      const who = inQuery.get(id) || new Map()
      who.set(String(user.user_id), who.get(String(user.user_id))?.name ? who.get(String(user.user_id)) : user)
      inQuery.set(id, who)
    }
    for (const entry of t.editing.list()) if (entry.query_id !== undefined) for (const user of entry.users) add(String(entry.query_id), user)
    for (const user of t.presence.list()) {
      const page = user.status !== 'offline' && /^\/queries\/([^/]+)$/.exec(user.current_page || '')
      // Pages are whatever clients say; one that is no valid path names no query.
      const id = page && safeDecode(page[1])
      if (id) add(id, user)
    }
    const ids = [...new Set([...LISTED_QUERIES, ...inQuery.keys()])].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))
    queries.replaceChildren(...ids.map((id) => {
      const who = [...(inQuery.get(id) || new Map()).values()]
      return el('li', {}, el('a', { href: `/queries/${encodeURIComponent(id)}`, textContent: `Query ${id}` }),
        el('span', { className: 'sub', textContent: who.length ? ` · ${who.map((u) => u.name || u.user_id).join(', ')}` : '' }))
    }))
  }
  // Notifications, newest on top, the unread ones (after the last "Mark all read") marked.
  const renderNotifications = () => {
    const items = [...t.notifications.items].reverse()
    unread.replaceChildren(...items.map((event) => {
      const item = el('li', { textContent: `${time(event.timestamp)} · ${describe(event)}` })
      item.dataset.id = event.id
      item.classList.toggle('unread', t.notifications.isUnread(event))
      return item
    }))
    const count = t.notifications.unread
    unreadCount.textContent = String(count)
    unreadCount.hidden = count === 0
    unreadCount.ariaLabel = `${count} unread`
    markRead.disabled = count === 0
    renderChats()
  }
  markRead.addEventListener('click', () => t.notifications.markRead())
  // The messages of each chat session, from the notifications.
  const messagesOf = (sessionId) => t.notifications.items.filter((event) => event.type === 'new_chat_message' && String(event.session_id) === sessionId)
  const showChat = () => {
    if (openChat === null) return
    chat.hidden = false
    chat.replaceChildren(el('h3', { textContent: `Chat ${openChat}` }),
      el('ul', { className: 'plain feed' }, ...messagesOf(openChat).map((m) => el('li', { textContent: `${time(m.timestamp)} · ${m.sender ?? ''} ${m.message ?? ''}` }))))
    if (t.badges.unread[openChat] && !document.hidden) t.badges.markRead(openChat).catch(() => {})
  }
  document.addEventListener('visibilitychange', showChat)
  // Every session with unread messages or seen here, its badge showing what is unread.
  const renderChats = () => {
    const seen = t.notifications.items.filter((event) => event.type === 'new_chat_message').map((event) => String(event.session_id))
    const sessions = [...new Set([...Object.keys(t.badges.unread), ...seen])].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))
    badges.replaceChildren(...sessions.map((sessionId) => {
      const count = t.badges.unread[sessionId] || 0
      const button = el('button', { className: 'user', type: 'button' }, `Chat ${sessionId} `,
        ...(count ? [el('span', { className: 'badge', textContent: String(count), ariaLabel: `${count} unread` })] : []))
      // Viewing the session reads it: its badge clears here and in the user's other tabs.
      button.addEventListener('click', () => {
        openChat = sessionId
        showChat()
      })
      return el('li', {}, button)
    }))
    if (openChat !== null) showChat()
  }
  const renderActivity = () => {
    const what = { query_executed: 'ran query', template_created: 'created template', agent_triggered: 'triggered agent', file_uploaded: 'uploaded' }
    feed.replaceChildren(...t.activity.items.map((event) => {
      const object = event.query_id ?? event.template_id ?? event.agent_id ?? event.file_name
      const item = el('li', { textContent: `${time(event.timestamp)} · ${event.user_id} ${what[event.type]} ${object}` })
      item.dataset.id = event.id
      return item
    }))
    feed.scrollTop = feed.scrollHeight
  }

  $('#app').className = ''
  $('#app').replaceChildren(
    el('section', { className: 'card' }, el('h2', { textContent: 'Online users' }), usersList, details),
    el('section', { className: 'card' }, el('h2', { textContent: 'Queries' }), queries),
    el('section', { className: 'card' }, el('h2', { textContent: 'Live activity' }), feed),
    el('section', { className: 'card' }, el('h2', {}, 'Notifications ', unreadCount, ' ', markRead), unread),
    el('section', { className: 'card' }, el('h2', { textContent: 'Chat' }), badges, chat))

  t.presence.on('change', () => { renderUsers(); renderQueries() })
  // While disconnected, who is online is what the page knew last: greyed out, as such.
  const staleness = (status) => usersList.classList.toggle('stale', !['connected', 'degraded'].includes(status))
  t.on('status', staleness)
  staleness(t.status)
  t.editing.on('change', renderQueries)
  t.notifications.on('change', renderNotifications)
  t.activity.on('change', renderActivity)
  t.badges.on('change', renderChats)
  renderUsers()
  renderQueries()
  renderNotifications()
  renderActivity()
}

export function describe (event) {
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

/** How serious an event is, for its toast: `critical`, `error`, `warning` or `info`. */
export function severityOf (event) {
  if (event.type === 'system_alert' && ['critical', 'error', 'warning', 'info'].includes(event.severity)) return event.severity
  if (event.type === 'query_failed') return 'error'
  if (event.type === 'approval_request') return 'warning'
  return 'info'
}

/** Where a click on an event's toast goes: its query, or the dashboard (chats, the rest). */
function targetOf (event) {
  if (event.query_id !== undefined && event.query_id !== null) return `/queries/${encodeURIComponent(event.query_id)}`
  return null
}

/**
 * A toast for `event`, styled by its severity, with a close button; a click opens what it is
 * about. `critical` and `error` ones stay until closed; the others go after 6 s, and past a few
 * at once they are counted in one "+N more" (a failure is never folded away).
 */
export function toast (event) {
  const toasts = $('#toasts')
  const severity = severityOf(event)
  const sticky = severity === 'critical' || severity === 'error'
  const shown = toasts.querySelectorAll('.toast:not(.more):not(.sticky)').length
  // A phone shows fewer at once.
  const max = matchMedia('(max-width: 700px)').matches ? MAX_TOASTS_PHONE : MAX_TOASTS
  if (!sticky && shown >= max) {
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
  const target = targetOf(event)
  const text = target ? el('a', { href: target, className: 'toast-text', textContent: describe(event) }) : el('span', { className: 'toast-text', textContent: describe(event) })
  const close = el('button', { type: 'button', className: 'toast-close', textContent: '×', ariaLabel: 'Dismiss' })
  const node = el('div', { className: `toast ${severity}${sticky ? ' sticky' : ''}`, role: sticky ? 'alert' : 'status' }, text, close)
  node.dataset.severity = severity
  close.addEventListener('click', () => node.remove())
  toasts.insertBefore(node, toasts.querySelector('.more'))
  if (!sticky) setTimeout(() => node.remove(), 6000)
}
