//! The awareness decoder: any payload decodes to entries or a clear error, never a panic,
//! within the allocation bound; what it accepts holds only JSON objects or null as states (as
//! `JSON.parse` reads them: a number beyond f64 is Infinity there and a lone surrogate escape a
//! string, where serde_json's `Value` refuses both, and an object keyed by serde_json's private
//! raw-value token is an object), and encodes back to an update that decodes
//! to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::{check_bound, measure};
use tandem_sync::AwarenessUpdate;

fuzz_target!(|data: &[u8]| {
    let (decoded, allocated) = measure(|| AwarenessUpdate::decode(data));
    check_bound("AwarenessUpdate::decode", data.len(), allocated, 32);
    let Ok(update) = decoded else { return };
    for entry in &update.entries {
        assert!(entry.client_id < 1 << 53);
        if let Some(state) = &entry.state {
            match serde_json::from_str::<serde_json::Value>(state) {
                Ok(value) => assert!(value.is_object(), "{state}"),
                Err(err) => {
                    let err = err.to_string();
                    // serde_json (with its `raw_value` feature, which a dependency turns on)
                    // reads an object whose key is its private RawValue token as a raw value:
                    // to `JSON.parse` it is an object like any other.
                    let raw_value_token = err.contains("raw value")
                        && state.contains("$serde_json::private::RawValue");
                    let js_reads_it = err.starts_with("number out of range")
                        || raw_value_token
                        || ((err.contains("surrogate") || err.contains("hex escape"))
                            && escapes_are_well_formed(state));
                    assert!(
                        js_reads_it,
                        "an accepted state is not JSON ({err}): {state}"
                    );
                }
            }
        }
    }
    let again = AwarenessUpdate::decode(&update.encode()).expect("what was accepted re-decodes");
    assert_eq!(again, update);
});

/// Whether every `\u` escape of `json` has its four hex digits, as `JSON.parse` requires (it
/// takes a lone surrogate as it is).
fn escapes_are_well_formed(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes.get(i + 1) == Some(&b'u') {
                let digits = bytes.get(i + 2..i + 6);
                if !digits.is_some_and(|d| d.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    true
}
