// A page of a team's own app on @tandem/client: who is online, live notifications, and query 1
// edited together in CodeMirror. Open it as /?name=Ada (a server without authentication) or
// /?token=… (one that checks tokens); ?server= names the Tandem server.
import { createTandem, devToken } from '@tandem/client'
import { EditorView, basicSetup } from 'codemirror'
import { yCollab } from 'y-codemirror.next'

const params = new URLSearchParams(location.search)
const url = params.get('server') ?? 'http://localhost:8000'
const name = params.get('name') ?? 'Guest'
const token = params.get('token') ?? (await devToken(url, name)).token
const t = createTandem({ url, token, presence: { name, current_page: '/queries/1' } })

const $ = (selector) => document.querySelector(selector)
const item = (text) => Object.assign(document.createElement('li'), { textContent: text })

t.on('status', (status) => {
  $('#status').textContent = status
  $('#status').dataset.state = status
})

// Who is online: everyone's presence, live.
t.presence.on('change', (users) => {
  $('#online').replaceChildren(...users
    .filter((user) => user.status !== 'offline')
    .map((user) => item(`${user.name ?? user.user_id} (${user.status})`)))
})

// Notifications: the latest from the server's history, then live ones, each once.
t.notifications.on('change', (events) => {
  $('#notifications').replaceChildren(...events.slice(-10).reverse()
    .map((event) => item(event.message ?? `${event.type} ${event.query_id ?? ''}`)))
})

// The query, edited together: everyone's cursor and name in the editor.
const doc = t.doc(`${t.workspace}/queries/1`, { user: { name, color: '#1d4ed8', colorLight: '#1d4ed833' } })
const view = new EditorView({
  parent: $('#editor'),
  extensions: [basicSetup, yCollab(doc.ydoc.getText('query'), doc.awareness)]
})

window.example = { t, doc, view }
