//! Document-name globs of a token's `docs` grants.

/// How specific a pattern is: its literal characters.
pub(super) fn literal_len(pattern: &str) -> usize {
    pattern.chars().filter(|&c| c != '*').count()
}

/// Glob matching where `*` matches any run of characters, `/` included; everything else is
/// literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and where in `text` it started matching: on a mismatch the star
    // swallows one more byte and matching resumes after it.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_star_crosses_slashes() {
        assert!(glob_match("acme/queries/*", "acme/queries/456"));
        assert!(glob_match("acme/*", "acme/queries/456/x"));
        assert!(glob_match("*", "anything/at/all"));
        assert!(glob_match("acme/*/title", "acme/q/1/title"));
        assert!(!glob_match("acme/queries/*", "acme/reports/1"));
        assert!(!glob_match("acme/q", "acme/qq"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }
}
