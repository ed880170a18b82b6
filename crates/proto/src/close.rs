//! The WebSocket close codes of the `/api/ws` connection: the gateway sends them, the client and
//! the benchmarks interpret them. docs/protocol.md lists each with what a client should do; a unit
//! test below fails when a code is missing there.

use std::fmt;

/// Why the server closed a connection (the close frame's code, with a reason text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: answering the client's own close (or its end of stream).
    Normal,
    /// 1001: the server is shutting down; queued frames were written first.
    GoingAway,
    /// 1002: the client broke the WebSocket protocol (e.g. an unmasked or malformed frame).
    ProtocolError,
    /// 1003: the client sent a binary frame.
    Unsupported,
    /// 1006: never in a close frame: the connection ended without one (the gateway crashed or
    /// was aborted, the network failed). The gateway uses it to drop a socket silently.
    Abnormal,
    /// 1007: the client sent text that is not a valid client frame (or not UTF-8).
    InvalidFrame,
    /// 1009: the client's frame exceeded `max_frame_bytes`.
    TooBig,
    /// 1011: the server could not resync the connection (database unavailable).
    ServerError,
    /// 4001: nothing arrived from the client for `idle_timeout_secs`.
    Idle,
    /// 4008: slow consumer: the connection's queue was full.
    SlowConsumer,
    /// 4009: the user opened more connections than `max_connections_per_user`; this, their
    /// oldest, was closed to make room. Not to be reconnected automatically (two clients of the
    /// same user would take turns closing each other).
    TooManyConnections,
    /// 4401: the connection's token was revoked (its user changed their password).
    TokenRevoked,
    /// 4410: the connection's device was removed (`DELETE /api/user/devices/{device_id}`).
    DeviceRemoved,
}

impl CloseCode {
    /// Every code, in numeric order.
    pub const ALL: [CloseCode; 13] = [
        Self::Normal,
        Self::GoingAway,
        Self::ProtocolError,
        Self::Unsupported,
        Self::Abnormal,
        Self::InvalidFrame,
        Self::TooBig,
        Self::ServerError,
        Self::Idle,
        Self::SlowConsumer,
        Self::TooManyConnections,
        Self::TokenRevoked,
        Self::DeviceRemoved,
    ];

    /// The number on the wire.
    pub const fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::Unsupported => 1003,
            Self::Abnormal => 1006,
            Self::InvalidFrame => 1007,
            Self::TooBig => 1009,
            Self::ServerError => 1011,
            Self::Idle => 4001,
            Self::SlowConsumer => 4008,
            Self::TooManyConnections => 4009,
            Self::TokenRevoked => 4401,
            Self::DeviceRemoved => 4410,
        }
    }

    /// The close frame's reason text.
    pub const fn reason(self) -> &'static str {
        match self {
            Self::Normal => "closing",
            Self::GoingAway => "server shutting down",
            Self::ProtocolError => "protocol error",
            Self::Unsupported => "binary frames are not supported",
            Self::Abnormal => "connection dropped",
            Self::InvalidFrame => "invalid frame",
            Self::TooBig => "frame too large",
            Self::ServerError => "server error: reconnect later",
            Self::Idle => "idle timeout",
            Self::SlowConsumer => "slow consumer: reconnect to resync",
            Self::TooManyConnections => "too many connections of this user: the oldest is closed",
            Self::TokenRevoked => "token revoked",
            Self::DeviceRemoved => "device removed",
        }
    }
}

impl From<CloseCode> for u16 {
    fn from(c: CloseCode) -> Self {
        c.code()
    }
}

/// A close code this server does not use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("close code {0} is not one of the server's")]
pub struct UnknownCloseCode(pub u16);

impl TryFrom<u16> for CloseCode {
    type Error = UnknownCloseCode;

    fn try_from(code: u16) -> Result<Self, Self::Error> {
        Self::ALL
            .into_iter()
            .find(|c| c.code() == code)
            .ok_or(UnknownCloseCode(code))
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_converts_to_its_number_and_back() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::try_from(u16::from(c)), Ok(c));
        }
        assert!(
            CloseCode::ALL.windows(2).all(|w| w[0].code() < w[1].code()),
            "ALL is in numeric order, so no code is listed twice"
        );
        assert_eq!(CloseCode::try_from(1005), Err(UnknownCloseCode(1005)));
    }

    /// The rows of the "Close codes" table in docs/protocol.md, by code.
    fn documented_codes() -> Vec<u16> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
        let doc = std::fs::read_to_string(path).expect("docs/protocol.md is in the repository");
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with("Close codes"))
            .expect("docs/protocol.md has a \"Close codes\" section");
        section
            .lines()
            .filter_map(|l| l.strip_prefix("| ")?.split(' ').next()?.parse().ok())
            .collect()
    }

    #[test]
    fn docs_list_exactly_the_close_codes_in_use() {
        let documented = documented_codes();
        for c in CloseCode::ALL {
            assert!(
                documented.contains(&c.code()),
                "close code {c} is missing from docs/protocol.md's \"Close codes\" table"
            );
        }
        for code in documented {
            assert!(
                CloseCode::try_from(code).is_ok(),
                "docs/protocol.md lists close code {code}, which is not a CloseCode"
            );
        }
    }
}
