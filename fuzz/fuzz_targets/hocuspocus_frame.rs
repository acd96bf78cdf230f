//! The Hocuspocus frame decoder: any bytes decode to a frame or a clear error, never a panic,
//! without allocating (strings borrow from the frame); a document message's body range lies
//! within the frame, and what the server writes for a decoded message decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::{check_bound, measure};
use tandem_sync::hocuspocus::{self, Body, Frame};

fuzz_target!(|data: &[u8]| {
    let (decoded, allocated) = measure(|| hocuspocus::decode(data));
    check_bound("hocuspocus::decode", data.len(), allocated, 0);
    let Ok(Frame::Doc {
        address,
        body,
        message,
    }) = decoded
    else {
        return;
    };
    assert!(body.start < body.end && body.end == data.len());
    let (name, session) = hocuspocus::split_address(address);
    assert!(address.starts_with(name));
    if let Some(session) = session {
        assert!(!session.is_empty() && address.ends_with(session));
    }
    let again = match message {
        Body::Token { token, version } => hocuspocus::token(address, token, version),
        Body::PermissionDenied(reason) => hocuspocus::permission_denied(address, reason),
        Body::Authenticated(scope) => hocuspocus::authenticated(address, scope),
        Body::Stateless(payload) => hocuspocus::stateless(address, payload),
        Body::Close(reason) => hocuspocus::close(address, reason),
        Body::SyncStatus(taken) => hocuspocus::sync_status(address, taken),
        Body::Room(_) => hocuspocus::on_address(address, &data[body.clone()]),
        Body::TokenRequest => return,
    };
    let Ok(Frame::Doc {
        address: a,
        message: m,
        ..
    }) = hocuspocus::decode(&again)
    else {
        panic!("what the server writes does not decode: {again:?}");
    };
    assert_eq!((a, &m), (address, &message));
});
