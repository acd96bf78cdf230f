//! A document's content as plain data ([`content_json`]), and the edits that bring a document
//! back to what an earlier copy of it held ([`restoring_update`]).
//!
//! The server does not know the types of a document's root values: clients declare them. Each
//! root's kind is read from what it holds, as yrs infers it (list items that are characters or
//! formatting: a text; keys: a map; both: XML). A root one side leaves empty takes the other
//! side's kind.

use std::collections::HashMap;
use std::sync::Arc;

use yrs::types::text::{Diff, YChange};
use yrs::types::{AsPrelim, ToJson};
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayRef, Doc, GetString, In, Map, MapRef, OffsetKind, Options, Out, ReadTxn, Text,
    TextRef, Transact, TransactionMut, Update, XmlFragment, XmlFragmentRef,
};

use crate::room::RoomError;

/// What a root value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Map,
    Array,
    Xml,
    /// Nothing in it: no kind can be told.
    Empty,
}

/// Loads a v1 update (checked first, as every update the server takes) into a document of
/// its own whose text offsets count UTF-16 code units.
fn load(update: &[u8], client: u64) -> Result<Doc, RoomError> {
    tandem_sync::inspect_v1(update).map_err(|e| RoomError::BadUpdate(e.to_string()))?;
    let decoded = Update::decode_v1(update).map_err(|e| RoomError::BadUpdate(e.to_string()))?;
    let doc = Doc::with_options(Options {
        client_id: yrs::block::ClientID::new(client),
        offset_kind: OffsetKind::Utf16,
        ..Options::default()
    });
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        doc.transact_mut().apply_update(decoded)
    }))
    .map_err(|_| RoomError::Poisoned)?
    .map_err(|e| RoomError::Rejected(e.to_string()))?;
    Ok(doc)
}

/// The root values of `doc` and their kinds, by name.
fn roots(doc: &Doc) -> Vec<(String, Kind)> {
    let txn = doc.transact();
    let mut roots: Vec<(String, Kind)> = txn
        .root_refs()
        .map(|(name, out)| {
            let kind = match &out {
                Out::YText(_) => Kind::Text,
                Out::YMap(_) => Kind::Map,
                Out::YArray(_) => Kind::Array,
                Out::YXmlFragment(_) | Out::YXmlElement(_) | Out::YXmlText(_) => Kind::Xml,
                Out::UndefinedRef(_) => match out.as_prelim(&txn) {
                    In::Text(delta) if delta.is_empty() => Kind::Empty,
                    In::Text(_) => Kind::Text,
                    In::Array(items) if items.is_empty() => Kind::Empty,
                    // A fragment's children are XML nodes.
                    In::Array(items)
                        if items
                            .iter()
                            .all(|i| matches!(i, In::XmlElement(_) | In::XmlText(_))) =>
                    {
                        Kind::Xml
                    }
                    In::Array(_) => Kind::Array,
                    In::Map(entries) if entries.is_empty() => Kind::Empty,
                    In::Map(_) => Kind::Map,
                    _ => Kind::Xml,
                },
                _ => Kind::Empty,
            };
            (name.to_owned(), kind)
        })
        .collect();
    roots.sort_by(|a, b| a.0.cmp(&b.0));
    roots
}

/// `update`'s root values as one JSON object: a text as its string, a map as an object, an
/// array as a list, XML as its string form; an empty root as `null`.
///
/// # Errors
/// The update is refused by the check every update passes, or yrs cannot load it.
pub fn content_json(update: &[u8]) -> Result<String, RoomError> {
    let doc = load(update, 1)?;
    let mut object = serde_json::Map::new();
    for (name, kind) in roots(&doc) {
        let value = match kind {
            Kind::Text => {
                let text = doc.get_or_insert_text(name.as_str());
                Any::from(text.get_string(&doc.transact()))
            }
            Kind::Map => doc
                .get_or_insert_map(name.as_str())
                .to_json(&doc.transact()),
            Kind::Array => doc
                .get_or_insert_array(name.as_str())
                .to_json(&doc.transact()),
            Kind::Xml => {
                let xml = doc.get_or_insert_xml_fragment(name.as_str());
                Any::from(xml.get_string(&doc.transact()))
            }
            Kind::Empty => Any::Null,
        };
        // (`Any::to_json` writes over what its buffer holds.)
        let value = serde_json::to_value(&value)
            .map_err(|e| RoomError::BadUpdate(format!("a value JSON cannot hold: {e}")))?;
        object.insert(name, value);
    }
    Ok(serde_json::Value::Object(object).to_string())
}

