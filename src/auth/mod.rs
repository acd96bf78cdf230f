//! Authentication and authorization: who a token speaks for ([`Auth::authenticate`] →
//! [`Principal`]), whether its plan has real-time features ([`Auth::check_plan`]), what it may do
//! to a document ([`Auth::doc_access`]), and who a dashboard request speaks for
//! ([`identity`]). Refusals are [`AuthError`]s; their HTTP answers are `crate::error`'s.
//!
//! Tokens ([`token`]) are JWTs, verified with `jsonwebtoken`: HS256 with a shared secret, and/or
//! EdDSA or RS256 with a public key. A token names its user (`sub`), workspace, plan, role,
//! optionally the documents it may open (`docs`: [`glob`] → `read`/`write`), and its expiry. A
//! document belongs to the workspace named by the first segment of its name, and no token
//! reaches across workspaces.
//!
//! With neither a secret nor a key configured the server runs open: every request is allowed as
//! an anonymous admin. That is for local development only; `serve` refuses it on a non-loopback
//! bind unless `--insecure-no-auth` is given.

mod error;
pub mod glob;
pub mod identity;
pub mod token;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tandem_crdt::Access;

use crate::docname::{DocName, RoomKind};
pub use error::{AuthConfigError, AuthError};
use glob::{glob_match, literal_len};
use identity::{valid_workspace, Plan, MAX_USER_BYTES, OPEN_WORKSPACE};
pub use identity::{Identity, IdentityError, IdentityParams};
pub use token::{mint, now_secs, Claims, DocPermission, Role, Secret};
use token::{random_secret, DEV_TOKEN_SECS};

/// Who is asking, once their token checked out.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: String,
    pub name: Option<String>,
    /// `None` in open mode only: every workspace.
    pub workspace: Option<String>,
    pub plan: Option<String>,
    pub role: Role,
    docs: Option<Vec<(String, DocPermission)>>,
    /// Seconds since the epoch; `None` in open mode.
    pub expires_at: Option<u64>,
}

impl Principal {
    fn open() -> Principal {
        Principal {
            user: "anonymous".into(),
            name: None,
            workspace: None,
            plan: None,
            role: Role::Admin,
            docs: None,
            expires_at: None,
        }
    }

    /// How long until the token expires; `None` when it never does (open mode, or an `exp` so
    /// far away that it does not fit the clock).
    pub fn expires_in(&self) -> Option<Duration> {
        let exp = UNIX_EPOCH.checked_add(Duration::from_secs(self.expires_at?))?;
        Some(
            exp.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }
}

/// The verifier of a server.
pub struct Auth {
    /// One decoding key per accepted algorithm; empty in open mode.
    keys: Vec<(Algorithm, DecodingKey)>,
    leeway_secs: u64,
    audience: Option<String>,
    realtime_plans: Vec<String>,
    /// In open mode only: the secret of development tokens, made up at start. They say who a
    /// browser window is (so two windows are two users); they grant nothing, since open mode
    /// allows everything.
    dev_secret: Option<Secret>,
}

/// What [`Auth`] is built from.
pub struct AuthSettings<'a> {
    pub secret: Option<&'a Secret>,
    pub public_key: Option<&'a std::path::Path>,
    pub realtime_plans: &'a [String],
    pub leeway_secs: u64,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<&'a str>,
    /// In open mode: the file that keeps the key of development tokens across restarts
    /// (made on first start); `None`: a new key per start.
    pub dev_key_file: Option<&'a std::path::Path>,
}

