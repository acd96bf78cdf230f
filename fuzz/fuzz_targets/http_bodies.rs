//! The HTTP bodies a client posts: a sync round (`POST /api/v1/docs/{doc}/sync`), an event
//! (`POST /api/v1/events`) and a presence (`POST /api/v1/presence`). Any bytes are accepted or
//! refused with a clear error, never a panic, within the allocation bound; what is accepted
//! holds to the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::dashboard::{catalogue, protocol};
use tandem::http::docs::SyncBody;
use tandem::Config;
use tandem_fuzz::{check_bound, measure};
use tandem_sync::AwarenessUpdate;

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let config = Config::default();
    match selector % 3 {
        0 => {
            let (parsed, allocated) = measure(|| SyncBody::parse(body, &config));
            check_bound("SyncBody::parse", body.len(), allocated, 64);
            let Ok(sync) = parsed else { return };
            assert!(sync.client_id < tandem_crdt::SERVER_CLIENT_BASE);
            assert!(sync
                .update
                .as_ref()
                .is_none_or(|u| u.len() <= config.max_frame_bytes));
            if let Some(awareness) = &sync.awareness {
                assert!(awareness.len() <= config.max_dashboard_frame_bytes);
                let update = AwarenessUpdate::decode(awareness).expect("checked");
                assert!(update.entries.iter().all(|e| e.client_id == sync.client_id));
            }
        }
        1 => {
            let (validated, allocated) = measure(|| {
                serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .map(catalogue::validate)
            });
            check_bound("catalogue::validate", body.len(), allocated, 64);
            if let Some(Ok(event)) = validated {
                // What is stored validates again as it is, as the same type.
                let again = catalogue::validate(serde_json::Value::Object(event.fields.clone()))
                    .expect("an accepted event validates again");
                assert_eq!(again.kind, event.kind);
            }
        }
        _ => {
            let (parsed, allocated) =
                measure(|| match serde_json::from_slice::<serde_json::Value>(body) {
                    Ok(serde_json::Value::Object(fields)) => Some(protocol::presence(&fields)),
                    _ => None,
                });
            check_bound("protocol::presence", body.len(), allocated, 64);
            if let Some(Ok(update)) = parsed {
                for field in [&update.workspace, &update.current_page, &update.name] {
                    assert!(field
                        .as_ref()
                        .is_none_or(|f| f.len() <= protocol::MAX_PRESENCE_FIELD_BYTES));
                }
            }
        }
    }
});
