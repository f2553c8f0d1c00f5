//! API key secrets: `hrld_<id>_<secret><check>`.
//!
//! - `hrld_`: a typed prefix, so a leaked key is recognisable (secret scanners, logs).
//! - `<id>`: 16 hex digits, the key's public id (what lists and audit events show).
//! - `<secret>`: 48 hex digits, 192 random bits.
//! - `<check>`: 8 hex digits of SHA-256 over what comes before, so a mistyped or
//!   truncated key is refused without a lookup.
//!
//! The store keeps only SHA-256 of the whole text: the secrets are random and long, so a
//! slow password hash would add nothing but CPU on every request.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const PREFIX: &str = "hrld_";
const ID_HEX: usize = 16;
const SECRET_HEX: usize = 48;
const CHECK_HEX: usize = 8;

/// A freshly made key: its id and the secret text, shown once.
pub struct NewSecret {
    pub id: String,
    pub text: String,
}

/// Makes a key with fresh random id and secret.
pub fn generate() -> NewSecret {
    let mut bytes = [0u8; (ID_HEX + SECRET_HEX) / 2];
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    let id = hex(&bytes[..ID_HEX / 2]);
    let secret = hex(&bytes[ID_HEX / 2..]);
    let body = format!("{PREFIX}{id}_{secret}");
    let check = checksum(&body);
    NewSecret {
        id,
        text: format!("{body}{check}"),
    }
}

/// The key id in well-formed key text whose checksum holds; `None` for anything else.
pub fn parse_id(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(PREFIX)?;
    if rest.len() != ID_HEX + 1 + SECRET_HEX + CHECK_HEX || !rest.is_ascii() {
        return None;
    }
    let (id, rest) = rest.split_at(ID_HEX);
    let secret_and_check = rest.strip_prefix('_')?;
    let all_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !all_hex(id) || !all_hex(secret_and_check) {
        return None;
    }
    let (body, check) = text.split_at(text.len() - CHECK_HEX);
    bool::from(checksum(body).as_bytes().ct_eq(check.as_bytes())).then_some(id)
}

/// What the store keeps of a key: SHA-256 of its text, hex.
pub fn hash(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// Whether `text` hashes to `stored`, in time independent of where they differ.
pub fn matches(text: &str, stored: &str) -> bool {
    hash(text).as_bytes().ct_eq(stored.as_bytes()).into()
}

fn checksum(body: &str) -> String {
    hex(&Sha256::digest(body.as_bytes())[..CHECK_HEX / 2])
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash_back() {
        let key = generate();
        assert!(key.text.starts_with("hrld_"));
        assert_eq!(key.text.len(), 5 + 16 + 1 + 48 + 8);
        assert_eq!(parse_id(&key.text), Some(key.id.as_str()));
        assert!(matches(&key.text, &hash(&key.text)));
        assert_ne!(generate().text, key.text);
    }

    #[test]
    fn mistyped_or_foreign_text_is_refused_without_a_lookup() {
        let key = generate().text;
        let mut typo = key.clone().into_bytes();
        let i = 30;
        typo[i] = if typo[i] == b'0' { b'1' } else { b'0' };
        let typo = String::from_utf8(typo).unwrap();
        for bad in [
            typo.as_str(),
            &key[..key.len() - 1],
            &key.to_uppercase(),
            "hrld_",
            "",
            "Bearer x",
            "sk_live_0123456789",
            "hrld_ééééééééééééééé",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }
}
