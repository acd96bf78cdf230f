// Hocuspocus with its defaults (no extensions, no persistence), for the comparison.
// usage: PORT=1235 node hocuspocus.mjs
import { Server } from '@hocuspocus/server'

const port = Number(process.env.PORT || 1235)
const server = new Server({ port, address: '127.0.0.1', quiet: true })
await server.listen()
console.log(`hocuspocus listening on 127.0.0.1:${port}`)
