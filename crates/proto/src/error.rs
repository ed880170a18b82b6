//! Error kinds, their HTTP statuses, and [`ErrorCode`]: the one table of every `error` name the
//! HTTP API answers. A service names an error only through this table, so a name and its status
//! can never disagree, and each service's OpenAPI document lists the table.

/// The class of an error; decides the HTTP status and the envelope's `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 400: malformed or invalid input.
    Invalid,
    /// 401: missing, forged or expired credentials.
    Unauthorized,
    /// 403: authenticated but not allowed (not a member, not the sender).
    Forbidden,
    /// 404: the thing does not exist.
    NotFound,
    /// 405: the path exists but not with this method.
    MethodNotAllowed,
    /// 409: conflicts with existing state (duplicate username).
    Conflict,
    /// 413: body, content or frame too large.
    TooLarge,
    /// 414: the request's URL (its request line) is longer than the server reads.
    UrlTooLong,
    /// 415: the body is not JSON.
    UnsupportedMediaType,
    /// 429: rate limited.
    RateLimited,
    /// 431: the request's head (request line and headers) is larger than the server reads.
    HeadersTooLarge,
    /// 500: our fault; the cause is logged, never sent.
    Internal,
    /// 503: a dependency is down or the service is full or shutting down.
    Unavailable,
}

impl ErrorKind {
    pub const fn status(self) -> u16 {
        match self {
            Self::Invalid => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Conflict => 409,
            Self::TooLarge => 413,
            Self::UrlTooLong => 414,
            Self::UnsupportedMediaType => 415,
            Self::RateLimited => 429,
            Self::HeadersTooLarge => 431,
            Self::Internal => 500,
            Self::Unavailable => 503,
        }
    }
}

/// Declares [`ErrorCode`] from one row per error, so that the variants, their names, kinds and
/// meanings and [`ErrorCode::ALL`] cannot drift apart.
macro_rules! error_codes {
    ($($variant:ident = $name:literal, $kind:ident, $meaning:literal;)+) => {
        /// Every `error` name the HTTP API answers, with its kind (hence its status) and what it
        /// means. Clients branch on [`ErrorCode::name`]; it never changes once published.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(
                #[doc = concat!("`", $name, "`: ", $meaning, ".")]
                $variant,
            )+
        }

        impl ErrorCode {
            /// The whole table, in declaration order.
            pub const ALL: &'static [ErrorCode] = &[$(Self::$variant),+];

            /// The stable snake_case name sent as the reply's `error`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }

            /// The class of the error, which decides its status.
            pub const fn kind(self) -> ErrorKind {
                match self {
                    $(Self::$variant => ErrorKind::$kind,)+
                }
            }

            /// When the API answers it, in a phrase (for documentation; replies carry their own
            /// `message`).
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(Self::$variant => $meaning,)+
                }
            }
        }
    };
}

