//! Credentials and the log-in step: from flags or the environment, else prompted on a terminal
//! (the password without echo), never from a prompt when stdin is not a terminal; then log in,
//! registering first when asked to (or, on a terminal, when the user agrees after a refused
//! log-in). Neither the password nor the token is ever printed.

use std::io::{BufRead, IsTerminal, Write};

use proto::UserId;

use crate::api::Api;
use crate::error::{ClientError, Result};

/// A password that prints as `***` in debug output.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    /// Wraps a password read from a flag or the environment.
    pub fn new(s: String) -> Self {
        Self(s)
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Who to log in as, as given on the command line or in the environment.
#[derive(Debug, Clone, Default)]
pub struct Given {
    /// `--user` / `RUSTSTACKER_USER`.
    pub user: Option<String>,
    /// `--password` / `RUSTSTACKER_PASSWORD`.
    pub password: Option<Password>,
    /// Register first (a taken username is fine: then this only logs in).
    pub register: bool,
    /// The nickname to register with.
    pub nickname: Option<String>,
}

/// The logged-in user.
#[derive(Debug, Clone)]
pub struct Me {
    /// My id (for gateway placement).
    pub user_id: UserId,
    /// The name I logged in with.
    pub username: String,
}

/// Completes the credentials (prompting only on a terminal), registers if asked, and logs in;
/// `api` keeps the token.
pub async fn log_in(api: &mut Api, given: Given) -> Result<Me> {
    let terminal = std::io::stdin().is_terminal();
    let username = match given.user {
        Some(u) if !u.is_empty() => u,
        _ if terminal => prompt("username: ", false).await?,
        _ => {
            return Err(ClientError::Usage(
                "no username: pass --user or set RUSTSTACKER_USER (stdin is not a terminal, so there is no prompt)".into(),
            ));
        }
    };
    let password = match given.password {
        Some(p) if !p.expose().is_empty() => p,
        _ if terminal => Password(prompt(&format!("password for {username}: "), true).await?),
        _ => {
            return Err(ClientError::Usage(
                "no password: pass --password or set RUSTSTACKER_PASSWORD (stdin is not a terminal, so there is no prompt)".into(),
            ));
        }
    };
    if given.register {
        register(api, &username, &password, given.nickname.as_deref()).await?;
    }
    match api.login(&username, password.expose()).await {
        Ok(reply) => Ok(Me {
            user_id: reply.user_id,
            username,
        }),
        // Log-in does not say whether the user exists (no enumeration); on a terminal offer to
        // register, which answers 409 when the name is taken, i.e. the password was wrong.
        Err(ClientError::Auth(_)) if terminal && !given.register => {
            let answer = prompt(
                &format!(
                    "log-in refused: a wrong password, or no user {username:?} yet. \
                     If you are new, register {username:?} with this password? [y/N] "
                ),
                false,
            )
            .await?;
            if !answer.eq_ignore_ascii_case("y") && !answer.eq_ignore_ascii_case("yes") {
                return Err(bad_credentials(&username));
            }
            if !register(api, &username, &password, given.nickname.as_deref()).await? {
                return Err(ClientError::Auth(format!(
                    "the user {username:?} exists, so the password was wrong; nothing was registered"
                )));
            }
            let reply = api.login(&username, password.expose()).await?;
            Ok(Me {
                user_id: reply.user_id,
                username,
            })
        }
        Err(ClientError::Auth(_)) => Err(bad_credentials(&username)),
        Err(e) => Err(e),
    }
}

/// Registers; false when the username was already taken.
async fn register(
    api: &Api,
    username: &str,
    password: &Password,
    nickname: Option<&str>,
) -> Result<bool> {
    let made = api.register(username, password.expose(), nickname).await?;
    if made.is_some() {
        eprintln!("registered {username}");
    }
    Ok(made.is_some())
}

fn bad_credentials(username: &str) -> ClientError {
    ClientError::Auth(format!(
        "log-in as {username:?} refused: wrong username or password"
    ))
}

/// Asks on stderr and reads one line from the terminal; with `secret`, echo is off meanwhile
/// (`stty -echo`, so no terminal crate is needed).
async fn prompt(question: &str, secret: bool) -> Result<String> {
    let question = question.to_owned();
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        // Echo off before the question: a fast typist (or a program) answering at once
        // must not be echoed.
        let _echo = secret.then(EchoOff::new);
        let mut err = std::io::stderr();
        err.write_all(question.as_bytes())?;
        err.flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if secret {
            eprintln!();
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    });
    read.await
        .map_err(|e| ClientError::Other(format!("prompt failed: {e}")))?
        .map_err(|e| ClientError::Other(format!("cannot read the terminal: {e}")))
}

/// Turns terminal echo off for as long as it lives.
struct EchoOff;

impl EchoOff {
    fn new() -> Self {
        stty("-echo");
        Self
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        stty("echo");
    }
}

/// `stty` on our stdin (the terminal); if it is missing the password is echoed, never lost.
fn stty(arg: &str) {
    let _ = std::process::Command::new("stty")
        .arg(arg)
        .stdin(std::process::Stdio::inherit())
        .status();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows_in_debug_output() {
        let given = Given {
            user: Some("alice".into()),
            password: Some(Password::new("hunter2-secret".into())),
            ..Given::default()
        };
        let shown = format!("{given:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("alice"));
    }
}
