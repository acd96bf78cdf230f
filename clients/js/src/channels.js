// The dashboard's channels and which event type goes through which (as the server's
// catalogue has them).

/** Every channel of the live dashboard. */
export const CHANNELS = ['presence', 'queries', 'agents', 'approvals', 'chat_sessions', 'notifications', 'activity', 'system', 'workflows']

const TYPE_CHANNEL = {
  query_started: 'queries',
  query_completed: 'queries',
  query_failed: 'queries',
  agent_executed: 'agents',
  approval_request: 'approvals',
  approval_decided: 'approvals',
  new_chat_message: 'chat_sessions',
  new_chat_session: 'chat_sessions',
  chat_badges: 'chat_sessions',
  system_alert: 'system',
  workflow_triggered: 'workflows',
  query_executed: 'activity',
  template_created: 'activity',
  agent_triggered: 'activity',
  file_uploaded: 'activity',
  presence_update: 'presence',
  editing: 'presence',
  lock_acquired: 'presence',
  lock_released: 'presence'
}

/** The channel an event of `type` comes through (`undefined` for a type this client does not know). */
export const channelOf = (type) => TYPE_CHANNEL[type]

/** The server's own presence-channel events, which are not notifications. */
const SERVER_TYPES = new Set(['presence_update', 'editing', 'lock_acquired', 'lock_released'])

/** Whether `event` is one a user is notified of: every published event but the activity feed's. */
export const isNotification = (event) => typeof event.id === 'number' && typeof event.type === 'string' &&
  !SERVER_TYPES.has(event.type) && channelOf(event.type) !== 'activity' && event.type !== 'chat_badges'

/** Whether `event` goes to a subscriber of `channels` (a set): its type's channel, or `notifications` for an event addressed to users. */
export function matches (channels, event) {
  if (channels.has('*')) return true
  const channel = channelOf(event.type)
  if (channel && channels.has(channel)) return true
  return channels.has('notifications') && Array.isArray(event.user_ids) && isNotification(event)
}
