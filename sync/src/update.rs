//! A v1 update's claims, checked before yrs decodes it.
//!
//! yrs reserves memory for the counts an update declares before it reads what they count (the
//! clients, each client's blocks, an `Any` map's entries: a hash table's control bytes are
//! written at once, so a few bytes claiming 2^27 entries cost hundreds of megabytes), and
//! decodes nested `Any` values by recursion, so a value nested a few thousand levels deep
//! overflows the thread's stack and aborts the process. [`inspect_v1`] walks the update the way
//! yrs's decoder does, with the same readers, allocating nothing: every count must fit in the
//! bytes left (each thing counted takes one byte at least) and `Any` values nest at most
//! [`MAX_ANY_DEPTH`] deep. It also counts the shared types the update creates, which bound how
//! deep types can nest in a document (yrs deletes and collects nested types by recursion too).

use yrs::encoding::read::{Cursor, Read};

/// How deep `Any` values (a map in an array in a map…) may nest in an update. JSON documents
/// rarely go past a dozen levels; serde_json itself stops at 128.
pub const MAX_ANY_DEPTH: usize = 64;

/// What [`inspect_v1`] found in an update that yrs may decode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateShape {
    /// Blocks (items, garbage-collected ranges, skips), over every client.
    pub blocks: u64,
    /// Items that create a shared type (a map, array, text or XML node).
    pub types: u64,
    /// The runs of blocks that yrs would integrate at once even where the document lacks the
    /// clocks before them, as `(client, clock)`: a client's first block, or one after a skip,
    /// that starts past clock 0 and is not an item whose left origin is its own client's
    /// previous clock (such an item waits for that clock in yrs's pending set, as Yjs makes
    /// every out-of-order block wait). Integrated early, yrs fills the hole with a skip, and a
    /// later update that overlaps it makes yrs free an item it still links to (a heap
    /// use-after-free the room fuzz target found): the room refuses such an update unless the
    /// document already holds the client's clocks up to `clock`. Empty for what clients send
    /// in order, so this allocates nothing on the common path.
    pub must_follow: Vec<(u64, u32)>,
}

