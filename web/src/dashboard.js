// The dashboard page: online users, the queries with who is in each, the live activity feed,
// notifications (with toasts) and chat badges, all from the client library's state.

import * as Y from 'yjs'
import { $, el, ago, colorOf, cssColor, initials, pageLabel, params, safeAvatar, safeDecode, time } from './util.js'

// Toasts shown at once; more are counted in one "+N more".
const MAX_TOASTS = 4
const MAX_TOASTS_PHONE = 2

/** What an empty list says. */
const empty = (text) => el('li', { className: 'empty', textContent: text })

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
  // A chat's toast opens the dashboard at `/?chat=ID`: that session is open.
  let openChat = params.get('chat')

  const avatar = (u, name) => {
    const node = el('span', { className: 'avatar' }, initials(name), el('span', { className: `status ${u.status}`, title: u.status }))
    node.style.backgroundColor = cssColor(u.color, colorOf(u.user_id))
    // The picture they sent (https: or an image data URL), over their initials, which show
    // when it does not load.
    const picture = safeAvatar(u.avatar)
    if (picture) {
      const img = el('img', { src: picture, alt: '', referrerPolicy: 'no-referrer', loading: 'lazy' })
      img.addEventListener('error', () => img.remove())
      node.prepend(img)
    }
    return node
  }
  const userItem = (u) => {
    const name = u.name || String(u.user_id)
    const button = el('button', { className: 'user', type: 'button' },
      avatar(u, name),
      el('span', {}, el('strong', { textContent: name }), el('br'),
        el('span', { className: 'sub', textContent: u.status === 'offline' ? `last seen ${ago(u.last_seen)}` : `${u.status} · ${whereIs(u.current_page)}` })))
    button.setAttribute('aria-label', `${name}, ${u.status}`)
    button.addEventListener('click', () => {
      details.textContent = `${name}: ${u.status}, ${whereIs(u.current_page) || 'no page'}, workspace ${u.workspace || '–'}, last active ${ago(u.last_active) || '–'}`
    })
    return el('li', {}, button)
  }
  // Online (and idle) users first, then the offline ones, each by name.
  const renderUsers = () => {
    const sorted = t.presence.list().sort((a, b) => String(a.name || a.user_id).localeCompare(String(b.name || b.user_id)))
    const online = sorted.filter((u) => u.status !== 'offline')
    const offline = sorted.filter((u) => u.status === 'offline')
    usersList.replaceChildren(
      ...(online.length ? online.map(userItem) : [empty('Nobody is online')]),
      ...(offline.length ? [el('li', { className: 'group', textContent: 'Offline' }), ...offline.map(userItem)] : []))
  }
  // Relative times ("3 min ago") move on by themselves.
  setInterval(renderUsers, 30000)
  // Each listed query's title, read from its document (`GET /api/v1/docs/…`), read again when
  // someone has been in it.
  const titles = new Map()
  const fetching = new Set()
  const titleOf = (id) => {
    if (!titles.has(id) && !fetching.has(id)) {
      fetching.add(id)
      const path = `/api/v1/docs/${[session.workspace, 'queries', id].map(encodeURIComponent).join('/')}`
      t.request(path).then((r) => (r.ok ? r.arrayBuffer() : null)).then((bytes) => {
        const doc = new Y.Doc()
        if (bytes && bytes.byteLength) Y.applyUpdate(doc, new Uint8Array(bytes))
        titles.set(id, doc.getText('title').toString().trim())
        doc.destroy()
        renderQueries()
        renderUsers()
      }).catch(() => {}).finally(() => fetching.delete(id))
    }
    return titles.get(id) || ''
  }
  t.editing.on('change', (document) => {
    const id = typeof document === 'string' && document.startsWith(`${session.workspace}/queries/`) ? document.slice(session.workspace.length + 9) : null
    if (id !== null) titles.delete(id)
  })
  /** "on “Revenue by region”" for a query page with a title, else what the page is. */
  const whereIs = (page) => {
    const query = /^\/queries\/([^/]+)$/.exec(page || '')
    const id = query && safeDecode(query[1])
    const title = id && titleOf(id)
    return title ? `on “${title}”` : pageLabel(page)
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
    // And every query the events name.
    for (const event of [...t.notifications.items, ...t.activity.items]) {
      if (event.query_id !== undefined && event.query_id !== null && !inQuery.has(String(event.query_id))) inQuery.set(String(event.query_id), new Map())
    }
    const ids = [...inQuery.keys()].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }))
    if (!ids.length) {
      queries.replaceChildren(empty('No query is open or in the news yet'))
      return
    }
    queries.replaceChildren(...ids.map((id) => {
      const who = [...(inQuery.get(id) || new Map()).values()]
      const title = titleOf(id)
      return el('li', {}, el('a', { href: `/queries/${encodeURIComponent(id)}`, textContent: `Query ${id}` }),
        ...(title ? [el('span', { className: 'query-title', textContent: ` “${title}”` })] : []),
        el('span', { className: 'sub', textContent: who.length ? ` · ${who.map((u) => u.name || u.user_id).join(', ')}` : '' }))
    }))
  }
  // Notifications, newest on top, the unread ones (after the last "Mark all read") marked.
  const renderNotifications = () => {
    const items = [...t.notifications.items].reverse()
    // Approval requests not decided yet (as far as the list knows) can be decided from it.
    const decided = new Set(items.filter((e) => e.type === 'approval_decided').map((e) => String(e.approval_id)))
    if (!items.length) unread.replaceChildren(empty('No notifications'))
    else unread.replaceChildren(...items.map((event) => {
      const item = el('li', { textContent: `${time(event.timestamp)} · ${describe(event)}` })
      if (event.type === 'approval_request' && !decided.has(String(event.approval_id))) item.append(' ', decisionButtons(t, event))
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
    if (!sessions.length) {
      badges.replaceChildren(empty('No chat messages'))
      return
    }
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
  // Names, not ids: who did it as the presence list knows them.
  const nameOf = (id) => t.presence.get(id)?.name || String(id)
  const moreBelow = el('button', { type: 'button', className: 'link more-below', hidden: true, textContent: 'new entries below' })
  moreBelow.addEventListener('click', () => { feed.scrollTop = feed.scrollHeight })
  feed.addEventListener('scroll', () => { if (atBottom()) moreBelow.hidden = true })
  const atBottom = () => feed.scrollHeight - feed.scrollTop - feed.clientHeight < 8
  let shownActivity = 0
  const renderActivity = () => {
    const what = { query_executed: 'ran', template_created: 'created template', agent_triggered: 'triggered agent', file_uploaded: 'uploaded' }
    // The feed follows new entries only while the reader is at its bottom; otherwise it says
    // how many came.
    const follow = atBottom()
    const items = t.activity.items
    if (!items.length) feed.replaceChildren(empty('No activity yet'))
    else feed.replaceChildren(...items.map((event) => {
      const object = event.query_id !== undefined
        ? el('a', { href: `/queries/${encodeURIComponent(event.query_id)}`, textContent: `Query ${event.query_id}` })
        : String(event.template_id ?? event.agent_id ?? event.file_name ?? '')
      const item = el('li', {}, `${time(event.timestamp)} · ${nameOf(event.user_id)} ${what[event.type] ?? event.type} `, object)
      item.dataset.id = event.id
      return item
    }))
    const added = items.length - shownActivity
    shownActivity = items.length
    if (follow) {
      feed.scrollTop = feed.scrollHeight
      moreBelow.hidden = true
    } else if (added > 0) {
      moreBelow.dataset.count = String(Number(moreBelow.hidden ? 0 : moreBelow.dataset.count) + added)
      moreBelow.textContent = `${moreBelow.dataset.count} new`
      moreBelow.hidden = false
    }
  }
  // Settings: which event types are pushed in real time (the preferences API), a checkbox each.
  const LABELS = {
    query_started: 'Query started', query_completed: 'Query completed', query_failed: 'Query failed',
    agent_executed: 'Agent ran', approval_request: 'Approval requested', approval_decided: 'Approval decided',
    new_chat_message: 'Chat message', new_chat_session: 'New chat', system_alert: 'System alert',
    workflow_triggered: 'Workflow triggered', query_executed: 'Query run (activity)', template_created: 'Template created (activity)',
    agent_triggered: 'Agent triggered (activity)', file_uploaded: 'File uploaded (activity)'
  }
  const settingsNote = el('p', { className: 'sub', role: 'status', id: 'settings-note' })
  const settingsList = el('ul', { className: 'plain settings', id: 'preferences' })
  const renderSettings = () => {
    const types = Object.keys(t.preferences.realtime).filter((type) => LABELS[type])
    settingsList.replaceChildren(...types.map((type) => {
      const box = el('input', { type: 'checkbox', id: `pref-${type}`, checked: t.preferences.realtime[type] !== false })
      box.addEventListener('change', async () => {
        box.disabled = true
        try {
          await t.preferences.set({ [type]: box.checked })
          settingsNote.textContent = `${LABELS[type]}: ${box.checked ? 'shown' : 'muted'}`
        } catch (err) {
          box.checked = !box.checked
          settingsNote.textContent = `Not saved: ${err.message}`
        } finally {
          box.disabled = false
        }
      })
      return el('li', {}, box, ' ', el('label', { htmlFor: `pref-${type}`, textContent: LABELS[type] }))
    }))
  }
  t.preferences.on('change', renderSettings)
  t.preferences.load().catch((err) => { settingsNote.textContent = `Settings unavailable (${err.message})` })
  const settings = el('section', { className: 'card settings-card' }, el('details', { id: 'settings' },
    el('summary', {}, el('h2', { textContent: 'Real-time notifications' })),
    el('p', { className: 'sub', textContent: 'Which events are pushed to you as they happen.' }),
    settingsList, settingsNote))

  $('#app').className = ''
  $('#app').replaceChildren(
    el('section', { className: 'card' }, el('h2', { textContent: 'Online users' }), usersList, details),
    el('section', { className: 'card' }, el('h2', { textContent: 'Queries' }), queries),
    el('section', { className: 'card' }, el('h2', {}, 'Live activity ', moreBelow), feed),
    el('section', { className: 'card' }, el('h2', { textContent: 'Chat' }), badges, chat),
    el('section', { className: 'card' }, el('h2', {}, 'Notifications ', unreadCount, ' ', markRead), unread),
    settings)

  t.presence.on('change', () => { renderUsers(); renderQueries() })
  // While disconnected, who is online is what the page knew last: greyed out, as such.
  const staleness = (status) => usersList.classList.toggle('stale', !['connected', 'degraded'].includes(status))
  t.on('status', staleness)
  staleness(t.status)
  t.editing.on('change', renderQueries)
  t.notifications.on('change', () => { renderNotifications(); renderQueries() })
  t.activity.on('change', () => { renderActivity(); renderQueries() })
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
    case 'approval_decided': return `Approval ${event.approval_id} ${event.decision} by ${event.name || event.user_id}${event.comment ? `: ${event.comment}` : ''}`
    case 'new_chat_message': return `Chat ${event.session_id}: ${event.message}`
    case 'new_chat_session': return `New chat session ${event.session_id}`
    case 'system_alert': return `${event.severity}: ${event.message}`
    case 'workflow_triggered': return `Workflow ${event.workflow_id} triggered`
    default: return event.type
  }
}

/** How serious an event is, for its toast: `critical`, `error`, `warning` or `info`. */
/**
 * Approve / Deny for an approval request: the decision goes to the server (an
 * `approval_decided` event everyone sees); the buttons then say what was decided.
 */
export function decisionButtons (t, event) {
  const box = el('span', { className: 'decision' })
  const decide = async (decision) => {
    for (const button of box.querySelectorAll('button')) button.disabled = true
    try {
      await t.approvals.decide(event.approval_id, decision)
      box.replaceChildren(el('span', { className: 'decided', textContent: decision === 'approved' ? 'Approved' : 'Denied' }))
      // A toast has done its job once decided: it goes after a moment.
      const toast = box.closest('.toast')
      if (toast) setTimeout(() => toast.remove(), 3000)
    } catch (err) {
      box.replaceChildren(el('span', { className: 'error', textContent: `Not sent: ${err.message}` }))
    }
  }
  box.append(
    el('button', { type: 'button', className: 'approve', textContent: 'Approve', onclick: () => decide('approved') }),
    el('button', { type: 'button', className: 'deny', textContent: 'Deny', onclick: () => decide('denied') }))
  return box
}

export function severityOf (event) {
  if (event.type === 'system_alert' && ['critical', 'error', 'warning', 'info'].includes(event.severity)) return event.severity
  if (event.type === 'query_failed') return 'error'
  if (event.type === 'approval_request') return 'warning'
  return 'info'
}

/** Where a click on an event's toast goes: its query, its chat session on the dashboard, or nowhere. */
function targetOf (event) {
  if (event.query_id !== undefined && event.query_id !== null) return `/queries/${encodeURIComponent(event.query_id)}`
  if (['new_chat_message', 'new_chat_session'].includes(event.type) && event.session_id !== undefined) return `/?chat=${encodeURIComponent(event.session_id)}`
  return null
}

/**
 * A toast for `event`, styled by its severity, with a close button; a click opens what it is
 * about. `critical` and `error` ones stay until closed; the others go after 6 s, and past a few
 * at once they are counted in one "+N more" (a failure is never folded away).
 */
export function toast (event, t) {
  const toasts = $('#toasts')
  const severity = severityOf(event)
  // Failures, and requests that wait for a decision, stay until closed.
  const sticky = severity === 'critical' || severity === 'error' || event.type === 'approval_request'
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
  if (event.type === 'approval_request' && t) text.after(decisionButtons(t, event))
  node.dataset.severity = severity
  close.addEventListener('click', () => node.remove())
  toasts.insertBefore(node, toasts.querySelector('.more'))
  if (!sticky) setTimeout(() => node.remove(), 6000)
}
