// Drive a real @hocuspocus/provider against a scripted raw ws server to see how
// the provider reacts to server frames (Ping, QueryAwareness, CLOSE, SyncStatus 0)
// and to WebSocket close codes (does it reconnect?).
// Run: cd docs/hocuspocus-capture && node provider-behaviour.mjs > provider-behaviour.log 2>&1
import { HocuspocusProvider, HocuspocusProviderWebsocket } from "@hocuspocus/provider";
import WebSocket, { WebSocketServer } from "ws";
import * as Y from "yjs";
import * as encoding from "lib0/encoding";
import { hex, annotate } from "./decode.mjs";

const PORT = Number(process.env.HP_PORT2 ?? 18235);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const t0 = Date.now();
const log = (...a) => console.log(`[${String(Date.now() - t0).padStart(5)}ms]`, ...a);
const NAME = "docs/alpha";

const frame = (fn) => {
	const e = encoding.createEncoder();
	encoding.writeVarString(e, NAME);
	fn(e);
	return encoding.toUint8Array(e);
};
const F = {
	authenticated: (scope) => frame((e) => { encoding.writeVarUint(e, 2); encoding.writeVarUint(e, 2); encoding.writeVarString(e, scope); }),
	queryAwareness: () => frame((e) => encoding.writeVarUint(e, 3)),
	stateless: (s) => frame((e) => { encoding.writeVarUint(e, 5); encoding.writeVarString(e, s); }),
	syncStatus: (v) => frame((e) => { encoding.writeVarUint(e, 8); encoding.writeVarUint(e, v); }),
	close: (reason) => frame((e) => { encoding.writeVarUint(e, 7); encoding.writeVarString(e, reason); }),
	unknown42: () => frame((e) => encoding.writeVarUint(e, 42)),
};

// Plan per connection number: which close code to use after the scripted part.
const closeCodes = [4401, 4403, 4205, 1009, 4408, 1000];
let connNo = 0;
const wss = new WebSocketServer({ host: "127.0.0.1", port: PORT });
wss.on("connection", async (ws) => {
	const n = ++connNo;
	log(`srv: connection #${n}`);
	ws.on("message", (d) => {
		const u = new Uint8Array(d);
		log(`#${n} C->S ${hex(u)}    ${annotate(u)}`);
	});
	const send = (u) => {
		log(`#${n} S->C ${hex(u)}    ${annotate(u)}`);
		ws.send(u);
	};
	await sleep(150);
	if (n === 1) {
		send(F.authenticated("readonly"));
		await sleep(100);
		send(new Uint8Array([9])); // bare app-level Ping
		await sleep(100);
		send(F.queryAwareness());
		await sleep(100);
		send(F.stateless("from-server"));
		await sleep(100);
		send(F.syncStatus(0));
		await sleep(100);
		send(F.unknown42());
		await sleep(100);
		send(F.close("bye from server"));
		await sleep(300);
		log("--- (after CLOSE message) local edit on provider: what does it send?");
		provider.document.getText("t").insert(0, "a");
		await sleep(300);
	}
	const code = closeCodes[n - 1];
	if (code !== undefined) {
		log(`srv: closing #${n} with code ${code}`);
		ws.close(code, `test-${code}`);
	}
});

const doc = new Y.Doc();
doc.clientID = 5005;
const socket = new HocuspocusProviderWebsocket({ url: `ws://127.0.0.1:${PORT}`, WebSocketPolyfill: WebSocket });
socket.on("status", ({ status }) => log(`socket event status=${status}`));
const provider = new HocuspocusProvider({ websocketProvider: socket, name: NAME, document: doc, token: "secret-token" });
for (const ev of ["synced", "authenticated", "authenticationFailed", "unsyncedChanges", "stateless", "close", "disconnect", "connect"]) {
	provider.on(ev, (p) => log(`provider event ${ev} ${JSON.stringify(p ?? {}, (k, v) => (k === "event" ? { code: v.code, reason: v.reason } : v))}`));
}
provider.attach();
await sleep(9000);
log(`total connections seen by server in ~9s: ${connNo}`);
provider.destroy();
socket.destroy();
wss.close();
await sleep(100);
process.exit(0);
