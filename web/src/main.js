// The browser dashboard of Tandem: who's online, the activity feed, notifications, chat badges,
// the queries with who is in each, and the collaborative query editor. This module signs in and
// shows the page the path names:
// - session.js: signing in and expired tokens; status.js: the connection indicator and the
//   retry rules; live.js: the dashboard connection (socket, long-poll fallback);
//   activity.js: idle detection;
// - dashboard.js: the dashboard's widgets; editor.js: the query editor; poller.js: document
//   sync over HTTP for degraded mode; util.js: the DOM helpers.
import { $, safeDecode } from './util.js'
import { signIn, tokenListeners } from './session.js'
import { Live } from './live.js'
import { watchActivity } from './activity.js'
import { dashboard, describe, toast } from './dashboard.js'
import { editor } from './editor.js'

let started = false

/** Connects as `session` and shows the page its path names (once). */
function start (session) {
  if (started) return
  started = true
  $('#me').textContent = `Signed in as ${session.name}`
  $('#connection').hidden = false
  const live = new Live(session)
  addEventListener('online', () => live.reconnectNow())
  tokenListeners.add(() => live.reconnectNow())
  watchActivity(live)
  // A hidden tab shows its user as idle.
  document.addEventListener('visibilitychange', () => {
    live.setPresence({ status: document.hidden ? 'idle' : 'online' })
  })
  live.on((event) => {
    if (['query_completed', 'query_failed', 'agent_executed', 'approval_request', 'new_chat_message', 'new_chat_session', 'system_alert', 'workflow_triggered'].includes(event.type)) {
      toast(describe(event))
    }
  })
  const match = location.pathname.match(/^\/queries\/([^/]+)$/)
  const queryId = match && safeDecode(match[1])
  if (queryId) {
    editor(session, live, queryId)
    live.connect()
  } else {
    dashboard(session, live)
  }
}

const session = await signIn({ start, started: () => started })
if (session) start(session)
