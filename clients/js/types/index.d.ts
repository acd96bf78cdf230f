// Type declarations of @tandem/client (hand-written; `npm run check-types` checks them and
// test/types.ts against them).

import type * as Y from 'yjs'
import type { Awareness } from 'y-protocols/awareness'
import type { WebsocketProvider } from 'y-websocket'

/** The connection's state, as a user should be told it. */
export type Status = 'connecting' | 'connected' | 'reconnecting' | 'degraded' | 'signed-out' | 'offline'

export interface StatusDetail {
  /** When the next attempt is due (ms since the epoch), while reconnecting or offline. */
  nextRetryAt?: number
}

export type Channel = 'presence' | 'queries' | 'agents' | 'approvals' | 'chat_sessions' | 'notifications' | 'activity' | 'system' | 'workflows'

export const CHANNELS: readonly Channel[]
export function channelOf (type: string): Channel | undefined

/** An event as the server delivers it: the published object with its `id` and `timestamp`. */
export interface TandemEvent {
  id: number
  type: string
  timestamp?: string
  user_ids?: Array<string | number>
  [field: string]: unknown
}

export interface PresenceFields {
  /** What the server takes: `online`, `idle` or `offline` (to appear offline). */
  status?: 'online' | 'idle' | 'offline'
  current_page?: string
  workspace?: string
  name?: string
  avatar?: string
  color?: string
}

export interface PresenceUser extends PresenceFields {
  user_id: string | number
  status: 'online' | 'idle' | 'offline'
  last_active?: string
  last_seen?: string
}

export interface EditingUser {
  user_id: string | number
  name?: string
  /** Changed their awareness lately (typing, moving the cursor). */
  active?: boolean
}

export interface EditingDocument {
  document: string
  query_id?: string | number
  users: EditingUser[]
}

export interface TandemOptions {
  /** The server, `http(s)://host:port` (`location.origin` by default). */
  url?: string
  /** A token; with `getToken` too, the first one. */
  token?: string
  /** Called for a token at start, when the server refuses one (4401, 401), and a minute before one expires. */
  getToken?: () => string | Promise<string>
  /** The workspace, for a server without authentication (a token names its own). */
  workspace?: string
  /** This tab's first presence. */
  presence?: PresenceFields
  /** Idle after the server's `idle_after_ms` without input, and while the tab is hidden (default true, in a browser). */
  idleDetection?: boolean
  /** Tabs of one browser share one dashboard connection (default true where Web Locks and BroadcastChannel exist). */
  shareConnection?: boolean
  /** y-indexeddb's `IndexeddbPersistence`: documents are stored in the browser for offline work. */
  offline?: new (name: string, doc: Y.Doc) => { destroy (): unknown }
  /** How many notifications and activity events are loaded at start (default 30). */
  historyLimit?: number
  /** A WebSocket implementation (in Node, the `ws` package's). */
  WebSocket?: unknown
  /** A fetch implementation. */
  fetch?: typeof globalThis.fetch
}

type Unsubscribe = () => void

interface Events {
  on (name: string, handler: (...args: any[]) => void): Unsubscribe
  off (name: string, handler: (...args: any[]) => void): void
}

export interface Presence extends Events {
  on (name: 'change', handler: (users: PresenceUser[], changed: PresenceUser | null) => void): Unsubscribe
  /** This tab turned idle (no input for the server's idle time), or active again. */
  on (name: 'idle' | 'active', handler: () => void): Unsubscribe
  /** Changes this tab's presence (merged with the user's other tabs: online when any is). */
  set (fields: PresenceFields): void
  list (): PresenceUser[]
  get (userId: string | number): PresenceUser | undefined
}

export declare class LockHandle implements Events {
  readonly resource: string
  readonly state: 'pending' | 'held' | 'denied' | 'released'
  readonly held: boolean
  /** Who holds it, when denied (and the caller, when held). */
  readonly holder: { user_id: string | number, name?: string } | null
  readonly expiresAt: string | null
  on (name: 'change' | 'lost' | 'available', handler: (handle: LockHandle) => void): Unsubscribe
  on (name: string, handler: (...args: any[]) => void): Unsubscribe
  off (name: string, handler: (...args: any[]) => void): void
  release (): void
  retry (): void
}

export interface Locks {
  /** Resolves once the server answered (held, or denied with the holder), or after `timeoutMs` still pending (it keeps asking). */
  acquire (resource: string, options?: { timeoutMs?: number }): Promise<LockHandle>
}

export interface Feed extends Events {
  /** Oldest first, at most 200. */
  readonly items: TandemEvent[]
  on (name: 'change', handler: (items: TandemEvent[], added: TandemEvent | null) => void): Unsubscribe
  on (name: 'event', handler: (event: TandemEvent) => void): Unsubscribe
}

