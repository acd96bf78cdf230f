// The query editor: CodeMirror bound to the query document's Y.Text, with live cursors, the
// "is editing" banner, the locked title, the live result panel and the history (versions,
// compare, restore: `history.js`). The client library keeps the document in sync (y-websocket,
// HTTP polling while the socket fails, IndexedDB offline) and holds the title's lock.

import * as Y from 'yjs'
import { EditorView, basicSetup } from 'codemirror'
import { Compartment, EditorState } from '@codemirror/state'
import { sql } from '@codemirror/lang-sql'
import { yCollab } from 'y-codemirror.next'
import { $, el, colorOf, cssColor, time } from './util.js'
import { showConnection } from './status.js'
import { history } from './history.js'

const READ_ONLY_NOTE = 'Read only: you may not edit this query'

/** @param {import('@tandem/client').Tandem} t */
export function editor (session, t, queryId) {
  const docName = `${session.workspace}/queries/${queryId}`
  const color = colorOf(session.user)
  const shared = t.doc(docName, { user: { name: session.name, color, colorLight: `${color}33` } })
  const { ydoc: doc, provider, awareness } = shared
  // The cursor colours others send go into styles: only a plain colour is taken (before the
  // editor draws the cursors, which it does on the same change).
  awareness.on('change', ({ added, updated }) => {
    for (const client of [...added, ...updated]) {
      const user = awareness.getStates().get(client)?.user
      if (!user || typeof user !== 'object' || client === doc.clientID) continue
      const safe = cssColor(user.color, colorOf(client))
      if (user.color !== safe) user.color = safe
      if (user.colorLight !== undefined && cssColor(user.colorLight, null) === null) user.colorLight = `${safe}33`
    }
  })
  // Edits made while the document cannot reach the server are kept on this device (IndexedDB)
  // and counted in the indicator until they are synced.
  let unsynced = 0
  let lastDetail = {}
  const offline = () => !['connected', 'degraded'].includes(shared.status)
  const report = () => showConnection('document', shared.status, { ...lastDetail, pending: unsynced })
  shared.on('status', (status, detail) => {
    lastDetail = detail
    if (!offline()) unsynced = 0
    report()
  })
  doc.on('update', (_update, origin) => {
    if (!offline() || origin === provider || origin === shared.poller || origin === shared.local) return
    unsynced++
    report()
  })
  report()

  const banner = el('p', { className: 'banner', id: 'editing-banner', hidden: true })
  const title = el('input', { type: 'text', id: 'title', autocomplete: 'off' })
  const titleNote = el('span', { className: 'sub', id: 'title-lock' })
  const host = el('div', { id: 'editor' })
  const result = el('div', { className: 'result', id: 'result' })
  const versions = history(t, session, docName, () => ({ query: doc.getText('query').toString(), title: doc.getText('title').toString() }))
  // Offline edits merged with others': the history says so once the tab is back in sync.
  shared.on('offline-merge', ({ since }) => versions.merged(since))
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
  const view = new EditorView({ parent: host, extensions: [basicSetup, sql(), yCollab(ytext, awareness), editable.of([])] })
  // A token that may only read: the server refuses its edits, and the page stops taking them.
  const readOnly = () => {
    if (title.readOnly) return
    title.readOnly = true
    view.dispatch({ effects: editable.reconfigure([EditorView.editable.of(false), EditorState.readOnly.of(true)]) })
    titleNote.textContent = READ_ONLY_NOTE
  }
  shared.on('read-only', readOnly)
  if (shared.readOnly) readOnly()
  view.contentDOM.setAttribute('aria-labelledby', 'sql-label')

  // "Bob is editing · Jay is viewing": everyone else in the document, editing when the server
  // says their awareness changed lately (`active`), viewing otherwise; someone whose cursor
  // is here before the server says so is viewing.
  const others = () => {
    const editing = []
    const viewing = []
    const seen = new Set()
    for (const user of shared.editing) {
      if (String(user.user_id) === session.user) continue
      const name = user.name || String(user.user_id)
      seen.add(name);
      (user.active ? editing : viewing).push(name)
    }
    awareness.getStates().forEach((state, client) => {
      const name = state.user?.name
      if (client !== doc.clientID && name && name !== session.name && !seen.has(name)) {
        seen.add(name)
        viewing.push(name)
      }
    })
    const say = (names, verb) => names.length ? `${names.join(', ')} ${names.length > 1 ? 'are' : 'is'} ${verb}` : null
    const text = [say(editing, 'editing'), say(viewing, 'viewing')].filter(Boolean).join(' · ')
    banner.hidden = !text
    banner.textContent = text
  }
  awareness.on('change', others)
  shared.on('editing', others)

  // The title is a Y.Text too, locked while someone edits it: the lock is held (and renewed by
  // the library) while the field has the focus.
  const ytitle = doc.getText('title')
  const resource = `${docName}#title`
  const showTitle = () => { if (document.activeElement !== title) title.value = ytitle.toString() }
  ytitle.observe(showTitle)
  let lock = null
  const lockedBy = (holder) => {
    title.disabled = true
    titleNote.textContent = `locked by ${holder?.name || holder?.user_id}`
    title.blur()
  }
  title.addEventListener('focus', async () => {
    if (title.readOnly) return
    // A tab out of sync gets no lock: what it types merges when it is back, as offline edits do.
    if (shared.status !== 'connected') {
      titleNote.textContent = 'Offline: your title edits merge with others\' when you are back'
      return
    }
    const handle = await t.locks.acquire(resource)
    if (handle.state === 'denied') lockedBy(handle.holder)
    handle.on('lost', () => lockedBy(handle.holder))
    // Let go of already (the field lost the focus while asking).
    if (document.activeElement !== title) handle.release()
    else lock = handle
  })
  title.addEventListener('blur', () => {
    lock?.release()
    lock = null
  })
  // Someone gone idle in the field lets it go, so others may edit the title.
  t.presence.on('idle', () => title.blur())
  // Only what changed goes into the Y.Text (as the SQL editor does), so concurrent or offline
  // edits of the title merge instead of one whole title being glued to the other.
  title.addEventListener('input', () => {
    const before = ytitle.toString()
    const after = title.value
    let start = 0
    while (start < before.length && start < after.length && before[start] === after[start]) start++
    let end = 0
    while (end < before.length - start && end < after.length - start && before[before.length - 1 - end] === after[after.length - 1 - end]) end++
    doc.transact(() => {
      if (before.length - start - end > 0) ytitle.delete(start, before.length - start - end)
      if (after.length - start - end > 0) ytitle.insert(start, after.slice(start, after.length - end))
    })
  })
  // Others taking and releasing the title's lock.
  t.subscribe('presence', (event) => {
    if (event.resource !== resource || String(event.user_id) === session.user) return
    if (event.type === 'lock_acquired') {
      title.disabled = true
      titleNote.textContent = `${event.name || event.user_id} is editing the title`
    } else if (event.type === 'lock_released') {
      title.disabled = false
      titleNote.textContent = title.readOnly ? READ_ONLY_NOTE : ''
    }
  })

  // The live result: the `status` map the server writes from query events.
  const status = doc.getMap('status')
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
    // What changes after the document arrived arrived live, and is flashed.
    if (['completed', 'failed'].includes(s.status) && shared.synced) {
      result.classList.add('fresh')
      setTimeout(() => result.classList.remove('fresh'), 1200)
    }
  }
  status.observe(showStatus)
  showStatus()
  window.tandem = { Y, doc, provider, view, local: shared.local, poller: shared.poller, shared, client: t, versions }
}
