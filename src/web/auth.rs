//! Who may use the pages: nobody is asked on a loopback address without credentials; any other
//! address needs a bearer token or users with hashed passwords, and refuses to start without.

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::Engine as _;
use std::collections::HashMap;
use std::sync::Mutex;

/// How requests are authenticated.
#[derive(Default)]
pub struct Auth {
    /// A shared bearer token (also accepted as a basic-auth password, the user name then
    /// naming who acts).
    token: Option<String>,
    /// User name → argon2 PHC string.
    users: HashMap<String, String>,
    /// `Authorization` headers already verified, so argon2 runs once per credential.
    verified: Mutex<HashMap<String, String>>,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Caller {
    /// Authenticated as this user.
    User(String),
    /// No credentials are configured (loopback only): the page names who acts.
    Local,
}

impl Auth {
    /// From the token and the users file's text (`name:$argon2id$...` per line, `#` comments).
    pub fn new(token: Option<String>, users: Option<(&str, &str)>) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        if let Some((file, text)) = users {
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (name, hash) = line.split_once(':').ok_or_else(|| {
                    anyhow::anyhow!("{file}:{}: expected name:$argon2id$... ", i + 1)
                })?;
                PasswordHash::new(hash).map_err(|e| {
                    anyhow::anyhow!(
                        "{file}:{}: the password of \"{name}\" is not an argon2 hash ({e}); make one with `vitalflow board-password`",
                        i + 1
                    )
                })?;
                map.insert(name.to_string(), hash.to_string());
            }
            if map.is_empty() {
                anyhow::bail!("{file}: no users");
            }
        }
        if token.as_deref().is_some_and(|t| t.len() < 16) {
            anyhow::bail!("VITALFLOW_BOARD_TOKEN: a token needs at least 16 characters");
        }
        Ok(Auth {
            token,
            users: map,
            verified: Mutex::default(),
        })
    }

    /// Whether any credential is configured.
    pub fn required(&self) -> bool {
        self.token.is_some() || !self.users.is_empty()
    }

    /// Checks a request's `Authorization` header; `None`: refused (401).
    pub fn check(&self, header: Option<&str>) -> Option<Caller> {
        if !self.required() {
            return Some(Caller::Local);
        }
        let header = header?;
        if let Some(user) = self.verified.lock().ok()?.get(header) {
            return Some(Caller::User(user.clone()));
        }
        let user = self.verify(header)?;
        if let Ok(mut v) = self.verified.lock() {
            if v.len() > 1000 {
                v.clear();
            }
            v.insert(header.to_string(), user.clone());
        }
        Some(Caller::User(user))
    }

    fn verify(&self, header: &str) -> Option<String> {
        if let Some(t) = header.strip_prefix("Bearer ") {
            return self
                .token
                .as_deref()
                .filter(|tok| constant_eq(tok.as_bytes(), t.trim().as_bytes()))
                .map(|_| "token".to_string());
        }
        let b = header.strip_prefix("Basic ")?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (name, password) = raw.split_once(':')?;
        if name.is_empty() {
            return None;
        }
        if let Some(hash) = self.users.get(name) {
            let parsed = PasswordHash::new(hash).ok()?;
            return Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .ok()
                .map(|_| name.to_string());
        }
        self.token
            .as_deref()
            .filter(|tok| constant_eq(tok.as_bytes(), password.as_bytes()))
            .map(|_| name.to_string())
    }
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// An argon2id PHC string for a users file.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    let salt =
        SaltString::encode_b64(&bytes).map_err(|e| anyhow::anyhow!("cannot make a salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[test]
    fn tokens_and_hashed_users_are_checked() {
        let hash = hash_password("s3cret-pass").expect("hash");
        let users = format!("# nurses\nalice:{hash}\n");
        let auth = Auth::new(
            Some("0123456789abcdef0123".into()),
            Some(("users.txt", &users)),
        )
        .expect("auth");
        assert!(auth.required());
        assert_eq!(auth.check(None), None);
        assert_eq!(auth.check(Some("Bearer wrong")), None);
        assert_eq!(
            auth.check(Some("Bearer 0123456789abcdef0123")),
            Some(Caller::User("token".into()))
        );
        assert_eq!(
            auth.check(Some(&basic("alice", "s3cret-pass"))),
            Some(Caller::User("alice".into()))
        );
        assert_eq!(auth.check(Some(&basic("alice", "nope"))), None);
        assert_eq!(
            auth.check(Some(&basic("bob", "0123456789abcdef0123"))),
            Some(Caller::User("bob".into())),
            "the token as a password names who acts"
        );
    }

    #[test]
    fn a_bad_users_file_names_its_line() {
        let e = Auth::new(None, Some(("users.txt", "alice:plain")))
            .err()
            .expect("refused")
            .to_string();
        assert!(e.starts_with("users.txt:1:"), "{e}");
        assert!(Auth::new(Some("short".into()), None).is_err());
        assert_eq!(Auth::default().check(None), Some(Caller::Local));
    }
}
