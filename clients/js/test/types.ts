// Compiled by `npm run check-types` (tsc --noEmit), never run: the README's examples, typed.
import * as Y from 'yjs'
import { createTandem, devToken, type Status, type TandemEvent } from '@tandem/client'

async function example (): Promise<void> {
  const { token } = await devToken('http://localhost:8000', 'Ada')
  const t = createTandem({ url: 'http://localhost:8000', token, getToken: async () => token })
  t.on('status', (status: Status, detail) => console.log(status, detail.nextRetryAt))
  const stop = t.subscribe(['queries', 'chat_sessions'], (event: TandemEvent) => console.log(event.id, event.type))
  t.on('resync', () => console.log('reload'))
  t.presence.set({ status: 'online', current_page: '/queries/1', name: 'Ada', color: '#b91c1c' })
  t.presence.on('change', (users) => users.map((u) => u.status))
  const lock = await t.locks.acquire('default/queries/1#title')
  if (lock.held) lock.release()
  else console.log(lock.holder?.name)
  lock.on('lost', (handle) => console.log(handle.state))
  console.log(t.badges.total, t.badges.unread['999'], t.notifications.unread)
  await t.badges.markRead(999)
  t.notifications.markRead()
  const decided: number = await t.approvals.decide(42, 'approved', { comment: 'ok' })
  console.log(decided)
  const muted: Record<string, boolean> = await t.preferences.set({ agent_executed: false })
  console.log(muted.agent_executed, (await t.preferences.load()).query_completed)
  const doc = t.doc('default/queries/1', { user: { name: 'Ada', color: '#b91c1c' } })
  const text: Y.Text = doc.ydoc.getText('query')
  await doc.whenSynced
  text.insert(0, 'SELECT 1')
  doc.on('status', (status) => console.log(status))
  console.log(doc.editing.map((u) => u.name), doc.awareness.getStates().size)
  stop()
  t.destroy()
}
void example