impl Auth {
    /// Builds the verifier.
    ///
    /// # Errors
    /// The public key file cannot be read or parsed.
    pub fn new(settings: AuthSettings<'_>) -> Result<Auth, AuthConfigError> {
        let mut keys = Vec::new();
        if let Some(secret) = settings.secret {
            keys.push((
                Algorithm::HS256,
                DecodingKey::from_secret(secret.expose().as_bytes()),
            ));
        }
        if let Some(path) = settings.public_key {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| AuthConfigError::ReadKey {
                path: shown.clone(),
                source,
            })?;
            if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
                keys.push((Algorithm::EdDSA, key));
            } else if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                keys.push((Algorithm::RS256, key));
            } else {
                return Err(AuthConfigError::BadKey { path: shown });
            }
        }
        let dev_secret = if keys.is_empty() {
            Some(match settings.dev_key_file {
                Some(path) => dev_key(path)?,
                None => random_secret(),
            })
        } else {
            None
        };
        Ok(Auth {
            keys,
            leeway_secs: settings.leeway_secs,
            audience: settings.audience.map(str::to_owned),
            realtime_plans: settings.realtime_plans.to_vec(),
            dev_secret,
        })
    }

    /// A development token for `name` (open mode only): the token and the user id it names,
    /// the name in lower case with anything but letters and digits turned into `-`.
    pub fn mint_dev(&self, name: &str) -> Option<(String, String)> {
        let secret = self.dev_secret.as_ref()?;
        let mut user: String = name
            .trim()
            .chars()
            .take(64)
            .map(|c| {
                if c.is_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        if user.trim_matches('-').is_empty() {
            user = "user".into();
        }
        let claims = Claims {
            sub: user.clone(),
            name: Some(name.trim().to_owned()).filter(|n| !n.is_empty()),
            workspace: OPEN_WORKSPACE.into(),
            plan: None,
            role: Role::Member,
            docs: None,
            exp: now_secs() + DEV_TOKEN_SECS,
            iat: Some(now_secs()),
            nbf: None,
        };
        mint(secret, &claims).ok().map(|token| (token, user))
    }

    /// Whether the server runs without authentication.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a token and returns who it speaks for.
    ///
    /// # Errors
    /// No token, a malformed one, a bad signature, an algorithm not configured, or an expired
    /// token.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Principal, AuthError> {
        if self.is_open() {
            // No token is the anonymous user; a token must be one of this server's development
            // tokens, which name the user (its key is kept across restarts). A token it cannot
            // verify is refused, not taken as anonymous: the client learns it must sign in
            // again rather than turning into someone else. Open mode allows everything, so one
            // past its expiry still names them (a tab left open for a week does not turn
            // anonymous).
            let Some(token) = token.filter(|t| !t.is_empty()) else {
                return Ok(Principal::open());
            };
            let mut validation = Validation::new(Algorithm::HS256);
            validation.validate_exp = false;
            validation.set_required_spec_claims::<&str>(&[]);
            let secret = self
                .dev_secret
                .as_ref()
                .ok_or_else(|| AuthError::InvalidToken("no development key".into()))?;
            let key = DecodingKey::from_secret(secret.expose().as_bytes());
            let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|_| {
                AuthError::InvalidToken("not a development token of this server".into())
            })?;
            let mut principal = Principal::open();
            principal.user = data.claims.sub;
            principal.name = data.claims.name;
            return Ok(principal);
        }
        let token = token
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::MissingToken)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| AuthError::InvalidToken("malformed".into()))?;
        let (algorithm, key) = self
            .keys
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .ok_or_else(|| {
                AuthError::InvalidToken(format!("algorithm {:?} is not accepted", header.alg))
            })?;
        let mut validation = Validation::new(*algorithm);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        match &self.audience {
            Some(audience) => validation.set_audience(&[audience]),
            // Tokens from identity providers often carry an `aud`; without a configured
            // audience it is not checked.
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => AuthError::InvalidToken("bad signature".into()),
                ErrorKind::InvalidAudience => AuthError::InvalidToken("wrong audience".into()),
                ErrorKind::ImmatureSignature => AuthError::InvalidToken("not valid yet".into()),
                ErrorKind::Json(_) | ErrorKind::MissingRequiredClaim(_) => {
                    AuthError::InvalidToken("missing or malformed claims".into())
                }
                _ => AuthError::InvalidToken("malformed".into()),
            }
        })?;
        let claims = data.claims;
        if claims.workspace.is_empty() {
            return Err(AuthError::InvalidToken(
                "the workspace claim is empty".into(),
            ));
        }
        if claims.sub.is_empty()
            || claims.sub.len() > MAX_USER_BYTES
            || claims.sub.chars().any(char::is_control)
        {
            return Err(AuthError::InvalidToken(format!(
                "the sub claim must be 1 to {MAX_USER_BYTES} bytes without control characters"
            )));
        }
        if claims
            .iat
            .is_some_and(|iat| iat > now_secs().saturating_add(self.leeway_secs))
        {
            return Err(AuthError::InvalidToken("issued in the future".into()));
        }
        Ok(Principal {
            user: claims.sub,
            name: claims.name,
            workspace: Some(claims.workspace),
            plan: claims.plan,
            role: claims.role,
            docs: claims.docs.map(|d| d.into_iter().collect()),
            expires_at: Some(claims.exp.saturating_add(self.leeway_secs)),
        })
    }

    /// Real-time features are paid: the token's plan must be one of `--realtime-plans`.
    /// Service tokens (backends) are not on a plan.
    ///
    /// # Errors
    /// [`AuthError::PlanRequired`].
    pub fn check_plan(&self, principal: &Principal) -> Result<(), AuthError> {
        if self.is_open() || principal.role == Role::Service {
            return Ok(());
        }
        let allowed = principal
            .plan
            .as_ref()
            .is_some_and(|p| self.realtime_plans.iter().any(|r| r == p));
        if allowed {
            Ok(())
        } else {
            Err(AuthError::PlanRequired {
                plan: principal.plan.clone(),
                required: self.realtime_plans.clone(),
            })
        }
    }

    /// What `principal` may do to `doc`.
    ///
    /// # Errors
    /// The document is in another workspace, or outside the token's `docs` patterns.
    ///
    /// The dashboard's rooms are the server's: the workspace's presence room is open to all of
    /// its users and an inbox only to its user, both read-only for documents (awareness is what
    /// they are for).
    pub fn doc_access(&self, principal: &Principal, doc: &DocName) -> Result<Access, AuthError> {
        let Some(workspace) = &principal.workspace else {
            return Ok(match doc.kind() {
                RoomKind::Document => Access::ReadWrite,
                RoomKind::Presence | RoomKind::Inbox { .. } => Access::ReadOnly,
            });
        };
        if doc.workspace() != workspace {
            return Err(AuthError::WrongWorkspace);
        }
        match doc.kind() {
            RoomKind::Document => {}
            RoomKind::Presence => return Ok(Access::ReadOnly),
            RoomKind::Inbox { user } if user == principal.user => return Ok(Access::ReadOnly),
            RoomKind::Inbox { .. } => return Err(AuthError::DocumentForbidden),
        }
        granted(principal.docs.as_deref(), doc)
    }

    /// Checks the token of a dashboard request and says who it speaks for.
    ///
    /// # Errors
    /// The token's refusal, a workspace other than the token's, or a malformed name.
    pub fn identify(
        &self,
        token: Option<&str>,
        params: &IdentityParams,
        plan: Plan,
    ) -> Result<Identity, IdentityError> {
        let principal = self.authenticate(token)?;
        if plan == Plan::Realtime {
            self.check_plan(&principal)?;
        }
        let workspace = match (&principal.workspace, &params.workspace) {
            (Some(own), None) => own.clone(),
            (Some(own), Some(asked)) if own == asked => own.clone(),
            (Some(_), Some(_)) => return Err(AuthError::WrongWorkspace.into()),
            (None, Some(asked)) if valid_workspace(asked) => asked.clone(),
            (None, Some(_)) => return Err(IdentityError::BadWorkspace),
            (None, None) => OPEN_WORKSPACE.to_owned(),
        };
        let open = self.is_open();
        let expires_in = principal.expires_in();
        let user = match (&params.user, open) {
            (Some(user), true) => user.clone(),
            _ => principal.user,
        };
        if user.is_empty() || user.len() > MAX_USER_BYTES || user.chars().any(char::is_control) {
            return Err(IdentityError::BadUser);
        }
        let name = match (principal.name, open) {
            (Some(name), _) => Some(name),
            (None, true) => params.name.clone(),
            (None, false) => None,
        };
        Ok(Identity {
            workspace,
            user,
            name,
            role: principal.role,
            expires_in,
            docs: principal.docs,
        })
    }

    /// Checks everything a real-time request for `doc` needs and returns the access granted.
    ///
    /// # Errors
    /// Any refusal of [`Auth::authenticate`], [`Auth::check_plan`] or [`Auth::doc_access`].
    pub fn authorize_doc(
        &self,
        token: Option<&str>,
        doc: &DocName,
    ) -> Result<(Principal, Access), AuthError> {
        let principal = self.authenticate(token)?;
        self.check_plan(&principal)?;
        let access = self.doc_access(&principal, doc)?;
        Ok((principal, access))
    }
}

