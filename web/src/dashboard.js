// The dashboard page: online users, the queries with who is in each, the live activity feed,
// notifications (with toasts) and chat badges.

import { $, el, colorOf, cssColor, initials, safeDecode, time } from './util.js'

// A long-lived tab keeps this many entries of each list (notifications, activity, a chat).
const MAX_LISTED = 200
// Toasts shown at once; more are counted in one "+N more".
const MAX_TOASTS = 4
// The dashboard waits this long at most for its history before it goes live without it.
const SNAPSHOT_TIMEOUT_MS = 5000

export function dashboard (session, live) {
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

/** A toast for 6 s; past a few at once, they are counted in one "+N more" instead. */
export function toast (text) {
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