/// The edits, as one v1 update written by `client`, that turn a document holding `current`
/// into one whose content is `target`'s: for a text a character diff that keeps formatting,
/// for a map the keys set and removed, for an array the items inserted and removed, XML
/// replaced as a whole. Applied to the document like any update, the change merges with
/// concurrent edits; `None` when the content is already the target's.
///
/// # Errors
/// Either update is refused by the check or cannot be loaded.
pub fn restoring_update(
    current: &[u8],
    target: &[u8],
    client: u64,
) -> Result<Option<Vec<u8>>, RoomError> {
    let now = load(current, client)?;
    let then = load(target, client.wrapping_add(1))?;
    // Each root of either side, of the kind its content tells (the target's, unless the
    // target left it empty).
    let now_roots: HashMap<String, Kind> = roots(&now).into_iter().collect();
    let mut plan: Vec<(String, Kind)> = roots(&then);
    for (name, kind) in plan.iter_mut() {
        if *kind == Kind::Empty {
            *kind = now_roots.get(name).copied().unwrap_or(Kind::Empty);
        }
    }
    for (name, kind) in &now_roots {
        if !plan.iter().any(|(n, _)| n == name) {
            plan.push((name.clone(), *kind));
        }
    }
    // Typed on both documents before any transaction: yrs reinterprets a root under the kind
    // asked for.
    let refs: Vec<(Refs, Refs)> = plan
        .iter()
        .map(|(name, kind)| (Refs::of(&now, name, *kind), Refs::of(&then, name, *kind)))
        .collect();
    let then_txn = then.transact();
    let mut txn = now.transact_mut();
    let mut changed = false;
    for pair in &refs {
        changed |= match pair {
            (Refs::Text(a), Refs::Text(b)) => restore_text(&mut txn, a, b, &then_txn),
            (Refs::Map(a), Refs::Map(b)) => restore_map(&mut txn, a, b, &then_txn),
            (Refs::Array(a), Refs::Array(b)) => restore_array(&mut txn, a, b, &then_txn),
            (Refs::Xml(a), Refs::Xml(b)) => restore_xml(&mut txn, a, b, &then_txn),
            _ => false,
        };
    }
    Ok(changed.then(|| txn.encode_update_v1()))
}

/// How long a diff may look for the fewest edits before it settles for more: any diff turns
/// one content into the other, a minimal one only writes fewer edits.
const DIFF_BUDGET: std::time::Duration = std::time::Duration::from_millis(50);

/// The edits from `old` to `new` (Myers' algorithm, within [`DIFF_BUDGET`]).
fn diff<T: Eq + std::hash::Hash + Ord>(old: &[T], new: &[T]) -> Vec<similar::DiffOp> {
    let deadline = std::time::Instant::now() + DIFF_BUDGET;
    similar::capture_diff_slices_deadline(similar::Algorithm::Myers, old, new, Some(deadline))
}

/// A root of one kind, typed.
enum Refs {
    Text(TextRef),
    Map(MapRef),
    Array(ArrayRef),
    Xml(XmlFragmentRef),
    None,
}

impl Refs {
    fn of(doc: &Doc, name: &str, kind: Kind) -> Refs {
        match kind {
            Kind::Text => Refs::Text(doc.get_or_insert_text(name)),
            Kind::Map => Refs::Map(doc.get_or_insert_map(name)),
            Kind::Array => Refs::Array(doc.get_or_insert_array(name)),
            Kind::Xml => Refs::Xml(doc.get_or_insert_xml_fragment(name)),
            Kind::Empty => Refs::None,
        }
    }
}

/// One unit of a text: a character or an embed, with its formatting.
#[derive(Clone, PartialEq)]
struct Unit {
    what: UnitValue,
    attrs: Option<Vec<(Arc<str>, String)>>,
}

#[derive(Clone, PartialEq)]
enum UnitValue {
    Char(char),
    Embed(String),
}

impl std::hash::Hash for Unit {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match &self.what {
            UnitValue::Char(c) => c.hash(state),
            UnitValue::Embed(e) => e.hash(state),
        }
        self.attrs.hash(state);
    }
}

impl Eq for Unit {}

