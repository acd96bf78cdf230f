//! The check every update passes before yrs decodes it (`tandem_sync::inspect_v1`), against
//! yrs's own decoder: the check allocates (almost) nothing and never panics; what it accepts
//! yrs decodes within the allocation bound (or refuses, or panics inside the room's guard);
//! what it refuses for any reason but nesting, legacy JSON content, a client named twice (or
//! past 53 bits) or a clock past u32, yrs cannot decode either,
//! so no valid update is lost to it.
#![no_main]

use std::panic::{catch_unwind, AssertUnwindSafe};

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::{check_bound, contain_panics, measure};
use tandem_sync::{inspect_v1, UpdateError};
use yrs::updates::decoder::Decode;
use yrs::Update;

fuzz_target!(|data: &[u8]| {
    contain_panics();
    tandem_fuzz::guarded(|| {
        let (inspected, allocated) = measure(|| inspect_v1(data));
        check_bound("inspect_v1", data.len(), allocated, 0);
        let decode =
            || measure(|| catch_unwind(AssertUnwindSafe(|| Update::decode_v1(data).is_ok())));
        match inspected {
            Ok(_) => {
                let (_, allocated) = decode();
                check_bound("Update::decode_v1", data.len(), allocated, 512);
            }
            // Deeper than the server accepts: yrs would read it (and, deeper still, overflow).
            Err(UpdateError::TooDeep) => {}
            // More than its bytes hold: yrs would fail too, after reserving for it (the very
            // thing the check is for), so it is not asked.
            Err(UpdateError::Claim { .. }) => {}
            // Legacy JSON content: yrs reads it but cannot read back what it makes of it. A
            // client named twice (or under an id past 53 bits, which yrs folds into another),
            // or clocks past u32: yrs decodes them into blocks that overlap, which its block
            // store then frees while in use.
            Err(
                UpdateError::Unsupported(_)
                | UpdateError::DuplicateClient(_)
                | UpdateError::ClockOverflow(_)
                | UpdateError::ClientTooLarge(_),
            ) => {}
            Err(err) => {
                let (decoded, _) = decode();
                assert!(
                    !matches!(decoded, Ok(true)),
                    "refused ({err}) an update yrs decodes"
                );
            }
        }
    });
});
