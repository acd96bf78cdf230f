// A small editor page on @hocuspocus/provider: a textarea bound to the Y.Text "query" of one
// document, as a Tiptap app would bind its editor. Bundled by hocuspocus.mjs (esbuild) and
// loaded into a blank page; window.tandemHp drives it.
import * as Y from 'yjs'
import { HocuspocusProvider, HocuspocusProviderWebsocket } from '@hocuspocus/provider'

window.tandemHp = {
  start (url, name, token, user) {
    const doc = new Y.Doc()
    const text = doc.getText('query')
    const area = document.createElement('textarea')
    area.id = 'editor'
    area.setAttribute('aria-label', 'query')
    document.body.append(area)
    const socket = new HocuspocusProviderWebsocket({ url })
    const provider = new HocuspocusProvider({ websocketProvider: socket, name, document: doc, token })
    provider.attach()
    provider.setAwarenessField('user', { name: user, color: '#30bced' })
    // The document into the textarea, and each local change as a diff (never the whole text).
    text.observe(() => { if (area.value !== text.toString()) area.value = text.toString() })
    area.addEventListener('input', () => {
      const now = area.value
      const was = text.toString()
      let start = 0
      while (start < now.length && start < was.length && now[start] === was[start]) start++
      let end = 0
      while (end < now.length - start && end < was.length - start &&
        now[now.length - 1 - end] === was[was.length - 1 - end]) end++
      doc.transact(() => {
        text.delete(start, was.length - start - end)
        text.insert(start, now.slice(start, now.length - end))
      })
    })
    this.provider = provider
    this.text = text
  },
  synced () { return this.provider?.synced === true },
  unsynced () { return this.provider?.unsyncedChanges },
  value () { return this.text?.toString() },
  peers () {
    const states = [...this.provider.awareness.getStates().entries()]
    return states.filter(([id]) => id !== this.provider.awareness.clientID).map(([, s]) => s?.user?.name).filter(Boolean)
  }
}
