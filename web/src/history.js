// The query's version history: its versions with time, authors and label, a version saved on
// demand, any version compared side by side with the query now, and "Restore", confirmed
// with the names of whoever changed the query since that version (their changes go).

import { el } from './util.js'

const REASONS = { auto: 'saved automatically', named: 'saved', before_restore: 'before a restore', restore: 'restored' }

export function history (t, session, docName, current) {
  const api = `/api/v1/docs/${docName.split('/').map(encodeURIComponent).join('/')}/versions`
  const label = el('input', { type: 'text', id: 'version-label', placeholder: 'Label (optional)', maxLength: 200, autocomplete: 'off' })
  const save = el('button', { type: 'button', id: 'save-version', textContent: 'Save version' })
  const list = el('ol', { className: 'versions', id: 'versions', 'aria-live': 'polite' })
  const note = el('p', { className: 'sub', id: 'history-note', role: 'status' })
  const compare = el('div', { className: 'compare', id: 'compare', hidden: true })
  const confirm = el('div', { className: 'confirm', id: 'restore-confirm', role: 'alertdialog', hidden: true })
  const card = el('section', { className: 'card history', id: 'history' },
    el('h2', { textContent: 'History' }),
    el('div', { className: 'row' }, el('label', { htmlFor: 'version-label', className: 'visually-hidden', textContent: 'Version label' }), label, save),
    note, confirm, list, compare)
  let versions = []
  let unversioned = []
  let names = new Map()

  const nameOf = (id) => names.get(String(id)) || String(id)
  const sentence = (people) => people.length <= 1 ? people.join('') : `${people.slice(0, -1).join(', ')} and ${people.at(-1)}`

  const loadNames = async () => {
    const response = await t.request('/api/v1/presence?include_offline=true')
    if (!response.ok) return
    const { users } = await response.json()
    names = new Map(users.filter((u) => u.name).map((u) => [String(u.user_id), u.name]))
  }

  const refresh = async () => {
    try {
      const response = await t.request(api)
      if (!response.ok) throw new Error(`${response.status}`)
      const body = await response.json()
      versions = body.versions
      unversioned = body.unversioned_authors || []
      await loadNames().catch(() => {})
      render()
    } catch (err) {
      note.textContent = `History unavailable (${err.message})`
    }
  }

  const render = () => {
    list.replaceChildren(...versions.map((v) => el('li', {},
      el('span', { className: 'when', textContent: new Date(v.at).toLocaleString() }),
      el('span', { className: 'what', textContent: v.label || REASONS[v.reason] || v.reason }),
      el('span', { className: 'sub who', textContent: v.authors.length ? `by ${sentence(v.authors.map(nameOf))}` : '' }),
      el('button', { type: 'button', className: 'compare-version', textContent: 'Compare', onclick: () => show(v) }),
      el('button', { type: 'button', className: 'restore-version', textContent: 'Restore', onclick: () => ask(v) }))))
    if (!versions.length) note.textContent = 'No versions yet: one is saved a few minutes after a change, or now with "Save version".'
    else if (note.textContent.startsWith('No versions')) note.textContent = ''
  }

  const content = async (v) => {
    const response = await t.request(`${api}/${v.id}`, { headers: { accept: 'application/json' } })
    if (!response.ok) throw new Error(response.status === 404 ? 'that version is gone' : `${response.status}`)
    return (await response.json()).content
  }

  // Side by side: the version's SQL and title, and today's; lines only one side has are marked.
  const show = async (v) => {
    try {
      const then = await content(v)
      const now = current()
      const side = (heading, title, sql, other) => {
        const others = new Set(String(other).split('\n'))
        return el('div', { className: 'side' },
          el('h3', { textContent: heading }),
          el('p', { className: 'title-line', textContent: title || '(no title)' }),
          el('pre', {}, ...String(sql).split('\n').map((line) => el('span', { className: others.has(line) ? 'same' : 'changed', textContent: `${line}\n` }))))
      }
      compare.replaceChildren(
        side(`Version of ${new Date(v.at).toLocaleString()}`, then?.title, then?.query ?? '', now.query),
        side('Now', now.title, now.query, then?.query ?? ''),
        el('button', { type: 'button', textContent: 'Close comparison', onclick: () => { compare.hidden = true } }))
      compare.hidden = false
    } catch (err) {
      note.textContent = `Could not compare: ${err.message}`
    }
  }

  // "Bob and Eve edited this query after that version": whoever the versions after it name,
  // and whoever changed it since the newest, but the user themself.
  const ask = async (v) => {
    // Who changed it is read again now: someone may have typed since the list was loaded.
    await refresh()
    const later = versions.filter((other) => other.id > v.id).flatMap((other) => other.authors)
    const people = [...new Set([...later, ...unversioned].map(String))].filter((id) => id !== String(session.user)).map(nameOf)
    const warning = people.length
      ? `${sentence(people)} edited this query after that version: restoring replaces their changes.`
      : 'Restoring replaces the changes made since that version.'
    confirm.replaceChildren(
      el('p', { id: 'restore-warning', textContent: warning }),
      el('button', { type: 'button', id: 'restore-confirmed', textContent: 'Restore', onclick: () => restore(v) }),
      el('button', { type: 'button', textContent: 'Cancel', onclick: () => { confirm.hidden = true } }))
    confirm.hidden = false
    confirm.querySelector('#restore-confirmed').focus()
  }

  const restore = async (v) => {
    confirm.hidden = true
    const response = await t.request(`${api}/${v.id}/restore`, { method: 'POST' })
    if (response.ok) {
      const body = await response.json()
      note.textContent = `Restored the version of ${new Date(v.at).toLocaleString()}; to undo, restore "before a restore" (${new Date(body.before.at).toLocaleTimeString()}).`
    } else {
      const body = await response.json().catch(() => ({}))
      note.textContent = `Restore failed: ${body.message || response.status}`
    }
    refresh()
  }

  save.addEventListener('click', async () => {
    const response = await t.request(api, { method: 'POST', json: { label: label.value } })
    if (response.ok) {
      label.value = ''
      note.textContent = 'Version saved.'
    } else {
      const body = await response.json().catch(() => ({}))
      note.textContent = `Not saved: ${body.message || response.status}`
    }
    refresh()
  })

  /**
   * After this tab edited offline since `since` (ms) and the merge with the server brought in
   * others' changes: says who made them ("Merged with changes by Bob while you were offline")
   * with a link comparing the newest version from before `since` with the query now.
   */
  const merged = async (since) => {
    await refresh()
    const during = versions.filter((v) => Date.parse(v.at) >= since).flatMap((v) => v.authors)
    const people = [...new Set([...during, ...unversioned].map(String))].filter((id) => id !== String(session.user)).map(nameOf)
    const before = versions.find((v) => Date.parse(v.at) < since)
    const banner = el('p', { className: 'banner merged', id: 'merged-banner', role: 'status' },
      `Merged with changes by ${people.length ? sentence(people) : 'others'} while you were offline`)
    if (before) {
      banner.append(' — ', el('button', { type: 'button', className: 'link', id: 'merged-compare', textContent: 'compare', onclick: () => show(before) }))
    }
    banner.append(el('button', { type: 'button', className: 'link', textContent: 'dismiss', onclick: () => banner.remove() }))
    card.querySelector('#merged-banner')?.remove()
    card.insertBefore(banner, card.children[1])
    return banner
  }

  refresh()
  return { card, refresh, merged }
}
