//! What can go wrong, as the cases a script branches on: each [`ClientError`] maps to one exit
//! code ([`ClientError::exit_code`]) and prints as one line that says what to do.

/// A failure of the client, by what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad or missing command-line input (exit 2, as clap's own usage errors).
    #[error("{0}")]
    Usage(String),
    /// The server refused the credentials or the token (HTTP 401, WebSocket 401 or close 4401).
    #[error("{0}")]
    Auth(String),
    /// A service could not be reached at all.
    #[error("cannot reach {service} at {url}: {cause}")]
    Unreachable {
        service: &'static str,
        url: String,
        cause: String,
    },
    /// The room (or user) does not exist, or I may not see it (HTTP 404 or 403).
    #[error("{0}")]
    NotFound(String),
    /// Waited longer than allowed (a reply, an ACK frame, `--count` messages).
    #[error("{0}")]
    Timeout(String),
    /// Any other refusal by a service: its status, stable error name and sentence.
    #[error("{service} answered HTTP {status} {name}: {message}")]
    Server {
        service: &'static str,
        status: u16,
        name: String,
        message: String,
    },
    /// A reply or frame that is not what the protocol says, or a local I/O failure.
    #[error("{0}")]
    Other(String),
}

impl ClientError {
    /// The process exit code for this error; documented in the README's "Terminal client".
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => 2,
            Self::Auth(_) => 3,
            Self::Unreachable { .. } => 4,
            Self::NotFound(_) => 5,
            Self::Timeout(_) => 6,
            Self::Server { .. } | Self::Other(_) => 1,
        }
    }
}

/// Results of the client.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_a_script_branches_on_has_its_own_exit_code() {
        let cases = [
            ClientError::Usage(String::new()),
            ClientError::Auth(String::new()),
            ClientError::Unreachable {
                service: "meta",
                url: String::new(),
                cause: String::new(),
            },
            ClientError::NotFound(String::new()),
            ClientError::Timeout(String::new()),
            ClientError::Other(String::new()),
        ];
        let codes: std::collections::BTreeSet<i32> =
            cases.iter().map(ClientError::exit_code).collect();
        assert_eq!(codes.len(), cases.len());
        assert!(!codes.contains(&0));
    }
}
