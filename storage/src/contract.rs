//! The behaviour every backend owes its trait, as async checks that panic on the first
//! difference: [`doc_store`], [`event_store`], [`state_store`]. The crate runs them against its
//! sled and memory backends; a new backend (PostgreSQL) runs them too, through the `testing`
//! feature. Each expects an empty store.

use std::collections::BTreeSet;

use crate::{
    Compaction, DocStore, EventSlot, EventStore, NewVersion, Retention, Since, StateStore,
    StoredDoc, VersionReason, VersionRetention, VersionStore,
};

/// The merge the contract's updates follow: an update is a `+`-separated set of tokens, and
/// merging takes their union (in order). For a backend that folds updates itself
/// (`PgOptions::merge`).
///
/// # Errors
/// Never; the signature is the backend's.
pub fn token_merge(parts: &[&[u8]]) -> Result<Vec<u8>, String> {
    let mut all = BTreeSet::new();
    for part in parts {
        all.extend(part.split(|&b| b == b'+').filter(|t| !t.is_empty()));
    }
    Ok(all.into_iter().collect::<Vec<_>>().join(&b'+'))
}

/// The tokens a stored document holds, snapshot and log together.
pub fn tokens(doc: &StoredDoc) -> BTreeSet<Vec<u8>> {
    let snapshot = doc.snapshot.iter().map(|s| s.bytes.as_slice());
    let log = doc.log.iter().map(|(_, u)| u.as_slice());
    snapshot
        .chain(log)
        .flat_map(|part| part.split(|&b| b == b'+'))
        .filter(|t| !t.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn tokens_of(words: &[&str]) -> BTreeSet<Vec<u8>> {
    words.iter().map(|w| w.as_bytes().to_vec()).collect()
}

/// What every [`DocStore`] does: appends with growing sequence numbers, loads of the
/// snapshot and the log after it, compactions that never lose an update nor move backwards,
/// documents whose names share a prefix kept apart, delete and list. Updates are sets of
/// tokens ([`token_merge`]).
pub async fn doc_store(store: &dyn DocStore) {
    assert!(store.load("a").await.unwrap().is_empty());
    let s1 = store.append("a", b"one").unwrap();
    let s2 = store.append("a", b"two").unwrap();
    store.append("a/b", b"other").unwrap();
    assert!(s2 > s1);
    store.flush().await.unwrap();

    let doc = store.load("a").await.unwrap();
    assert_eq!(doc.log, vec![(s1, b"one".to_vec()), (s2, b"two".to_vec())]);
    assert_eq!(doc.last_seq(), s2);

    // A compaction never loses an update: the snapshot covers what it was given, and what it
    // does not cover stays in the log (a backend may fold the rest in too, as PostgreSQL does,
    // whose compaction merges every logged row: see `token_merge`).
    assert!(matches!(
        store.compact("a", b"one".to_vec(), s1).await.unwrap(),
        Compaction::Done { .. }
    ));
    let doc = store.load("a").await.unwrap();
    assert!(doc.snapshot.is_some());
    assert!(doc.log.iter().all(|(seq, _)| *seq > s1));
    assert_eq!(tokens(&doc), tokens_of(&["one", "two"]));

    // A snapshot never moves backwards: an older one is refused, or folded into what is kept.
    store.compact("a", b"old".to_vec(), s1).await.unwrap();
    assert!(tokens(&store.load("a").await.unwrap()).is_superset(&tokens_of(&["one", "two"])));
    assert!(matches!(
        store.compact("a", b"one+two".to_vec(), s2).await.unwrap(),
        Compaction::Done { .. }
    ));
    let doc = store.load("a").await.unwrap();
    assert!(doc.log.is_empty());
    assert_eq!(doc.last_seq(), s2);
    assert!(tokens(&doc).is_superset(&tokens_of(&["one", "two"])));

    // Documents whose names share a prefix stay apart.
    assert_eq!(store.load("a/b").await.unwrap().log.len(), 1);
    let mut names = store.list().await.unwrap();
    names.sort();
    assert_eq!(names, vec!["a".to_string(), "a/b".to_string()]);

    assert!(store.delete("a").await.unwrap());
    assert!(!store.delete("a").await.unwrap());
    assert!(store.load("a").await.unwrap().is_empty());
    assert_eq!(store.list().await.unwrap(), vec!["a/b".to_string()]);
}

fn ids(since: Since) -> Vec<u64> {
    match since {
        Since::Events(events) => events.into_iter().map(|e| e.id).collect(),
        Since::Resync { oldest } => panic!("unexpected resync (oldest {oldest})"),
    }
}

/// What every [`EventStore`] does: ids per workspace from 1, known once committed, reads
/// after and before an id, retention by count and age with a resync below what it dropped,
/// and ids that never go back.
pub async fn event_store(store: &dyn EventStore) {
    assert_eq!(
        ids(store.since("acme", 0, 10).await.unwrap()),
        Vec::<u64>::new()
    );
    let mut slots = Vec::new();
    for n in 1..=5u64 {
        let body = format!("{{\"n\":{n}}}");
        slots.push(store.append("acme", n * 1000, body.as_bytes()).unwrap());
    }
    // Ids are per workspace; workspaces whose names share a prefix stay apart.
    let other = store.append("acme2", 1000, b"{}").unwrap();
    store.flush().await.unwrap();
    // Known once committed, in the order of the appends.
    let given: Vec<Option<u64>> = slots.iter().map(EventSlot::id).collect();
    assert_eq!(given, [Some(1), Some(2), Some(3), Some(4), Some(5)]);
    assert_eq!(other.id(), Some(1));

    assert_eq!(
        ids(store.since("acme", 0, 10).await.unwrap()),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(ids(store.since("acme", 3, 10).await.unwrap()), vec![4, 5]);
    assert_eq!(ids(store.since("acme", 1, 2).await.unwrap()), vec![2, 3]);
    assert_eq!(
        ids(store.since("acme", 5, 10).await.unwrap()),
        Vec::<u64>::new()
    );
    let latest = store.latest("acme", 2).await.unwrap();
    assert_eq!(latest.iter().map(|e| e.id).collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(latest[1].body, b"{\"n\":5}".to_vec());
    assert_eq!(latest[1].at_ms, 5000);
    let before = store.before("acme", 4, 2).await.unwrap();
    assert_eq!(before.iter().map(|e| e.id).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(store.last_id("acme").await.unwrap(), 5);
    assert_eq!(store.last_id("nobody").await.unwrap(), 0);
    assert_eq!(
        store
            .last_ids(&["nobody".into(), "acme".into(), "acme2".into()])
            .await
            .unwrap(),
        [0, 5, 1]
    );

    // Count: keep 3 newest. Age: at 10_000 with 6_500 ms, events at <= 3_500 go.
    let removed = store
        .trim(
            Retention {
                max_events: 3,
                max_age_ms: u64::MAX,
            },
            10_000,
        )
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(
        ids(store.since("acme", 2, 10).await.unwrap()),
        vec![3, 4, 5]
    );
    assert_eq!(
        store.since("acme", 1, 10).await.unwrap(),
        Since::Resync { oldest: 3 }
    );
    assert_eq!(
        store.since("acme", 0, 10).await.unwrap(),
        Since::Resync { oldest: 3 }
    );
    let removed = store
        .trim(
            Retention {
                max_events: 100,
                max_age_ms: 6_500,
            },
            10_000,
        )
        .await
        .unwrap();
    // acme's event 3 (at 3,000) and acme2's only event (at 1,000).
    assert_eq!(removed, 2);
    assert_eq!(ids(store.since("acme", 3, 10).await.unwrap()), vec![4, 5]);
    assert_eq!(
        store.since("acme2", 0, 10).await.unwrap(),
        Since::Resync { oldest: 0 }
    );
    assert_eq!(
        ids(store.since("acme2", 1, 10).await.unwrap()),
        Vec::<u64>::new()
    );

    // Ids never go back, even once everything was trimmed.
    store
        .trim(
            Retention {
                max_events: 0,
                max_age_ms: u64::MAX,
            },
            10_000,
        )
        .await
        .unwrap();
    assert_eq!(store.last_id("acme").await.unwrap(), 5);
    let next = store.append("acme", 11_000, b"{}").unwrap();
    store.flush().await.unwrap();
    assert_eq!(next.id(), Some(6));
    assert_eq!(ids(store.since("acme", 5, 10).await.unwrap()), vec![6]);
}

/// What every [`StateStore`] does: scopes stay apart (also those whose names share a prefix),
/// a removal removes, a scan lists in key order, a write older than the stored one is dropped
/// (before and after a flush).
pub async fn state_store(store: &dyn StateStore) {
    store.put("badges/acme", "u1", 0, Some(b"1")).unwrap();
    store.put("badges/acme", "u2", 0, Some(b"2")).unwrap();
    store.put("badges/acme2", "u1", 0, Some(b"3")).unwrap();
    store.put("badges/acme", "u2", 0, None).unwrap();
    store.flush().await.unwrap();
    assert_eq!(
        store.scan("badges/acme").await.unwrap(),
        vec![("u1".to_string(), b"1".to_vec())]
    );
    assert_eq!(store.scan("badges/acme2").await.unwrap().len(), 1);
    assert!(store.scan("badges").await.unwrap().is_empty());
    store.put("badges/acme", "u0", 0, Some(b"0")).unwrap();
    let keys: Vec<String> = store
        .scan("badges/acme")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["u0", "u1"]);
    store.put("badges/acme", "u0", 0, None).unwrap();
    store.flush().await.unwrap();

    let value = |scan: Vec<(String, Vec<u8>)>| {
        scan.into_iter()
            .find(|(k, _)| k == "v")
            .map(|(_, v)| String::from_utf8(v).unwrap())
    };
    store.put("records/acme", "v", 5, Some(b"five")).unwrap();
    store.put("records/acme", "v", 3, Some(b"three")).unwrap();
    assert_eq!(
        value(store.scan("records/acme").await.unwrap()).as_deref(),
        Some("five")
    );
    store.flush().await.unwrap();
    store.put("records/acme", "v", 4, Some(b"four")).unwrap();
    store.flush().await.unwrap();
    assert_eq!(
        value(store.scan("records/acme").await.unwrap()).as_deref(),
        Some("five")
    );
    store
        .put("records/acme", "v", 5, Some(b"five again"))
        .unwrap();
    store.put("records/acme", "v", 9, Some(b"nine")).unwrap();
    store.flush().await.unwrap();
    assert_eq!(
        value(store.scan("records/acme").await.unwrap()).as_deref(),
        Some("nine")
    );
    store.put("records/acme", "v", 9, None).unwrap();
    store.flush().await.unwrap();
    assert_eq!(value(store.scan("records/acme").await.unwrap()), None);
}

/// What every [`VersionStore`] does: versions list newest first and page with `before`,
/// documents (also those whose names share a prefix) stay apart, content comes back as stored,
/// ids grow, and retention by count and by age removes the oldest but never the newest.
pub async fn version_store(store: &dyn VersionStore) {
    let keep_all = VersionRetention {
        keep: 100,
        not_before_ms: None,
    };
    let new = |at_ms: i64, authors: &[&str], label: Option<&str>| NewVersion {
        at_ms,
        authors: authors.iter().map(|a| a.to_string()).collect(),
        label: label.map(str::to_owned),
        reason: VersionReason::Auto,
    };
    let doc = "acme/q/1";
    let mut ids = Vec::new();
    for n in 0..5i64 {
        let content = vec![n as u8; 10 + n as usize];
        let v = store
            .put(
                doc,
                new(1_000 * n, &["ann", "bob"], None),
                &content,
                keep_all,
            )
            .await
            .unwrap();
        assert_eq!(v.bytes, content.len() as u64);
        assert_eq!(v.authors, ["ann", "bob"]);
        if let Some(last) = ids.last() {
            assert!(v.id > *last, "ids grow");
        }
        ids.push(v.id);
    }
    let other = store
        .put("acme/q/10", new(5, &[], Some("other")), b"o", keep_all)
        .await
        .unwrap();
    assert_eq!(other.label.as_deref(), Some("other"));
    let listed: Vec<u64> = store
        .list(doc, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|v| v.id)
        .collect();
    let newest_first: Vec<u64> = ids.iter().rev().copied().collect();
    assert_eq!(listed, newest_first);
    let page: Vec<u64> = store
        .list(doc, Some(ids[3]), 2)
        .await
        .unwrap()
        .iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(page, vec![ids[2], ids[1]]);
    let (version, content) = store.get(doc, ids[2]).await.unwrap().unwrap();
    assert_eq!(version.at_ms, 2_000);
    assert_eq!(content, vec![2u8; 12]);
    assert!(store.get(doc, other.id).await.unwrap().is_none());
    assert!(store.get("acme/q/2", ids[0]).await.unwrap().is_none());

    // By count: the two newest stay.
    let removed = store
        .prune(
            doc,
            VersionRetention {
                keep: 2,
                not_before_ms: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(removed, 3);
    assert!(store.get(doc, ids[0]).await.unwrap().is_none());
    // By age, at the next put: everything before 4,500 ms goes, but not the new one.
    let latest = store
        .put(
            doc,
            new(4_000, &[], Some("before release")),
            b"v",
            VersionRetention {
                keep: 100,
                not_before_ms: Some(4_500),
            },
        )
        .await
        .unwrap();
    let left: Vec<u64> = store
        .list(doc, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(left, vec![latest.id]);
    assert_eq!(store.list("acme/q/10", None, 100).await.unwrap().len(), 1);
}
