//! Bad JWTs for the 401 tests, made from a real token so that only one thing is wrong with each.

use anyhow::Context as _;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Map, Value};

/// The claims of `token`, read without checking the signature.
pub fn claims(token: &str) -> anyhow::Result<Map<String, Value>> {
    jsonwebtoken::dangerous::insecure_decode_claims(token)
        .context("a token's claims are a JSON object")
}

/// A token with `claims`, signed (HS256) with `secret`.
pub fn sign(claims: &Map<String, Value>, secret: &[u8]) -> anyhow::Result<String> {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .context("signing claims")
}

/// The same claims as `token`, signed with another secret: a forgery.
pub fn forged(token: &str) -> anyhow::Result<String> {
    sign(
        &claims(token)?,
        b"not-the-server-secret-not-the-server-secret",
    )
}

/// `token` with its claims changed by `edit` but its header and signature kept: a tampered payload.
pub fn tampered(token: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> anyhow::Result<String> {
    let mut c = claims(token)?;
    edit(&mut c);
    let resigned = sign(&c, b"any key: only the payload segment is used")?;
    let new_payload = resigned
        .split('.')
        .nth(1)
        .context("a JWT has three segments")?;
    let mut parts = token.split('.');
    let (header, _, signature) = (
        parts.next().context("a JWT has a header")?,
        parts.next().context("a JWT has a payload")?,
        parts.next().context("a JWT has a signature")?,
    );
    Ok(format!("{header}.{new_payload}.{signature}"))
}

/// The same claims as `token` with `iat`/`nbf` two hours and `exp` one hour in the past, signed
/// with `secret` (the server's, so that expiry is the only thing wrong).
pub fn expired(token: &str, secret: &[u8]) -> anyhow::Result<String> {
    let mut c = claims(token)?;
    let now = i64::try_from(jsonwebtoken::get_current_timestamp()).context("now fits in i64")?;
    c.insert("exp".into(), Value::from(now - 3600));
    if c.contains_key("iat") {
        c.insert("iat".into(), Value::from(now - 7200));
    }
    if c.contains_key("nbf") {
        c.insert("nbf".into(), Value::from(now - 7200));
    }
    sign(&c, secret)
}
