// The query editor: CodeMirror bound to the query document's Y.Text, with live cursors, the
// "is editing" banner, the locked title, the live result panel and the history (versions,
// compare, restore: `history.js`); the document syncs over
// y-websocket, over HTTP polling while the socket fails, and is kept in IndexedDB offline.

import * as Y from 'yjs'
import * as decoding from 'lib0/decoding'
import { WebsocketProvider } from 'y-websocket'
import { IndexeddbPersistence } from 'y-indexeddb'
import { EditorView, basicSetup } from 'codemirror'
import { Compartment, EditorState } from '@codemirror/state'
import { sql } from '@codemirror/lang-sql'
import { yCollab } from 'y-codemirror.next'
import { $, el, colorOf, cssColor, time, wsBase } from './util.js'
import { backoff, showConnection, BACKOFF_MAX_MS, DEGRADED_AFTER_FAILURES } from './status.js'
import { sessionExpired, tokenListeners } from './session.js'
import { DocPoller, HIDDEN_FLUSH_MS } from './poller.js'
import { history } from './history.js'

// The title lock is renewed at least this often while its field has the focus.
const LOCK_RENEW_MS = 10000
// The y-websocket message type of the auth protocol, and its kinds.
const AUTH_MESSAGE = 2
const AUTH_DENIED = 0
const AUTH_GRANTED = 1
const READ_ONLY_NOTE = 'Read only: you may not edit this query'

export function editor (session, live, queryId) {
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
  // Offline edits merged with others': the history says so once the tab is back in sync.
  let offlineSince = null
  let editedOffline = false
  let othersArrived = false
  provider.on('status', ({ status }) => {
    if (status === 'disconnected' && everConnected && offlineSince === null) {
      offlineSince = Date.now()
      editedOffline = false
      othersArrived = false
    }
  })
  doc.on('update', (_update, origin) => {
    // Polling over HTTP keeps the tab in sync: what it sends and gets is not offline work.
    if (offlineSince === null || poller.running) return
    if (origin === provider || origin === poller) othersArrived = true
    else if (origin !== local) editedOffline = true
  })
  provider.on('sync', (synced) => {
    if (!synced) return
    everConnected = true
    if (offlineSince !== null) {
      const since = offlineSince
      offlineSince = null
      if (editedOffline && othersArrived) versions.merged(since)
    }
  })
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
  const versions = history(session, docName, () => ({ query: doc.getText('query').toString(), title: doc.getText('title').toString() }))
  $('#app').className = 'editor'
  $('#app').replaceChildren(
    el('section', { className: 'card' },
      el('h2', { textContent: `Query ${queryId}` }), banner,
      el('label', { htmlFor: 'title', textContent: 'Title' }), title, titleNote, el('p'),
      el('label', { textContent: 'SQL', id: 'sql-label' }), host),
    el('section', { className: 'card' }, el('h2', { textContent: 'Result' }), result),
    versions.card)

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
  window.tandem = { Y, doc, provider, view, local, poller, live, versions }
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
