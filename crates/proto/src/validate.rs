//! Input rules. Each failure carries the stable error code and a sentence for the client.

use std::fmt;

use crate::error::ErrorCode;

/// A rule an input broke: `error` is the stable code, `message` the sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub error: ErrorCode,
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Invalid {}

fn invalid(error: ErrorCode, message: impl Into<String>) -> Invalid {
    Invalid {
        error,
        message: message.into(),
    }
}

pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;
pub const NICKNAME_MAX: usize = 50;
pub const ROOM_NAME_MAX: usize = 64;
pub const CLIENT_MSG_ID_MAX: usize = 64;
pub const DEVICE_ID_MAX: usize = 64;
pub const AVATAR_MAX: usize = 1024;

/// 3–32 characters of `[A-Za-z0-9_.-]`.
pub fn username(s: &str) -> Result<(), Invalid> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok_chars || !(USERNAME_MIN..=USERNAME_MAX).contains(&s.len()) {
        return Err(invalid(
            ErrorCode::InvalidUsername,
            format!(
                "username must be {USERNAME_MIN}-{USERNAME_MAX} characters of letters, digits, '_', '.' or '-'"
            ),
        ));
    }
    Ok(())
}

/// The form of a username that decides whether two names are the same account: Unicode NFKC,
/// then lowercase. `Alice`, `ALICE` and `alice` have one key, so only one of them can exist, and
/// a login by any spelling finds that account; the account keeps (and shows) the spelling it
/// registered with. Valid usernames are ASCII, where NFKC changes nothing and this is ASCII
/// lowercasing; a login name is keyed the same way, so a fullwidth `Ａｌｉｃｅ` finds `alice` too.
pub fn username_key(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    s.nfkc().collect::<String>().to_lowercase()
}

/// 8–128 characters (not bytes), anything printable or not: a password is opaque.
pub fn password(s: &str) -> Result<(), Invalid> {
    let n = s.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(invalid(
            ErrorCode::InvalidPassword,
            format!("password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters"),
        ));
    }
    Ok(())
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Up to 50 characters, no control characters. Empty means "use the username".
pub fn nickname(s: &str) -> Result<(), Invalid> {
    if s.chars().count() > NICKNAME_MAX || has_control(s) {
        return Err(invalid(
            ErrorCode::InvalidNickname,
            format!(
                "nickname must be at most {NICKNAME_MAX} characters without control characters"
            ),
        ));
    }
    Ok(())
}

/// 1–64 characters, not blank, no control characters.
pub fn room_name(s: &str) -> Result<(), Invalid> {
    if s.trim().is_empty() || s.chars().count() > ROOM_NAME_MAX || has_control(s) {
        return Err(invalid(
            ErrorCode::InvalidRoomName,
            format!(
                "name must be 1-{ROOM_NAME_MAX} characters, not blank, without control characters"
            ),
        ));
    }
    Ok(())
}

/// Why message content was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentError {
    Empty,
    TooLarge,
}

/// Non-empty and at most `max_bytes` bytes of UTF-8. Newlines and any Unicode are content.
pub fn content(s: &str, max_bytes: usize) -> Result<(), ContentError> {
    if s.is_empty() {
        Err(ContentError::Empty)
    } else if s.len() > max_bytes {
        Err(ContentError::TooLarge)
    } else {
        Ok(())
    }
}

/// Empty (no avatar) or an `http://` / `https://` URL of at most 1024 printable ASCII
/// characters.
pub fn avatar(s: &str) -> Result<(), Invalid> {
    let url_like = (s.starts_with("https://") || s.starts_with("http://"))
        && s.len() <= AVATAR_MAX
        && s.bytes().all(|b| b.is_ascii_graphic());
    if !s.is_empty() && !url_like {
        return Err(invalid(
            ErrorCode::InvalidAvatar,
            format!(
                "avatar must be empty or an http(s) URL of at most {AVATAR_MAX} characters without spaces"
            ),
        ));
    }
    Ok(())
}

/// 1–64 printable ASCII characters.
pub fn client_msg_id(s: &str) -> Result<(), Invalid> {
    if s.is_empty() || s.len() > CLIENT_MSG_ID_MAX || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            ErrorCode::InvalidClientMsgId,
            format!("client_msg_id must be 1-{CLIENT_MSG_ID_MAX} printable ASCII characters"),
        ));
    }
    Ok(())
}

/// 1–64 printable ASCII characters without spaces (like a `client_msg_id`).
pub fn device_id(s: &str) -> Result<(), Invalid> {
    if s.is_empty() || s.len() > DEVICE_ID_MAX || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            ErrorCode::InvalidDeviceId,
            format!(
                "device_id must be 1-{DEVICE_ID_MAX} printable ASCII characters without spaces"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn avatars() {
        for ok in ["", "https://example.com/a.png", "http://x/y?z=1"] {
            assert!(avatar(ok).is_ok(), "{ok}");
        }
        let long = format!("https://{}", "x".repeat(AVATAR_MAX));
        for bad in [
            "ftp://x",
            "javascript:alert(1)",
            "https://a b",
            "x",
            long.as_str(),
        ] {
            assert!(avatar(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usernames() {
        for ok in ["abc", "a.b-c_d", "ABCdef123", &"x".repeat(32)] {
            assert!(username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "",
            "has space",
            "ünï",
            "a/b",
            &"x".repeat(33),
            "a\u{0}b",
        ] {
            assert_eq!(
                username(bad).unwrap_err().error,
                ErrorCode::InvalidUsername,
                "{bad}"
            );
        }
    }

    #[test]
    fn username_keys_fold_case_and_compatibility_forms() {
        assert_eq!(username_key("Alice"), "alice");
        assert_eq!(username_key("ALICE"), username_key("alice"));
        assert_eq!(
            username_key("\u{ff21}lice"),
            "alice",
            "fullwidth A is A under NFKC"
        );
        assert_ne!(username_key("alice"), username_key("alice2"));
    }

    #[test]
    fn passwords_count_characters_not_bytes() {
        assert!(password("ééééééé").is_err());
        assert!(password("éééééééé").is_ok());
        assert!(password(&"é".repeat(128)).is_ok());
        assert!(password(&"a".repeat(129)).is_err());
    }

    #[test]
    fn room_names_and_nicknames() {
        assert!(room_name("   ").is_err());
        assert!(room_name("dev \u{1F680}").is_ok());
        assert!(room_name("a\nb").is_err());
        assert!(nickname("").is_ok());
        assert!(nickname(&"字".repeat(50)).is_ok());
        assert!(nickname(&"字".repeat(51)).is_err());
    }

    #[test]
    fn content_limits_are_in_bytes() {
        assert_eq!(content("", 10), Err(ContentError::Empty));
        assert_eq!(content("line1\nline2", 11), Ok(()));
        assert_eq!(content("ééééé€", 10), Err(ContentError::TooLarge));
    }

    proptest! {
        #[test]
        fn valid_usernames_are_exactly_the_allowed_alphabet(s in "[A-Za-z0-9_.-]{3,32}") {
            prop_assert!(username(&s).is_ok());
        }

        #[test]
        fn any_string_with_a_foreign_char_is_refused(a in "[a-z]{2,10}", c in "[^A-Za-z0-9_.-]", b in "[a-z]{0,10}") {
            let name = format!("{a}{c}{b}");
            prop_assert!(username(&name).is_err());
        }
    }
}
