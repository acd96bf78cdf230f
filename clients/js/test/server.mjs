// A real Tandem server for the tests: the binary named by TANDEM_BIN (the Rust test suite sets
// it; `cargo build` makes ../../target/debug/tandem), on a free loopback port, with its own
// data directory; stopped and started again on the same port by the restart tests.

import { spawn } from 'node:child_process'
import { createHmac, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

const BIN = process.env.TANDEM_BIN ?? resolve(import.meta.dirname, '../../../target/debug/tandem')

export function freePort () {
  return new Promise((ok, fail) => {
    const server = createServer()
    server.on('error', fail)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => ok(port))
    })
  })
}

export class Server {
  /** `secret`: tokens are checked (HS256); without it the server runs in open mode. */
  static async start ({ secret = null, args = [] } = {}) {
    const server = new Server(await freePort(), secret, args)
    await server.up()
    return server
  }

  constructor (port, secret, args) {
    this.port = port
    this.secret = secret
    this.args = args
    this.dir = mkdtempSync(join(tmpdir(), 'tandem-client-'))
    this.url = `http://127.0.0.1:${port}`
    this.child = null
  }

  async up () {
    const args = ['serve', '--bind', `127.0.0.1:${this.port}`, '--data-dir', this.dir, '--log-format', 'json', ...this.args]
    if (this.secret) args.push('--auth-secret', this.secret, '--auth-leeway-secs', '0')
    this.child = spawn(BIN, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } })
    this.log = ''
    this.child.stderr.on('data', (chunk) => { this.log = (this.log + chunk).slice(-20000) })
    const exited = new Promise((resolve) => this.child.once('exit', resolve))
    for (let i = 0; i < 300; i++) {
      if (this.child.exitCode !== null) throw new Error(`the server exited: ${this.log}`)
      try {
        if ((await fetch(`${this.url}/readyz`)).ok) return
      } catch {}
      await Promise.race([sleep(50), exited])
    }
    throw new Error(`the server did not start: ${this.log}`)
  }

  /** Stops the server (`SIGKILL` or a graceful `SIGTERM`). */
  async down (signal = 'SIGTERM') {
    const child = this.child
    if (!child || child.exitCode !== null) return
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.kill(signal)
    await exited
  }

  async restart (signal = 'SIGTERM') {
    await this.down(signal)
    await this.up()
  }

  async stop () {
    await this.down('SIGKILL')
    rmSync(this.dir, { recursive: true, force: true })
  }

  /** A token for `sub` (HS256 with the server's secret), valid `ttl` seconds. */
  token (sub, { name = sub, workspace = 'acme', ttl = 3600, role, docs } = {}) {
    const now = Math.floor(Date.now() / 1000)
    const claims = { sub, name, workspace, plan: 'scale', iat: now, exp: now + ttl, jti: randomBytes(6).toString('hex') }
    if (role) claims.role = role
    if (docs) claims.docs = docs
    const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url')
    const body = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`
    return `${body}.${createHmac('sha256', this.secret).update(body).digest('base64url')}`
  }

  /** Publishes `event` as a backend does; resolves to its id. */
  async publish (event, workspace = 'acme') {
    const headers = { 'content-type': 'application/json' }
    let path = '/api/v1/events'
    if (this.secret) headers.authorization = `Bearer ${this.token('backend', { role: 'service', workspace })}`
    else path += `?workspace=${encodeURIComponent(workspace)}`
    const response = await fetch(`${this.url}${path}`, { method: 'POST', headers, body: JSON.stringify(event) })
    if (response.status !== 201) throw new Error(`publish answered ${response.status}: ${await response.text()}`)
    return (await response.json()).id
  }
}

/** Resolves once `check()` is truthy (polled every 25 ms), or fails after `ms` saying `what`. */
export async function until (check, what, ms = 20000) {
  const end = Date.now() + ms
  for (;;) {
    const value = await check()
    if (value) return value
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(25)
  }
}

export const secret = () => randomBytes(24).toString('hex')