/// Why an update was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("the update ends inside {0}")]
    Truncated(&'static str),
    #[error("malformed variable-length integer in {0}")]
    BadVarInt(&'static str),
    #[error("the update declares {claimed} {what} in the {left} bytes left")]
    Claim {
        what: &'static str,
        claimed: u64,
        left: usize,
    },
    #[error("a value nests deeper than {MAX_ANY_DEPTH} levels")]
    TooDeep,
    #[error("unknown {what} {value}")]
    Unknown { what: &'static str, value: u8 },
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    #[error("client {0} appears twice in the update")]
    DuplicateClient(u64),
    #[error("the blocks of client {0} run past the largest clock")]
    ClockOverflow(u64),
    #[error("client id {0} is past 2^53, which no Yjs client makes")]
    ClientTooLarge(u64),
    #[error("a string that is not UTF-8")]
    BadString,
}

// The numbers of yrs's block and content kinds, and of its info bits (`yrs::block`).
const BLOCK_GC: u8 = 0;
const BLOCK_SKIP: u8 = 10;
const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;
const CONTENT_DELETED: u8 = 1;
const CONTENT_JSON: u8 = 2;
const CONTENT_BINARY: u8 = 3;
const CONTENT_STRING: u8 = 4;
const CONTENT_EMBED: u8 = 5;
const CONTENT_FORMAT: u8 = 6;
const CONTENT_TYPE: u8 = 7;
const CONTENT_ANY: u8 = 8;
const CONTENT_DOC: u8 = 9;
// Shared type kinds (`yrs::types`): an XML element carries its name.
const TYPE_XML_ELEMENT: u8 = 3;
const KNOWN_TYPES: [u8; 9] = [0, 1, 2, 3, 4, 5, 6, 9, 15];

/// Checks `update` (a v1 update) as described in the module docs and says what it holds.
///
/// An update this accepts may still be refused by yrs (a clock that overflows, an item yrs
/// finds inconsistent); one it refuses, yrs would refuse too or could not decode safely.
///
/// # Errors
/// A count larger than the bytes left, an `Any` nested too deep, or an update yrs's decoder
/// would stop reading at the same place.
pub fn inspect_v1(update: &[u8]) -> Result<UpdateShape, UpdateError> {
    let mut walk = Walk {
        cursor: Cursor::new(update),
        shape: UpdateShape::default(),
    };
    walk.update()?;
    Ok(walk.shape)
}

/// What the walk needs of a block.
struct Block {
    /// In clock ticks.
    len: u64,
    skip: bool,
    /// An item's left origin, `(client, clock)`.
    origin: Option<(u64, u32)>,
}

struct Walk<'a> {
    cursor: Cursor<'a>,
    shape: UpdateShape,
}

impl Walk<'_> {
    fn left(&self) -> usize {
        self.cursor.buf.len() - self.cursor.next
    }

    /// A count of things that take at least `each` bytes apiece.
    fn count(&mut self, what: &'static str, claimed: u64, each: usize) -> Result<u64, UpdateError> {
        let left = self.left();
        if claimed > (left / each) as u64 {
            return Err(UpdateError::Claim {
                what,
                claimed,
                left,
            });
        }
        Ok(claimed)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, UpdateError> {
        self.cursor
            .read_u8()
            .map_err(|_| UpdateError::Truncated(what))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, UpdateError> {
        self.cursor
            .read_var::<u32>()
            .map_err(|e| var_error(e, what))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, UpdateError> {
        self.cursor
            .read_var::<u64>()
            .map_err(|e| var_error(e, what))
    }

    /// A client id. yrs keeps 53 bits of it (what a JavaScript number holds exactly) and drops
    /// the rest, so two ids that differ above would name one client: one beyond is refused.
    fn client(&mut self, what: &'static str) -> Result<u64, UpdateError> {
        let id = self.u64(what)?;
        if id >= 1 << 53 {
            return Err(UpdateError::ClientTooLarge(id));
        }
        Ok(id)
    }

    fn i64(&mut self, what: &'static str) -> Result<(), UpdateError> {
        self.cursor
            .read_var::<i64>()
            .map(drop)
            .map_err(|e| var_error(e, what))
    }

    fn skip(&mut self, len: usize, what: &'static str) -> Result<(), UpdateError> {
        self.cursor
            .read_exact(len)
            .map(drop)
            .map_err(|_| UpdateError::Truncated(what))
    }

    /// A length-prefixed buffer or string (yrs checks strings' UTF-8 itself).
    fn buf(&mut self, what: &'static str) -> Result<(), UpdateError> {
        self.bytes(what).map(drop)
    }

    /// A length-prefixed buffer, read.
    fn bytes(&mut self, what: &'static str) -> Result<&[u8], UpdateError> {
        let len = self.u32(what)?;
        self.cursor
            .read_exact(len as usize)
            .map_err(|_| UpdateError::Truncated(what))
    }

    fn update(&mut self) -> Result<(), UpdateError> {
        let clients = self.u32("the client count")?;
        // Each client takes three bytes at least: its block count, id and first clock.
        let clients = self.count("clients", u64::from(clients), 3)?;
        // yrs appends a client named twice to the blocks it already read, and adds block
        // lengths to a u32 clock that wraps: either way it can end up with two blocks on one
        // clock, and its block store then frees an item others still point to (a
        // use-after-free the room fuzz target found). Neither reaches it.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..clients {
            let blocks = self.u32("a block count")?;
            let client = self.client("a client id")?;
            if !seen.insert(client) {
                return Err(UpdateError::DuplicateClient(client));
            }
            let mut clock = u64::from(self.u32("a clock")?);
            let blocks = self.count("blocks", u64::from(blocks), 1)?;
            let mut run_starts = true;
            for _ in 0..blocks {
                let block = self.block()?;
                if run_starts && !block.skip && clock > 0 {
                    let previous = clock.checked_sub(1).and_then(|c| u32::try_from(c).ok());
                    let waits = block
                        .origin
                        .is_some_and(|(c, k)| c == client && Some(k) == previous);
                    if !waits {
                        // Below u32::MAX: checked after the previous block.
                        self.shape.must_follow.push((client, clock as u32));
                    }
                }
                run_starts = block.skip;
                clock += block.len;
                if clock > u64::from(u32::MAX) {
                    return Err(UpdateError::ClockOverflow(client));
                }
            }
            self.shape.blocks += blocks;
        }
        // The delete set.
        let clients = self.u32("the delete set")?;
        let clients = self.count("deleting clients", u64::from(clients), 2)?;
        for _ in 0..clients {
            self.client("a deleting client")?;
            let ranges = self.u32("a range count")?;
            let ranges = self.count("deleted ranges", u64::from(ranges), 2)?;
            for _ in 0..ranges {
                self.u32("a deleted clock")?;
                self.u32("a deleted length")?;
            }
        }
        Ok(())
    }

    /// One block.
    fn block(&mut self) -> Result<Block, UpdateError> {
        let info = self.u8("a block")?;
        if info == BLOCK_GC || info == BLOCK_SKIP {
            return Ok(Block {
                len: u64::from(self.u32("a block length")?),
                skip: info == BLOCK_SKIP,
                origin: None,
            });
        }
        let copies_parent = info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) != 0;
        let mut origin = None;
        if info & HAS_ORIGIN != 0 {
            origin = Some((self.client("an origin")?, self.u32("an origin")?));
        }
        if info & HAS_RIGHT_ORIGIN != 0 {
            self.client("a right origin")?;
            self.u32("a right origin")?;
        }
        if !copies_parent {
            if self.u32("a parent")? == 1 {
                self.buf("a parent name")?;
            } else {
                self.client("a parent")?;
                self.u32("a parent")?;
            }
            if info & HAS_PARENT_SUB != 0 {
                self.buf("a parent key")?;
            }
        }
        Ok(Block {
            len: self.content(info & 0b1111)?,
            skip: false,
            origin,
        })
    }

    /// One item's content; its length in clock ticks (a string's in UTF-16 code units).
    fn content(&mut self, kind: u8) -> Result<u64, UpdateError> {
        match kind {
            CONTENT_DELETED => self.u32("a deleted length").map(u64::from),
            // Legacy content no Yjs of this decade writes (it writes `Any`), and that yrs
            // cannot read back: it reads one string more than the count says and writes the
            // count of what it read, so a document holding some no longer decodes (a snapshot
            // that does not load, a sync answer that panics). Found by the room fuzz target.
            CONTENT_JSON => Err(UpdateError::Unsupported("legacy JSON content")),
            CONTENT_BINARY | CONTENT_EMBED => self.buf("content").map(|()| 1),
            CONTENT_STRING => {
                let text = std::str::from_utf8(self.bytes("a string")?)
                    .map_err(|_| UpdateError::BadString)?;
                Ok(text.encode_utf16().count() as u64)
            }
            CONTENT_FORMAT => {
                self.buf("a format key")?;
                self.buf("a format value").map(|()| 1)
            }
            CONTENT_TYPE => {
                self.shape.types += 1;
                let kind = self.u8("a type")?;
                if !KNOWN_TYPES.contains(&kind) {
                    return Err(UpdateError::Unknown {
                        what: "type",
                        value: kind,
                    });
                }
                if kind == TYPE_XML_ELEMENT {
                    self.buf("an element name")?;
                }
                Ok(1)
            }
            CONTENT_ANY => {
                let claimed = self.u64("an Any count")?;
                let values = self.count("Any values", claimed, 1)?;
                for _ in 0..values {
                    self.any()?;
                }
                Ok(values)
            }
            CONTENT_DOC => {
                self.buf("a subdocument id")?;
                self.any().map(|()| 1)
            }
            other => Err(UpdateError::Unknown {
                what: "content",
                value: other,
            }),
        }
    }

    /// One `Any` value, nested ones included, without recursion: `pending` holds how many
    /// values (or map entries, each a key then a value) are still to read at each open level.
    fn any(&mut self) -> Result<(), UpdateError> {
        let mut pending: Vec<(u64, bool)> = vec![(1, false)];
        while let Some(level) = pending.last_mut() {
            if level.0 == 0 {
                pending.pop();
                continue;
            }
            level.0 -= 1;
            if level.1 {
                self.buf("a map key")?;
            }
            match self.u8("a value")? {
                // undefined, null, false, true
                127 | 126 | 121 | 120 => {}
                125 => self.i64("an integer")?,
                124 => self.skip(4, "a float")?,
                123 | 122 => self.skip(8, "a number")?,
                119 | 116 => self.buf("a value")?,
                tag @ (118 | 117) => {
                    let map = tag == 118;
                    let claimed = self.u64("a collection size")?;
                    // A map entry takes two bytes at least (a key and a value), an item one.
                    let items = self.count("values", claimed, if map { 2 } else { 1 })?;
                    if pending.len() >= MAX_ANY_DEPTH {
                        return Err(UpdateError::TooDeep);
                    }
                    pending.push((items, map));
                }
                other => {
                    return Err(UpdateError::Unknown {
                        what: "value tag",
                        value: other,
                    })
                }
            }
        }
        Ok(())
    }
}

fn var_error(err: yrs::encoding::read::Error, what: &'static str) -> UpdateError {
    match err {
        yrs::encoding::read::Error::EndOfBuffer(_) => UpdateError::Truncated(what),
        _ => UpdateError::BadVarInt(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{
        Any, Array, Doc, Map, MapPrelim, ReadTxn, StateVector, Text, Transact, Update, XmlFragment,
    };

    fn whole(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    #[test]
    fn what_yrs_writes_passes_and_its_types_are_counted() {
        let doc = Doc::with_client_id(3);
        let text = doc.get_or_insert_text("t");
        let map = doc.get_or_insert_map("m");
        let rows = doc.get_or_insert_array("a");
        let xml = doc.get_or_insert_xml_fragment("x");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hello world");
            text.remove_range(&mut txn, 2, 3);
            text.format(&mut txn, 0, 2, [("bold".into(), Any::Bool(true))].into());
            map.insert(&mut txn, "n", 1.5);
            map.insert(&mut txn, "big", Any::from(1i64 << 60));
            map.insert(&mut txn, "nested", MapPrelim::from([("k", Any::from("v"))]));
            rows.push_back(
                &mut txn,
                Any::from(vec![Any::Null, Any::Undefined, Any::from(vec![1u8, 2, 3])]),
            );
            xml.push_back(&mut txn, yrs::XmlElementPrelim::empty("p"));
        }
        let shape = inspect_v1(&whole(&doc)).expect("yrs's own encoding passes");
        // The nested map and the paragraph.
        assert_eq!(shape.types, 2);
        assert!(shape.blocks >= 6);
        assert_eq!(inspect_v1(&[0, 0]), Ok(UpdateShape::default()));
    }

    #[test]
    fn an_xml_hook_carries_no_name() {
        // Found by the `update_v1` fuzz target: a hook followed by a string item, read as yrs
        // reads it (the check once took the string for the hook's name).
        let update = [1, 2, 5, 0, 7, 1, 1, b'x', 5, 4, 1, 1, b'x', 1, b'a', 0];
        assert!(Update::decode_v1(&update).is_ok());
        assert_eq!(
            inspect_v1(&update),
            Ok(UpdateShape {
                blocks: 2,
                types: 1,
                must_follow: Vec::new(),
            })
        );
    }

    #[test]
    fn legacy_json_content_is_refused_as_yrs_cannot_read_back_what_it_makes_of_it() {
        // A JSON item in root text "t" claiming one value, with the two strings yrs reads.
        let update = [1, 1, 7, 0, CONTENT_JSON, 1, 1, b't', 1, 1, b'1', 1, b'2', 0];
        let decoded = Update::decode_v1(&update).expect("yrs reads it");
        // Encoded again, it no longer decodes: yrs writes a count of two and reads three.
        assert!(Update::decode_v1(&decoded.encode_v1()).is_err());
        assert_eq!(
            inspect_v1(&update),
            Err(UpdateError::Unsupported("legacy JSON content"))
        );
    }

    #[test]
    fn clients_named_twice_and_clocks_past_u32_are_refused() {
        // What the room fuzz target sent to make yrs free an item still in use: a deleted
        // block of 2^32 - 2 ticks and more blocks after it on a clock that wraps.
        let wrapping = [
            1,
            2,
            7,
            5,
            CONTENT_DELETED,
            1,
            1,
            b't',
            0xfe,
            0xff,
            0xff,
            0xff,
            0x0f,
            4,
            1,
            1,
            b't',
            1,
            b'a',
            0,
        ];
        // (yrs's decoder overflows on it: a panic in debug builds, a wrapped clock in release.)
        assert_eq!(inspect_v1(&wrapping), Err(UpdateError::ClockOverflow(7)));
        // One client's blocks in two places of the update, on clocks that overlap.
        let twice = [
            2, 1, 7, 0, 4, 1, 1, b't', 1, b'a', 1, 7, 0, 4, 1, 1, b't', 1, b'b', 0,
        ];
        assert!(Update::decode_v1(&twice).is_ok());
        assert_eq!(inspect_v1(&twice), Err(UpdateError::DuplicateClient(7)));
        // Or twice under two ids yrs takes for one: it keeps their low 53 bits.
        let mut aliased = vec![2, 1, 7, 0, 4, 1, 1, b't', 1, b'a', 1];
        aliased.extend([0x87, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]); // 7 + 2^56
        aliased.extend([0, 4, 1, 1, b't', 1, b'b', 0]);
        // (yrs's decoder asserts on such an id in debug builds and folds it in release.)
        assert_eq!(
            inspect_v1(&aliased),
            Err(UpdateError::ClientTooLarge(7 + (1 << 56)))
        );
        // A string's length is counted as yrs counts it, in UTF-16 code units.
        let doc = Doc::with_client_id(3);
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "héllo 🎉");
        assert!(inspect_v1(&whole(&doc)).is_ok());
    }

    #[test]
    fn runs_yrs_would_integrate_past_a_hole_are_named() {
        // Typing: each update's item follows its own client's previous character, so yrs
        // holds it back until that one is there. Nothing to check.
        let doc = Doc::with_client_id(7);
        let text = doc.get_or_insert_text("t");
        let typed: Vec<Vec<u8>> = ["a", "b"]
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut txn = doc.transact_mut();
                text.insert(&mut txn, i as u32, s);
                txn.encode_update_v1()
            })
            .collect();
        assert_eq!(inspect_v1(&typed[1]).map(|s| s.must_follow), Ok(vec![]));
        // From clock 0 there is no hole to leave.
        assert_eq!(inspect_v1(&typed[0]).map(|s| s.must_follow), Ok(vec![]));
        // An item at clock 4 with no origin (the room fuzz target's), a garbage-collected
        // range at clock 5, and an item after a skip: yrs takes each at once.
        let no_origin = [1, 1, 7, 4, CONTENT_DELETED, 1, 1, b't', 2, 0];
        assert_eq!(
            inspect_v1(&no_origin).map(|s| s.must_follow),
            Ok(vec![(7, 4)])
        );
        let collected = [1, 1, 7, 5, BLOCK_GC, 4, 0];
        assert_eq!(
            inspect_v1(&collected).map(|s| s.must_follow),
            Ok(vec![(7, 5)])
        );
        // A string at clock 0, a skip of 3, then a string whose origin is another client's.
        let after_skip = [
            1,
            3,
            7,
            0,
            CONTENT_STRING,
            1,
            1,
            b't',
            1,
            b'a',
            BLOCK_SKIP,
            3,
            HAS_ORIGIN | CONTENT_STRING,
            9,
            0,
            1,
            b'b',
            0,
        ];
        assert!(Update::decode_v1(&after_skip).is_ok());
        assert_eq!(
            inspect_v1(&after_skip).map(|s| s.must_follow),
            Ok(vec![(7, 4)])
        );
    }

    #[test]
    fn claimed_counts_must_fit_in_the_bytes_left() {
        // 2^27 clients in five bytes: yrs would reserve a table for them first.
        let clients = [0x80, 0x80, 0x80, 0x40, 0, 0];
        assert!(matches!(
            inspect_v1(&clients),
            Err(UpdateError::Claim {
                what: "clients",
                ..
            })
        ));
        // One client with 2^28 blocks.
        let blocks = [1, 0x80, 0x80, 0x80, 0x80, 0x01, 5, 0, 0];
        assert!(matches!(
            inspect_v1(&blocks),
            Err(UpdateError::Claim { what: "blocks", .. })
        ));
        // An Any map claiming 2^40 entries.
        let mut map = vec![1, 1, 5, 0, CONTENT_ANY, 1, 1, b't', 1, 118];
        map.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x20, 0]);
        assert!(matches!(
            inspect_v1(&map),
            Err(UpdateError::Claim { what: "values", .. })
        ));
    }

    #[test]
    fn nested_values_stop_at_the_depth_limit() {
        let nested = |depth: usize| {
            let mut update = vec![1, 1, 5, 0, CONTENT_ANY, 1, 1, b't', 1];
            for _ in 0..depth {
                update.extend([117, 1]);
            }
            update.extend([126, 0]);
            update
        };
        assert!(inspect_v1(&nested(MAX_ANY_DEPTH - 1)).is_ok());
        assert_eq!(
            inspect_v1(&nested(MAX_ANY_DEPTH)),
            Err(UpdateError::TooDeep)
        );
        // Thousands of levels in a few kilobytes: refused without recursion.
        assert_eq!(inspect_v1(&nested(100_000)), Err(UpdateError::TooDeep));
    }

    #[test]
    fn a_truncated_update_is_refused() {
        let doc = Doc::with_client_id(3);
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "abc");
        let update = whole(&doc);
        for cut in 0..update.len() {
            assert!(inspect_v1(&update[..cut]).is_err(), "cut at {cut}");
        }
    }
}