/// What inserting a unit takes beyond what compares it: its formatting and, for an embed,
/// its value.
type Insertable = (Option<yrs::types::Attrs>, Option<Any>);

/// A text's units and what inserting each takes.
fn units<T: ReadTxn>(text: &TextRef, txn: &T) -> (Vec<Unit>, Vec<Insertable>) {
    let mut units = Vec::new();
    let mut extra = Vec::new();
    for Diff {
        insert, attributes, ..
    } in text.diff(txn, YChange::identity)
    {
        let attrs = attributes.map(|a| *a);
        let key = attrs.as_ref().map(|a| {
            let mut sorted: Vec<(Arc<str>, String)> = a
                .iter()
                .map(|(k, v)| (Arc::clone(k), v.to_string()))
                .collect();
            sorted.sort();
            sorted
        });
        match insert {
            Out::Any(Any::String(s)) => {
                for c in s.chars() {
                    units.push(Unit {
                        what: UnitValue::Char(c),
                        attrs: key.clone(),
                    });
                    extra.push((attrs.clone(), None));
                }
            }
            Out::Any(any) => {
                units.push(Unit {
                    what: UnitValue::Embed(any.to_string()),
                    attrs: key,
                });
                extra.push((attrs, Some(any)));
            }
            other => {
                // A shared type embedded in a text: kept as its JSON value.
                let any = other.to_json(txn);
                units.push(Unit {
                    what: UnitValue::Embed(any.to_string()),
                    attrs: key,
                });
                extra.push((attrs, Some(any)));
            }
        }
    }
    (units, extra)
}

/// A unit's length in the text's offsets (UTF-16 code units; an embed is one).
fn unit_len(unit: &Unit) -> u32 {
    match unit.what {
        UnitValue::Char(c) => c.len_utf16() as u32,
        UnitValue::Embed(_) => 1,
    }
}

fn restore_text<T: ReadTxn>(
    txn: &mut TransactionMut,
    now: &TextRef,
    then: &TextRef,
    then_txn: &T,
) -> bool {
    let (old, old_extra) = units(now, txn);
    let (new, new_extra) = units(then, then_txn);
    if old == new {
        return false;
    }
    // Units are compared by number: the diff wants ordered values.
    let mut numbers: HashMap<&Unit, u32> = HashMap::new();
    let mut number = |unit| {
        let next = numbers.len() as u32;
        *numbers.entry(unit).or_insert(next)
    };
    let old_numbers: Vec<u32> = old.iter().map(&mut number).collect();
    let new_numbers: Vec<u32> = new.iter().map(&mut number).collect();
    let mut at = 0u32;
    // The formatting of the character just before `at`: what an insertion there would take
    // on unless told otherwise.
    let mut before: Option<yrs::types::Attrs> = None;
    for op in diff(&old_numbers, &new_numbers) {
        // Every op is a run of the old text that stays or goes, and one of the new that comes.
        let (tag, gone, came) = op.as_tag_tuple();
        if tag == similar::DiffTag::Equal {
            at += old[gone.clone()].iter().map(unit_len).sum::<u32>();
            before = gone.last().and_then(|last| old_extra[last].0.clone());
            continue;
        }
        if !gone.is_empty() {
            now.remove_range(txn, at, old[gone].iter().map(unit_len).sum());
        }
        at += insert_units(
            txn,
            now,
            at,
            &new[came.clone()],
            &new_extra[came],
            &mut before,
        );
    }
    true
}

/// Inserts `units` at `at`, a run of characters with the same formatting at a time; returns
/// their length.
fn insert_units(
    txn: &mut TransactionMut,
    text: &TextRef,
    mut at: u32,
    units: &[Unit],
    extra: &[Insertable],
    before: &mut Option<yrs::types::Attrs>,
) -> u32 {
    let start = at;
    let mut i = 0;
    while i < units.len() {
        let mut attrs = extra[i].0.clone().unwrap_or_default();
        // Formatting in effect before the insertion that this run does not have is unset for
        // it (null), or the run would take it on.
        for key in before.iter().flat_map(|b| b.keys()) {
            attrs.entry(Arc::clone(key)).or_insert(Any::Null);
        }
        *before = extra[i].0.clone();
        if let Some(embed) = &extra[i].1 {
            text.insert_embed_with_attributes(txn, at, embed.clone(), attrs);
            at += 1;
            i += 1;
            continue;
        }
        let mut run = String::new();
        let mut j = i;
        while j < units.len() && extra[j].1.is_none() && units[j].attrs == units[i].attrs {
            if let UnitValue::Char(c) = units[j].what {
                run.push(c);
            }
            j += 1;
        }
        text.insert_with_attributes(txn, at, &run, attrs);
        at += run.encode_utf16().count() as u32;
        i = j;
    }
    at - start
}