error_codes! {
    // Any endpoint: the request itself.
    NotFound = "not_found", NotFound, "no endpoint has this path";
    MethodNotAllowed = "method_not_allowed", MethodNotAllowed, "the endpoint does not take this method";
    InvalidJson = "invalid_json", Invalid, "the body is not valid JSON";
    InvalidBody = "invalid_body", Invalid, "the body is not a JSON object of the expected shape, or a field is out of range";
    InvalidQuery = "invalid_query", Invalid, "a query parameter is missing, malformed or out of range";
    InvalidPath = "invalid_path", Invalid, "a path parameter is malformed";
    BodyTooLarge = "body_too_large", TooLarge, "the body is larger than the server accepts";
    UnsupportedMediaType = "unsupported_media_type", UnsupportedMediaType, "the body is not sent as application/json";
    RateLimited = "rate_limited", RateLimited, "too many requests from this IP, username or user; Retry-After says when to retry";
    InternalError = "internal_error", Internal, "the server failed; the cause is logged, never sent";
    DatabaseUnavailable = "database_unavailable", Unavailable, "the database cannot be reached; retry later";
    ShuttingDown = "shutting_down", Unavailable, "the instance is shutting down; retry (another instance answers)";

    // Credentials.
    MissingToken = "missing_token", Unauthorized, "no Authorization: Bearer token";
    InvalidToken = "invalid_token", Unauthorized, "the token is forged, malformed or for an unknown user";
    TokenExpired = "token_expired", Unauthorized, "the token has expired; log in again";
    TokenRevoked = "token_revoked", Unauthorized, "the password changed after the token was issued, or its session was revoked; log in again";
    InvalidInternalToken = "invalid_internal_token", Unauthorized, "an internal endpoint without the right X-Internal-Token";
    InvalidCredentials = "invalid_credentials", Unauthorized, "wrong username or password";
    InvalidRefreshToken = "invalid_refresh_token", Unauthorized, "the refresh token is unknown, expired, or its session was logged out or revoked; log in again";
    RefreshTokenReused = "refresh_token_reused", Unauthorized, "the refresh token was already spent: its whole session is revoked (it may have been stolen); log in again";

    // Input rules.
    InvalidUsername = "invalid_username", Invalid, "a username must be 3-32 characters of letters, digits, '_', '.' or '-'";
    InvalidPassword = "invalid_password", Invalid, "a password must be 8-128 characters";
    InvalidNickname = "invalid_nickname", Invalid, "a nickname must be at most 50 characters without control characters";
    InvalidAvatar = "invalid_avatar", Invalid, "an avatar must be empty or an http(s) URL of at most 1024 characters";
    InvalidRoomName = "invalid_room_name", Invalid, "a room name must be 1-64 characters, not blank, without control characters";
    InvalidClientMsgId = "invalid_client_msg_id", Invalid, "a client_msg_id must be 1-64 printable ASCII characters";
    InvalidMessage = "invalid_message", Invalid, "a join request's message is too long";
    InvalidRole = "invalid_role", Invalid, "a role to assign must be admin or member";
    EmptyContent = "empty_content", Invalid, "a message's content must not be empty";
    ContentTooLarge = "content_too_large", TooLarge, "a message's content is larger than the configured maximum";

    // Users.
    UsernameTaken = "username_taken", Conflict, "another user has this username";
    UserNotFound = "user_not_found", NotFound, "no user has this id";
    WrongPassword = "wrong_password", Forbidden, "the old password given is not the current one";
    PasswordChangedConcurrently = "password_changed_concurrently", Conflict, "another request changed the password first; log in again";

    // Rooms and groups.
    RoomNotFound = "room_not_found", NotFound, "no room has this id";
    NotAMember = "not_a_member", Forbidden, "only members of the room may do that";
    NotAGroup = "not_a_group", Invalid, "a one-to-one room has no member management";
    NotAnAdmin = "not_an_admin", Forbidden, "only the group's owner and admins may do that";
    NotTheOwner = "not_the_owner", Forbidden, "only the group's owner may do that";
    NotAllowed = "not_allowed", Forbidden, "the caller's role does not allow removing this member";
    CannotRemoveSelf = "cannot_remove_self", Invalid, "members leave a group; they do not remove themselves";
    OwnerCannotLeave = "owner_cannot_leave", Conflict, "the owner must transfer ownership or dissolve the group first";
    CannotChangeOwnRole = "cannot_change_own_role", Invalid, "no one changes their own role";
    AlreadyTheOwner = "already_the_owner", Invalid, "ownership cannot be transferred to the owner";
    MemberNotFound = "member_not_found", NotFound, "that user is not a member of the group";
    AlreadyAMember = "already_a_member", Conflict, "the user is already a member of the group";
    ApprovalRequired = "approval_required", Forbidden, "the group is not open; ask with a join request";
    NoMembers = "no_members", Invalid, "member_ids names no user";
    UnknownMembers = "unknown_members", Invalid, "some of the user ids name no user";
    TooManyMembers = "too_many_members", Invalid, "the group would exceed its member limit";
    RequestPending = "request_pending", Conflict, "a join request of this user is already waiting for an answer";
    RequestNotFound = "request_not_found", NotFound, "no pending join request of that user in this group";
    CannotChatWithSelf = "cannot_chat_with_self", Invalid, "a one-to-one room needs another user";
    FileNotFound = "file_not_found", NotFound, "the web page has no such file";

    // Messages.
    MessageNotFound = "message_not_found", NotFound, "no message has this id";
    NotTheSender = "not_the_sender", Forbidden, "only a message's sender may resend it";
    ClientMsgIdConflict = "client_msg_id_conflict", Conflict, "the client_msg_id was already used for a message to another room";

    // Connections (answered by the listener, before any route: docs/security.md).
    HeadersTooLarge = "headers_too_large", HeadersTooLarge, "the request's head (request line and headers) is larger than the server accepts, or has too many headers";
    UrlTooLong = "url_too_long", UrlTooLong, "the request's URL is longer than the server accepts";
    TooManyConnections = "too_many_connections", Unavailable, "this address or this port has its maximum of open connections; close some or retry later";

    // Gateway.
    NotWebsocket = "not_websocket", Invalid, "the request is not a WebSocket upgrade";
    GatewayFull = "gateway_full", Unavailable, "the gateway has its maximum of connections; try another";
    OriginNotAllowed = "origin_not_allowed", Forbidden, "web pages of this origin may not open a WebSocket here";
    InvalidDeviceId = "invalid_device_id", Invalid, "a device_id must be 1-64 printable ASCII characters without spaces";
    TooManyDevices = "too_many_devices", Conflict, "the user has the most devices the gateway allows (max_devices_per_user); remove one first";
    DeviceNotFound = "device_not_found", NotFound, "the caller has no device with this id";

    // Registry.
    InvalidInstanceId = "invalid_instance_id", Invalid, "an instance id must be 1-64 characters of letters, digits, '-', '_' or '.'";
    NotRegistered = "not_registered", NotFound, "the instance expired or never registered; register again";
    NoGateway = "no_gateway", Unavailable, "no live gateway has room for another connection; retry later";
    NoSendInstance = "no_send_instance", Unavailable, "no send instance is live; retry later";
    RegistryUnavailable = "registry_unavailable", Unavailable, "the registry's store cannot be reached; retry later";
}

