// Capture real wire bytes between @hocuspocus/provider and @hocuspocus/server.
// Run: cd docs/hocuspocus-capture && npm ci && node capture.mjs > capture.log 2>&1
// Everything is on 127.0.0.1; the script exits by itself.
import { Server } from "@hocuspocus/server";
import { HocuspocusProvider, HocuspocusProviderWebsocket } from "@hocuspocus/provider";
import WebSocket from "ws";
import * as Y from "yjs";
import { readFileSync } from "node:fs";
import { hex, annotate } from "./decode.mjs";

const v = (p) => JSON.parse(readFileSync(new URL(`./node_modules/${p}/package.json`, import.meta.url))).version;
console.log(
	`# versions: @hocuspocus/provider ${v("@hocuspocus/provider")}, @hocuspocus/server ${v("@hocuspocus/server")}, @hocuspocus/common ${v("@hocuspocus/common")}, yjs ${v("yjs")}, y-protocols ${v("y-protocols")}, lib0 ${v("lib0")}, ws ${v("ws")}, node ${process.version}`,
);

const PORT = Number(process.env.HP_PORT ?? 18234);
const WSURL = `ws://127.0.0.1:${PORT}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const t0 = Date.now();
const log = (...a) => console.log(`[${String(Date.now() - t0).padStart(5)}ms]`, ...a);

// ---------------------------------------------------------------- server
const server = new Server({
	port: PORT,
	address: "127.0.0.1",
	quiet: true,
	stopOnSignals: false,
	async onAuthenticate({ token, documentName, connectionConfig, providerVersion }) {
		log(`server: onAuthenticate doc=${JSON.stringify(documentName)} token=${JSON.stringify(token)} providerVersion=${JSON.stringify(providerVersion)}`);
		if (token === "secret-token") return { user: "rw" };
		if (token === "readonly-token") {
			connectionConfig.readOnly = true;
			return { user: "ro" };
		}
		throw new Error("bad token"); // -> PermissionDenied "permission-denied"
	},
	async connected({ documentName, connection }) {
		log(`server: connected doc=${JSON.stringify(documentName)} address=${JSON.stringify(connection.messageAddress)}`);
		if (documentName === "docs/tokensync") connection.requestToken();
	},
	async onTokenSync({ token }) {
		log(`server: onTokenSync token=${JSON.stringify(token)}`);
	},
	async onStateless({ payload, connection, document }) {
		log(`server: onStateless payload=${JSON.stringify(payload)} (default server does NOT relay; this hook answers with connection.sendStateless)`);
		connection.sendStateless(`echo:${payload}`);
	},
	async onDisconnect({ documentName }) {
		log(`server: onDisconnect doc=${JSON.stringify(documentName)}`);
	},
});
await server.listen();
log(`server listening on ${WSURL}`);

// ------------------------------------------------------- logging socket
function loggingSocket(tag) {
	return class extends WebSocket {
		constructor(url, protocols) {
			super(url, protocols);
			this.addEventListener("message", (e) => {
				const d = new Uint8Array(e.data);
				log(`${tag} S->C ${hex(d)}    ${annotate(d)}`);
			});
			this.addEventListener("close", (e) => log(`${tag} socket close code=${e.code} reason=${JSON.stringify(e.reason)}`));
			this.addEventListener("open", () => log(`${tag} socket open`));
		}
		send(data) {
			const d = new Uint8Array(data);
			log(`${tag} C->S ${hex(d)}    ${annotate(d)}`);
			super.send(data);
		}
	};
}

function mkDoc(clientID) {
	const d = new Y.Doc();
	d.clientID = clientID; // deterministic bytes (Awareness is created later by the provider)
	return d;
}

function watch(p, tag) {
	p.on("synced", ({ state }) => log(`${tag} event synced state=${state}`));
	p.on("authenticated", ({ scope }) => log(`${tag} event authenticated scope=${scope}`));
	p.on("authenticationFailed", ({ reason }) => log(`${tag} event authenticationFailed reason=${reason}`));
	p.on("unsyncedChanges", ({ number }) => log(`${tag} event unsyncedChanges=${number}`));
	p.on("stateless", ({ payload }) => log(`${tag} event stateless payload=${payload}`));
	p.on("close", ({ event }) => log(`${tag} event close code=${event.code} reason=${event.reason}`));
	p.on("disconnect", ({ event }) => log(`${tag} event disconnect code=${event.code}`));
}

// ============ Scenario 1: plain name (sessionAwareness=false, the default)
log("=== S1: provider, name docs/alpha, token secret-token, clientID 1001, plain names");
const wsA = new HocuspocusProviderWebsocket({ url: WSURL, WebSocketPolyfill: loggingSocket("S1") });
const p1 = new HocuspocusProvider({ websocketProvider: wsA, name: "docs/alpha", document: mkDoc(1001), token: "secret-token" });
watch(p1, "S1");
p1.attach();
await sleep(600);
log("--- S1: Y.Text('content').insert(0, 'hi')");
p1.document.getText("content").insert(0, "hi");
await sleep(300);
log("--- S1: setAwarenessField('user', {name:'alice'})");
p1.setAwarenessField("user", { name: "alice" });
await sleep(300);
log("--- S1: sendStateless('hello')");
p1.sendStateless("hello");
await sleep(300);
log("--- S1: p1.destroy() (shared socket stays open)");
p1.destroy();
await sleep(400);
log(`S1 socket still open? readyState=${wsA.webSocket?.readyState}`);
wsA.destroy();
await sleep(300);

// ============ Scenario 2: session-aware multiplexing, same document twice on one socket
log("=== S2: two sessionAwareness providers on ONE socket, both docs/alpha: rw (sessionId rwsess1, clientID 2001) + readonly (sessionId rosess2, clientID 2002)");
const wsB = new HocuspocusProviderWebsocket({ url: WSURL, WebSocketPolyfill: loggingSocket("S2") });
const pRW = new HocuspocusProvider({ websocketProvider: wsB, name: "docs/alpha", document: mkDoc(2001), token: "secret-token", sessionAwareness: true });
pRW.sessionId = "rwsess1";
const pRO = new HocuspocusProvider({ websocketProvider: wsB, name: "docs/alpha", document: mkDoc(2002), token: "readonly-token", sessionAwareness: true });
pRO.sessionId = "rosess2";
watch(pRW, "S2/rw");
watch(pRO, "S2/ro");
pRW.attach();
pRO.attach();
await sleep(700);
log("--- S2: rw inserts 'X' at 0");
pRW.document.getText("content").insert(0, "X");
await sleep(300);
log("--- S2: readonly inserts 'Z' at 0 (server must refuse)");
pRO.document.getText("content").insert(0, "Z");
await sleep(300);
log(`S2 ro unsyncedChanges=${pRO.unsyncedChanges} hasUnsyncedChanges=${pRO.hasUnsyncedChanges}`);
pRO.destroy();
pRW.destroy();
await sleep(300);
wsB.destroy();
await sleep(300);

// ============ Scenario 3: wrong token
log("=== S3: wrong token 'bad-token', clientID 3001");
const wsC = new HocuspocusProviderWebsocket({ url: WSURL, WebSocketPolyfill: loggingSocket("S3") });
const p3 = new HocuspocusProvider({ websocketProvider: wsC, name: "docs/alpha", document: mkDoc(3001), token: "bad-token" });
watch(p3, "S3");
p3.attach();
await sleep(700);
log(`S3 after denial: socket readyState=${wsC.webSocket?.readyState} isAuthenticated=${p3.isAuthenticated} synced=${p3.synced}`);
p3.destroy();
wsC.destroy();
await sleep(300);

// ============ Scenario 4: server-initiated token sync request
log("=== S4: doc docs/tokensync: server calls connection.requestToken() in connected hook");
const wsD = new HocuspocusProviderWebsocket({ url: WSURL, WebSocketPolyfill: loggingSocket("S4") });
const p4 = new HocuspocusProvider({ websocketProvider: wsD, name: "docs/tokensync", document: mkDoc(4001), token: "secret-token", awareness: null });
watch(p4, "S4");
p4.attach();
await sleep(700);
p4.destroy();
wsD.destroy();
await sleep(300);

// ============ Scenario 6: two sockets on docs/gamma: fan-out to another client, late joiner sync, abrupt disconnect
log("=== S6: two separate sockets on docs/gamma (A clientID 6001 'secret-token', B clientID 6002 'secret-token')");
const wsE = new HocuspocusProviderWebsocket({ url: WSURL, WebSocketPolyfill: loggingSocket("S6A") });
const pA = new HocuspocusProvider({ websocketProvider: wsE, name: "docs/gamma", document: mkDoc(6001), token: "secret-token" });
watch(pA, "S6A");
pA.attach();
await sleep(400);
pA.document.getText("content").insert(0, "abc");
pA.setAwarenessField("user", "A");
await sleep(300);
log("--- S6: B joins (server already has content + A's awareness)");
const wsF = new HocuspocusProviderWebsocket({ url: WSURL, WebSocketPolyfill: loggingSocket("S6B") });
const pB = new HocuspocusProvider({ websocketProvider: wsF, name: "docs/gamma", document: mkDoc(6002), token: "secret-token" });
watch(pB, "S6B");
pB.attach();
await sleep(500);
log("--- S6: B inserts 'Q' at 3 -> A receives the update");
pB.document.getText("content").insert(3, "Q");
await sleep(300);
log("--- S6: A's socket is dropped without CLOSE (terminate) -> B should get awareness removal");
wsE.webSocket.terminate();
wsE.shouldConnect = false;
await sleep(500);
pA.destroy(); wsE.destroy();
pB.destroy(); wsF.destroy();
await sleep(300);

// ============ Scenario 5: raw frames against the real server
log("=== S5: raw ws client against the real server");
const { encodeRaw } = await import("./raw.mjs");
async function rawSession(tag, frames, waitMs = 400) {
	const ws = new WebSocket(WSURL);
	ws.binaryType = "arraybuffer";
	ws.on("message", (d) => {
		const u = new Uint8Array(d);
		log(`${tag} S->C ${hex(u)}    ${annotate(u)}`);
	});
	let closed = null;
	ws.on("close", (code, reason) => {
		closed = { code, reason: reason.toString() };
		log(`${tag} socket close code=${code} reason=${JSON.stringify(reason.toString())}`);
	});
	await new Promise((r) => ws.on("open", r));
	for (const f of frames) {
		if (typeof f === "number") {
			await sleep(f);
			continue;
		}
		log(`${tag} C->S ${hex(f)}    ${annotate(f)}`);
		ws.send(f);
	}
	await sleep(waitMs);
	if (!closed) ws.close();
	await sleep(100);
}
const R = encodeRaw;
log("--- S5a: sync step1 + query awareness sent BEFORE auth, then auth (queued & replayed?)");
await rawSession("S5a", [R.syncStep1("docs/raw"), R.queryAwareness("docs/raw"), 100, R.auth("docs/raw", "secret-token")]);
log("--- S5b: bare Pong byte 0x0a sent to real server");
await rawSession("S5b", [R.auth("docs/raw", "secret-token"), 200, new Uint8Array([10])]);
log("--- S5c: bare Ping byte 0x09 sent to real server");
await rawSession("S5c", [R.auth("docs/raw", "secret-token"), 200, new Uint8Array([9])]);
log("--- S5d: auth then CLOSE(7) then re-auth on the same socket (re-open doc)");
await rawSession("S5d", [R.auth("docs/raw", "secret-token"), R.syncStep1("docs/raw"), 200, R.close("docs/raw"), 200, R.auth("docs/raw", "secret-token"), R.syncStep1("docs/raw")]);
log("--- S5e: auth without provider version (v3 style), awareness from clientID 77, and a BroadcastStateless(6) from a client");
await rawSession("S5e", [R.authV3("docs/raw", "secret-token"), 200, R.awareness("docs/raw", 77, 1, { u: 1 }), 200, R.broadcastStateless("docs/raw", "x")]);
log("--- S5f: wrong token, then retry with right token on the same socket");
await rawSession("S5f", [R.auth("docs/raw", "nope"), 200, R.auth("docs/raw", "secret-token"), R.syncStep1("docs/raw")]);
log("--- S5g: session-aware key on raw client + plain key on same socket (fallback routing)");
await rawSession("S5g", [R.auth("docs/raw", "secret-token"), 200, R.auth("docs/raw\u0000sessX", "secret-token"), 200, R.syncStep1("docs/raw\u0000sessX")]);
log("--- S5h: Sync message with unknown sub type 9 after auth");
await rawSession("S5h", [R.auth("docs/raw", "secret-token"), 200, R.hexFrame("docs/raw", "0009")]);

await server.destroy();
log("done");
process.exit(0);