fn restore_map<T: ReadTxn>(
    txn: &mut TransactionMut,
    now: &MapRef,
    then: &MapRef,
    then_txn: &T,
) -> bool {
    let mut changed = false;
    let target: Vec<(String, Out)> = then
        .iter(then_txn)
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let current: Vec<String> = now.keys(txn).map(str::to_owned).collect();
    for key in current {
        if !target.iter().any(|(k, _)| *k == key) {
            now.remove(txn, &key);
            changed = true;
        }
    }
    for (key, value) in target {
        let same = now
            .get(txn, &key)
            .is_some_and(|v| v.to_json(txn) == value.to_json(then_txn));
        if !same {
            now.insert(txn, key, value.as_prelim(then_txn));
            changed = true;
        }
    }
    changed
}

fn restore_array<T: ReadTxn>(
    txn: &mut TransactionMut,
    now: &ArrayRef,
    then: &ArrayRef,
    then_txn: &T,
) -> bool {
    let old: Vec<String> = now.iter(txn).map(|v| v.to_json(txn).to_string()).collect();
    let items: Vec<Out> = then.iter(then_txn).collect();
    let new: Vec<String> = items
        .iter()
        .map(|v| v.to_json(then_txn).to_string())
        .collect();
    if old == new {
        return false;
    }
    let mut at = 0u32;
    for op in diff(&old, &new) {
        let (delete, insert) = match op {
            similar::DiffOp::Equal { len, .. } => {
                at += len as u32;
                continue;
            }
            similar::DiffOp::Delete { old_len, .. } => (old_len, 0..0),
            similar::DiffOp::Insert {
                new_index, new_len, ..
            } => (0, new_index..new_index + new_len),
            similar::DiffOp::Replace {
                old_len,
                new_index,
                new_len,
                ..
            } => (old_len, new_index..new_index + new_len),
        };
        if delete > 0 {
            now.remove_range(txn, at, delete as u32);
        }
        for item in &items[insert] {
            now.insert(txn, at, item.as_prelim(then_txn));
            at += 1;
        }
    }
    true
}