export interface Notifications extends Feed {
  readonly unread: number
  isUnread (event: TandemEvent): boolean
  /** Marks everything up to `id` (the newest by default) read, in every tab of this browser. */
  markRead (id?: number): void
}

export interface Badges extends Events {
  /** Unread messages per chat session. */
  readonly unread: Record<string, number>
  readonly total: number
  on (name: 'change', handler: (unread: Record<string, number>, total: number) => void): Unsubscribe
  markRead (sessionId: string | number): Promise<void>
}

export interface Editing extends Events {
  on (name: 'change', handler: (document: string | null, users: EditingUser[] | null) => void): Unsubscribe
  usersOf (document: string): EditingUser[]
  list (): EditingDocument[]
}

export interface Preferences extends Events {
  /** Event type → pushed in real time (`false`: muted). */
  readonly realtime: Record<string, boolean>
  load (): Promise<Record<string, boolean>>
  /** Changes the types named; resolves to all of them once stored. */
  set (realtime: Record<string, boolean>): Promise<Record<string, boolean>>
  on (name: 'change', handler: (realtime: Record<string, boolean>) => void): Unsubscribe
}

export interface Approvals {
  /** Decides on an approval request: an `approval_decided` event (with who decided); resolves to its id. */
  decide (approvalId: string | number, decision: 'approved' | 'denied', options?: { comment?: string }): Promise<number>
}

export interface DocOptions {
  ydoc?: Y.Doc
  /** Overrides `TandemOptions.offline` for this document (`null`: not stored). */
  offline?: TandemOptions['offline'] | null
  /** The awareness `user` field: `{ name, color, colorLight }`. */
  user?: Record<string, unknown>
}

export declare class TandemDoc implements Events {
  readonly name: string
  readonly ydoc: Y.Doc
  readonly awareness: Awareness
  readonly provider: WebsocketProvider
  readonly status: Exclude<Status, 'signed-out'> | 'signed-out'
  readonly readOnly: boolean
  readonly synced: boolean
  readonly whenSynced: Promise<void>
  readonly editing: EditingUser[]
  on (name: 'status', handler: (status: Status, detail: StatusDetail) => void): Unsubscribe
  on (name: 'synced' | 'read-only' | 'destroyed', handler: () => void): Unsubscribe
  on (name: 'offline-merge', handler: (info: { since: number }) => void): Unsubscribe
  on (name: 'editing', handler: (users: EditingUser[]) => void): Unsubscribe
  on (name: string, handler: (...args: any[]) => void): Unsubscribe
  off (name: string, handler: (...args: any[]) => void): void
  setUser (user: Record<string, unknown>): void
  destroy (): void
}

export declare class Tandem implements Events {
  constructor (options: TandemOptions)
  readonly url: string
  readonly status: Status
  readonly statusDetail: StatusDetail
  /** The user the token names (its `sub`). */
  readonly user: string | null
  readonly workspace: string | null
  /** The last event delivered. */
  readonly lastId: number
  /** Resolves once the client loaded its history and is connecting. */
  readonly ready: Promise<void>
  readonly presence: Presence
  readonly locks: Locks
  readonly badges: Badges
  readonly notifications: Notifications
  readonly activity: Feed
  readonly editing: Editing
  readonly preferences: Preferences
  readonly approvals: Approvals
  on (name: 'status', handler: (status: Status, detail: StatusDetail) => void): Unsubscribe
  on (name: 'resync' | 'leader', handler: () => void): Unsubscribe
  on (name: 'token', handler: (token: string) => void): Unsubscribe
  on (name: 'server-error', handler: (frame: { type: 'error', code: string, message: string }) => void): Unsubscribe
  on (name: string, handler: (...args: any[]) => void): Unsubscribe
  off (name: string, handler: (...args: any[]) => void): void
  /** Events of `channels` (or `'*'`), in id order and each once; returns the unsubscribe function. */
  subscribe (channels: Channel | '*' | Array<Channel | '*'>, handler: (event: TandemEvent) => void): Unsubscribe
  doc (name: string, options?: DocOptions): TandemDoc
  /** `fetch` on the server with the token (a 401 renews it and tries once more). */
  request (path: string, init?: { method?: string, json?: unknown, headers?: Record<string, string>, body?: BodyInit, signal?: AbortSignal }): Promise<Response>
  setToken (token: string): void
  reconnectNow (): void
  destroy (): void
}

export function createTandem (options: TandemOptions): Tandem

export function devToken (url: string, name: string, options?: { fetch?: typeof globalThis.fetch }): Promise<{ token: string, user: string, name: string, workspace: string }>

export function claimsOf (token: string): Record<string, unknown>

export function backoff (failures: number, random?: () => number): number
export const BACKOFF_MAX_MS: number
export const DEGRADED_AFTER_FAILURES: number
export const POLL_MIN_MS: number
export const POLL_MAX_MS: number
