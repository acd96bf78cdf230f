//! The dashboard's client frames on `/ws`: any text parses to an action or an error frame,
//! never a panic, within the allocation bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::dashboard::protocol;
use tandem_fuzz::{check_bound, measure};

fuzz_target!(|data: &[u8]| {
    // A WebSocket text frame is UTF-8 by the time it is parsed.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (parsed, allocated) = measure(|| protocol::parse(text));
    check_bound("protocol::parse", data.len(), allocated, 64);
    match parsed {
        Ok(action) => {
            // Every refusal is a frame the client can read; every action names bounded text.
            if let protocol::Action::Lock { resource } | protocol::Action::Unlock { resource } =
                &action
            {
                assert!(!resource.is_empty());
            }
        }
        Err(err) => {
            let frame = err.frame();
            let value: serde_json::Value =
                serde_json::from_str(frame.as_str()).expect("an error frame is JSON");
            assert_eq!(value["type"], "error", "{value}");
        }
    }
});