/// The access `docs` (a token's document globs; `None`: the whole workspace) grants to `doc`
/// of the token's own workspace.
///
/// # Errors
/// [`AuthError::DocumentForbidden`] when no glob matches.
pub fn granted(
    docs: Option<&[(String, DocPermission)]>,
    doc: &DocName,
) -> Result<Access, AuthError> {
    // `docs` narrows any role; without it the whole workspace is read-write.
    let Some(patterns) = docs else {
        return Ok(Access::ReadWrite);
    };
    // The most specific matching pattern decides (the one with the most literal
    // characters); between equally specific ones, read-only wins.
    let best = patterns
        .iter()
        .filter(|(pattern, _)| glob_match(pattern, doc.as_str()))
        .max_by(|(a, pa), (b, pb)| literal_len(a).cmp(&literal_len(b)).then_with(|| pb.cmp(pa)));
    match best {
        Some((_, DocPermission::Write)) => Ok(Access::ReadWrite),
        Some((_, DocPermission::Read)) => Ok(Access::ReadOnly),
        None => Err(AuthError::DocumentForbidden),
    }
}

/// The key of development tokens kept in `path`: read when it is there, made (from the OS's
/// randomness, readable by the owner only) when it is not.
fn dev_key(path: &std::path::Path) -> Result<Secret, AuthConfigError> {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            return text
                .trim()
                .parse()
                .map_err(|_| AuthConfigError::BadDevKey { path: shown });
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(AuthConfigError::DevKey {
                path: shown,
                source,
            })
        }
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| AuthConfigError::DevKey {
        path: shown.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        std::io::Write::write_all(&mut options.open(path)?, text.as_bytes())
    };
    match write() {
        Ok(()) => {}
        // Another process made it first: theirs is the key.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => return dev_key(path),
        Err(source) => {
            return Err(AuthConfigError::DevKey {
                path: shown,
                source,
            })
        }
    }
    tracing::info!(path = %shown, "made the key of development tokens");
    text.parse()
        .map_err(|_| AuthConfigError::BadDevKey { path: shown })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use jsonwebtoken::{EncodingKey, Header};

    use super::*;

    fn auth() -> (Auth, Secret) {
        let secret: Secret = "unit-secret".parse().unwrap();
        let plans = vec!["scale".to_string()];
        let auth = Auth::new(AuthSettings {
            secret: Some(&secret),
            public_key: None,
            realtime_plans: &plans,
            leeway_secs: 0,
            audience: None,
            dev_key_file: None,
        })
        .unwrap();
        (auth, secret)
    }

    #[test]
    fn an_expired_development_token_still_names_its_user() {
        let open = Auth::new(AuthSettings {
            secret: None,
            public_key: None,
            realtime_plans: &[],
            leeway_secs: 0,
            audience: None,
            dev_key_file: None,
        })
        .unwrap();
        let (fresh, user) = open.mint_dev("Ada").unwrap();
        assert_eq!(open.authenticate(Some(&fresh)).unwrap().user, user);
        let expired = mint(
            open.dev_secret.as_ref().unwrap(),
            &Claims {
                sub: "ada".into(),
                name: Some("Ada".into()),
                workspace: "default".into(),
                plan: None,
                role: Role::Member,
                docs: None,
                exp: now_secs() - 3600,
                iat: None,
                nbf: None,
            },
        )
        .unwrap();
        let principal = open.authenticate(Some(&expired)).unwrap();
        assert_eq!(
            (principal.user.as_str(), principal.name.as_deref()),
            ("ada", Some("Ada"))
        );
        // One signed by anyone else is refused (not taken as anonymous); no token at all is
        // the anonymous user.
        let forged = mint(&"other".parse().unwrap(), &claims()).unwrap();
        assert!(matches!(
            open.authenticate(Some(&forged)),
            Err(AuthError::InvalidToken(_))
        ));
        assert!(matches!(
            open.authenticate(Some("garbage")),
            Err(AuthError::InvalidToken(_))
        ));
        assert_eq!(
            open.authenticate(None).unwrap().user,
            Principal::open().user
        );
    }

    fn claims() -> Claims {
        Claims {
            sub: "123".into(),
            name: Some("Ada".into()),
            workspace: "acme".into(),
            plan: Some("scale".into()),
            role: Role::Member,
            docs: None,
            exp: now_secs() + 600,
            iat: None,
            nbf: None,
        }
    }

    fn doc(name: &str) -> DocName {
        DocName::parse(name).unwrap()
    }

    #[test]
    fn numeric_sub_and_defaults_are_accepted() {
        let (auth, secret) = auth();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": 123, "workspace": "acme", "plan": "scale", "exp": now_secs() + 60}),
            &EncodingKey::from_secret(secret.expose().as_bytes()),
        )
        .unwrap();
        let principal = auth.authenticate(Some(&token)).unwrap();
        assert_eq!(principal.user, "123");
        assert_eq!(principal.role, Role::Member);
    }

    #[test]
    fn refusals_are_specific() {
        let (auth, secret) = auth();
        assert_eq!(
            auth.authenticate(None).unwrap_err(),
            AuthError::MissingToken
        );
        assert!(matches!(
            auth.authenticate(Some("not.a.jwt")),
            Err(AuthError::InvalidToken(_))
        ));
        let other: Secret = "other".parse().unwrap();
        assert_eq!(
            auth.authenticate(Some(&mint(&other, &claims()).unwrap()))
                .unwrap_err(),
            AuthError::InvalidToken("bad signature".into())
        );
        let expired = Claims {
            exp: now_secs() - 10,
            iat: None,
            nbf: None,
            ..claims()
        };
        assert_eq!(
            auth.authenticate(Some(&mint(&secret, &expired).unwrap()))
                .unwrap_err(),
            AuthError::Expired
        );
        let free = Claims {
            plan: Some("free".into()),
            ..claims()
        };
        let principal = auth
            .authenticate(Some(&mint(&secret, &free).unwrap()))
            .unwrap();
        assert!(matches!(
            auth.check_plan(&principal),
            Err(AuthError::PlanRequired { .. })
        ));
        let principal = auth
            .authenticate(Some(&mint(&secret, &claims()).unwrap()))
            .unwrap();
        assert_eq!(
            auth.doc_access(&principal, &doc("globex/queries/1")),
            Err(AuthError::WrongWorkspace)
        );
        assert_eq!(
            auth.doc_access(&principal, &doc("acme/queries/1")),
            Ok(Access::ReadWrite)
        );
    }

    #[test]
    fn most_specific_pattern_decides() {
        let (auth, secret) = auth();
        let scoped = Claims {
            docs: Some(BTreeMap::from([
                ("acme/*".to_string(), DocPermission::Write),
                ("acme/reports/*".to_string(), DocPermission::Read),
                ("acme/queries/*".to_string(), DocPermission::Write),
            ])),
            ..claims()
        };
        let principal = auth
            .authenticate(Some(&mint(&secret, &scoped).unwrap()))
            .unwrap();
        assert_eq!(
            auth.doc_access(&principal, &doc("acme/reports/9")),
            Ok(Access::ReadOnly)
        );
        assert_eq!(
            auth.doc_access(&principal, &doc("acme/queries/9")),
            Ok(Access::ReadWrite)
        );
        assert_eq!(
            auth.doc_access(&principal, &doc("acme/other")),
            Ok(Access::ReadWrite)
        );
        let narrow = Claims {
            docs: Some(BTreeMap::from([(
                "acme/queries/*".to_string(),
                DocPermission::Read,
            )])),
            ..claims()
        };
        let principal = auth
            .authenticate(Some(&mint(&secret, &narrow).unwrap()))
            .unwrap();
        assert_eq!(
            auth.doc_access(&principal, &doc("acme/reports/1")),
            Err(AuthError::DocumentForbidden)
        );
    }

    #[test]
    fn aud_is_ignored_unless_configured_docs_narrow_every_role_and_workspace_is_required() {
        let (auth, secret) = auth();
        let encode = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(secret.expose().as_bytes()),
            )
            .unwrap()
        };
        let exp = now_secs() + 60;
        let with_aud = encode(serde_json::json!({
            "sub": "1", "workspace": "acme", "plan": "scale", "exp": exp, "aud": "some-idp"
        }));
        assert!(auth.authenticate(Some(&with_aud)).is_ok());
        let empty_workspace = encode(serde_json::json!({
            "sub": "1", "workspace": "", "plan": "scale", "exp": exp
        }));
        assert!(matches!(
            auth.authenticate(Some(&empty_workspace)),
            Err(AuthError::InvalidToken(_))
        ));
        let scoped_admin = encode(serde_json::json!({
            "sub": "1", "workspace": "acme", "plan": "scale", "exp": exp, "role": "admin",
            "docs": {"acme/reports/*": "read"}
        }));
        let admin = auth.authenticate(Some(&scoped_admin)).unwrap();
        assert_eq!(
            auth.doc_access(&admin, &doc("acme/reports/1")),
            Ok(Access::ReadOnly)
        );
        assert_eq!(
            auth.doc_access(&admin, &doc("acme/queries/1")),
            Err(AuthError::DocumentForbidden)
        );
        // An `exp` beyond the clock's range never expires rather than panicking.
        let far = Principal {
            expires_at: Some(u64::MAX),
            ..admin
        };
        assert_eq!(far.expires_in(), None);
    }

    #[test]
    fn secrets_do_not_leak_through_debug() {
        let secret: Secret = "hunter2".parse().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