impl ErrorCode {
    /// The HTTP status of every reply with this name.
    pub const fn status(self) -> u16 {
        self.kind().status()
    }

    /// The code with this name, if the table has one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.name() == name)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_unique_snake_case_and_meanings_are_phrases() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let name = code.name();
            assert!(seen.insert(name), "{name} twice");
            assert!(
                !name.is_empty()
                    && name.starts_with(|c: char| c.is_ascii_lowercase())
                    && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name} is not snake_case"
            );
            let meaning = code.meaning();
            assert!(
                !meaning.is_empty() && !meaning.ends_with('.'),
                "{name}: the meaning is a phrase without a final period: {meaning:?}"
            );
            // Documents quote error names in backticks and nothing else, so that a check can
            // find every name a description mentions.
            assert!(!meaning.contains('`'), "{name}: a backtick in {meaning:?}");
            assert_eq!(ErrorCode::from_name(name), Some(*code));
        }
        assert_eq!(ErrorCode::from_name("no_such_error"), None);
    }

    #[test]
    fn every_status_is_an_error_status() {
        for code in ErrorCode::ALL {
            assert!(
                (400..600).contains(&code.status()),
                "{}: {}",
                code.name(),
                code.status()
            );
        }
        assert_eq!(ErrorCode::NotAMember.status(), 403);
        assert_eq!(ErrorCode::RateLimited.status(), 429);
    }
}
