// Hand-built frames, encoded with lib0 exactly like the provider does.
import * as encoding from "lib0/encoding";
import * as Y from "yjs";
import * as syncProtocol from "y-protocols/sync";

const frame = (name, fn) => {
	const e = encoding.createEncoder();
	encoding.writeVarString(e, name);
	fn(e);
	return encoding.toUint8Array(e);
};

export const encodeRaw = {
	// Auth(2) / Token(0) / token / providerVersion  (v4 provider)
	auth: (name, token, version = "4.8.0") =>
		frame(name, (e) => {
			encoding.writeVarUint(e, 2);
			encoding.writeVarUint(e, 0);
			encoding.writeVarString(e, token);
			encoding.writeVarString(e, version);
		}),
	// v3 provider: no version string
	authV3: (name, token) =>
		frame(name, (e) => {
			encoding.writeVarUint(e, 2);
			encoding.writeVarUint(e, 0);
			encoding.writeVarString(e, token);
		}),
	syncStep1: (name, doc = new Y.Doc()) =>
		frame(name, (e) => {
			encoding.writeVarUint(e, 0);
			syncProtocol.writeSyncStep1(e, doc);
		}),
	queryAwareness: (name) => frame(name, (e) => encoding.writeVarUint(e, 3)),
	close: (name) => frame(name, (e) => encoding.writeVarUint(e, 7)),
	stateless: (name, s) =>
		frame(name, (e) => {
			encoding.writeVarUint(e, 5);
			encoding.writeVarString(e, s);
		}),
	broadcastStateless: (name, s) =>
		frame(name, (e) => {
			encoding.writeVarUint(e, 6);
			encoding.writeVarString(e, s);
		}),
	awareness: (name, clientID, clock, state) =>
		frame(name, (e) => {
			encoding.writeVarUint(e, 1);
			const a = encoding.createEncoder();
			encoding.writeVarUint(a, 1);
			encoding.writeVarUint(a, clientID);
			encoding.writeVarUint(a, clock);
			encoding.writeVarString(a, JSON.stringify(state));
			encoding.writeVarUint8Array(e, encoding.toUint8Array(a));
		}),
	hexFrame: (name, hexRest) =>
		frame(name, (e) => encoding.writeUint8Array(e, Buffer.from(hexRest, "hex"))),
};
