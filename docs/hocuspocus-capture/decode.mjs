// Shared helpers: hex + a best-effort annotator for Hocuspocus frames.
import * as decoding from "lib0/decoding";

export const hex = (u8) =>
	Buffer.from(u8.buffer ? new Uint8Array(u8.buffer, u8.byteOffset, u8.byteLength) : u8).toString("hex");

const TYPES = {
	0: "Sync",
	1: "Awareness",
	2: "Auth",
	3: "QueryAwareness",
	4: "SyncReply",
	5: "Stateless",
	6: "BroadcastStateless",
	7: "CLOSE",
	8: "SyncStatus",
	9: "Ping",
	10: "Pong",
};

export function annotate(data) {
	const u8 = data instanceof Uint8Array ? data : new Uint8Array(data);
	if (u8.length === 1 && (u8[0] === 9 || u8[0] === 10)) {
		return `${TYPES[u8[0]]} (bare, no document name)`;
	}
	try {
		const d = decoding.createDecoder(u8);
		const name = decoding.readVarString(d);
		const type = decoding.readVarUint(d);
		let s = `name=${JSON.stringify(name)} type=${type}(${TYPES[type] ?? "?"})`;
		switch (type) {
			case 0:
			case 4: {
				const sub = decoding.readVarUint(d);
				const payload = decoding.readVarUint8Array(d);
				s += ` sub=${sub}(${["SyncStep1", "SyncStep2", "Update"][sub]}) payloadLen=${payload.length} payload=${hex(payload)}`;
				break;
			}
			case 1: {
				const upd = decoding.readVarUint8Array(d);
				const ad = decoding.createDecoder(upd);
				const n = decoding.readVarUint(ad);
				const entries = [];
				for (let i = 0; i < n; i++) {
					const clientID = decoding.readVarUint(ad);
					const clock = decoding.readVarUint(ad);
					const state = decoding.readVarString(ad);
					entries.push(`{client=${clientID} clock=${clock} state=${state}}`);
				}
				s += ` awarenessUpdate(len=${upd.length})=[${entries.join(", ")}]`;
				break;
			}
			case 2: {
				const sub = decoding.readVarUint(d);
				s += ` authSub=${sub}(${["Token", "PermissionDenied", "Authenticated"][sub]})`;
				if (decoding.hasContent(d)) s += ` str1=${JSON.stringify(decoding.readVarString(d))}`;
				if (decoding.hasContent(d)) s += ` str2=${JSON.stringify(decoding.readVarString(d))}`;
				break;
			}
			case 5:
			case 6:
			case 7:
				if (decoding.hasContent(d)) s += ` str=${JSON.stringify(decoding.readVarString(d))}`;
				break;
			case 8:
				s += ` value=${decoding.readVarUint(d)}`;
				break;
			default:
		}
		if (decoding.hasContent(d)) s += ` (+${u8.length - d.pos} trailing bytes)`;
		return s;
	} catch (e) {
		return `<undecodable: ${e.message}>`;
	}
}