fn restore_xml<T: ReadTxn>(
    txn: &mut TransactionMut,
    now: &XmlFragmentRef,
    then: &XmlFragmentRef,
    then_txn: &T,
) -> bool {
    if now.get_string(txn) == then.get_string(then_txn) {
        return false;
    }
    let len = now.len(txn);
    if len > 0 {
        now.remove_range(txn, 0, len);
    }
    let children: Vec<_> = then.children(then_txn).collect();
    for (i, child) in children.into_iter().enumerate() {
        let index = i as u32;
        match child {
            yrs::XmlOut::Element(e) => {
                now.insert(txn, index, e.as_prelim(then_txn));
            }
            yrs::XmlOut::Text(t) => {
                // Its characters (formatting inside XML text is not carried over).
                let text: String = t
                    .diff(then_txn, YChange::identity)
                    .into_iter()
                    .filter_map(|d| match d.insert {
                        Out::Any(Any::String(s)) => Some(s.to_string()),
                        _ => None,
                    })
                    .collect();
                now.insert(txn, index, yrs::XmlTextPrelim::new(text));
            }
            // Yjs never nests a fragment in a fragment.
            yrs::XmlOut::Fragment(_) => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::StateVector;

    fn whole(doc: &Doc) -> Vec<u8> {
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    #[test]
    fn content_reads_each_kind_of_root() {
        let doc = Doc::with_client_id(5);
        let text = doc.get_or_insert_text("sql");
        let map = doc.get_or_insert_map("status");
        let rows = doc.get_or_insert_array("rows");
        let xml = doc.get_or_insert_xml_fragment("notes");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "SELECT 1");
            map.insert(&mut txn, "state", "done");
            rows.push_back(&mut txn, 42.0);
            xml.push_back(&mut txn, yrs::XmlElementPrelim::empty("p"));
        }
        let json: serde_json::Value =
            serde_json::from_str(&content_json(&whole(&doc)).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "sql": "SELECT 1",
                "status": {"state": "done"},
                "rows": [42],
                "notes": "<p></p>",
            })
        );
    }

    /// Applies the restoring update to a copy of `now` and returns its content.
    fn restored(now: &Doc, then: &[u8]) -> (Doc, String) {
        let edits = restoring_update(&whole(now), then, 99).unwrap().unwrap();
        let copy = Doc::with_client_id(4);
        copy.transact_mut()
            .apply_update(Update::decode_v1(&whole(now)).unwrap())
            .unwrap();
        copy.transact_mut()
            .apply_update(Update::decode_v1(&edits).unwrap())
            .unwrap();
        let json = content_json(&whole(&copy)).unwrap();
        (copy, json)
    }

    #[test]
    fn a_restore_brings_back_text_map_and_array_as_edits() {
        let doc = Doc::with_client_id(5);
        let text = doc.get_or_insert_text("sql");
        let map = doc.get_or_insert_map("status");
        let rows = doc.get_or_insert_array("rows");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "SELECT région FROM sales 🎉");
            text.format(&mut txn, 0, 6, [("bold".into(), Any::Bool(true))].into());
            map.insert(&mut txn, "state", "done");
            map.insert(&mut txn, "rows", 3.0);
            rows.push_back(&mut txn, 1.0);
            rows.push_back(&mut txn, 2.0);
        }
        let then = whole(&doc);
        let then_json = content_json(&then).unwrap();
        {
            let mut txn = doc.transact_mut();
            text.remove_range(&mut txn, 7, 7);
            text.insert(&mut txn, 7, "country, sum(x)");
            text.insert(&mut txn, 0, "-- new\n");
            map.remove(&mut txn, "rows");
            map.insert(&mut txn, "state", "failed");
            map.insert(&mut txn, "error", "boom");
            rows.insert(&mut txn, 1, 9.0);
            rows.remove(&mut txn, 0);
        }
        assert_ne!(content_json(&whole(&doc)).unwrap(), then_json);
        let (copy, json) = restored(&doc, &then);
        let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        assert_eq!(parse(&json), parse(&then_json));
        // Formatting came back too.
        let text = copy.get_or_insert_text("sql");
        let txn = copy.transact();
        let diff = text.diff(&txn, YChange::identity);
        assert_eq!(diff[0].insert, Out::Any(Any::from("SELECT")));
        assert!(diff[0].attributes.is_some());
        // Already there: nothing to do.
        assert!(restoring_update(&then, &then, 99).unwrap().is_none());
    }

    #[test]
    fn restored_plain_text_does_not_take_on_the_formatting_before_it() {
        let doc = Doc::with_client_id(5);
        let text = doc.get_or_insert_text("t");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "Title body");
            text.format(&mut txn, 0, 5, [("bold".into(), Any::Bool(true))].into());
        }
        let then = whole(&doc);
        text.remove_range(&mut doc.transact_mut(), 5, 5);
        let (copy, _) = restored(&doc, &then);
        let text = copy.get_or_insert_text("t");
        let txn = copy.transact();
        let diff = text.diff(&txn, YChange::identity);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert_eq!(diff[1].insert, Out::Any(Any::from(" body")));
        assert!(diff[1].attributes.is_none(), "{diff:?}");
    }

    #[test]
    fn a_restore_merges_with_an_edit_made_at_the_same_time() {
        let doc = Doc::with_client_id(5);
        let text = doc.get_or_insert_text("sql");
        text.insert(&mut doc.transact_mut(), 0, "SELECT a FROM t");
        let then = whole(&doc);
        text.insert(&mut doc.transact_mut(), 9, "WHERE 1 ");
        let edits = restoring_update(&whole(&doc), &then, 99).unwrap().unwrap();
        // Meanwhile someone appends, unaware of the restore.
        let other = Doc::with_client_id(6);
        other
            .transact_mut()
            .apply_update(Update::decode_v1(&whole(&doc)).unwrap())
            .unwrap();
        let theirs = other.get_or_insert_text("sql");
        let len = theirs.len(&other.transact());
        theirs.insert(&mut other.transact_mut(), len, " LIMIT 5");
        other
            .transact_mut()
            .apply_update(Update::decode_v1(&edits).unwrap())
            .unwrap();
        assert_eq!(
            theirs.get_string(&other.transact()),
            "SELECT a FROM t LIMIT 5"
        );
    }
}
