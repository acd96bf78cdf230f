//! Token checking: any string is refused with a reason, never a panic, within the allocation
//! bound, and nothing but the one token signed with the server's secret is accepted (the corpus
//! starts from it, so the fuzzer mutates a valid token: header, claims and signature).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tandem::auth::{mint, Auth, AuthSettings, Claims, Role, Secret};
use tandem_fuzz::{check_bound, measure};

/// The secret the seed corpus's tokens are signed with (`examples/fuzz_seeds.rs`).
const SECRET: &str = "fuzzing-secret-0123456789abcdef0123456789abcdef";

struct Fixture {
    auth: Auth,
    valid: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let secret: Secret = SECRET.parse().expect("a secret");
        let auth = Auth::new(AuthSettings {
            secret: Some(&secret),
            public_key: None,
            realtime_plans: &["scale".to_owned()],
            leeway_secs: 0,
            audience: None,
            dev_key_file: None,
        })
        .expect("an HS256 verifier");
        let claims = Claims {
            sub: "ada".into(),
            name: Some("Ada".into()),
            workspace: "acme".into(),
            plan: Some("scale".into()),
            role: Role::Member,
            docs: None,
            exp: 4_102_444_800,
            iat: Some(1_700_000_000),
            nbf: None,
        };
        let valid = mint(&secret, &claims).expect("minted");
        Fixture { auth, valid }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let fixture = fixture();
    let (checked, allocated) = measure(|| fixture.auth.authenticate(Some(token)));
    check_bound("Auth::authenticate", data.len(), allocated, 64);
    if let Ok(principal) = checked {
        assert_eq!(
            token, fixture.valid,
            "a forged token was accepted: {principal:?}"
        );
    }
});
