//! The terminal chat client behind `ruststacker chat`: a user of the public API like any other
//! client, in a terminal or a shell script.
//!
//! - [`api`]: where the services are ([`Endpoints`]: Meta at `--server`, Send and the registry
//!   beside it unless given) and the HTTP calls, with errors made from status and error name.
//! - [`login`]: credentials from flags, the environment or a prompt (terminals only), then log in
//!   or register.
//! - [`live`]: the WebSocket to the gateway the registry picks, as a background task that
//!   reconnects with backoff and hands frames over as [`live::Event`]s.
//! - [`script`]: `--rooms`, `--send ROOM TEXT [--wait-ack]`, `--listen ROOM [--count N]`.
//! - [`interactive`]: the line-based mode (stdin lines in, `[room] sender: text` lines out).
//! - [`view`]: how messages and rooms print.
//! - [`error`]: [`ClientError`], one exit code per case a script branches on.
//!
//! The binary calls [`main`], which prints an error as one line on stderr and returns the exit
//! code.

pub mod api;
pub mod error;
pub mod interactive;
pub mod live;
pub mod login;
pub mod script;
pub mod view;

use std::time::Duration;

pub use api::{Api, Endpoints};
pub use error::ClientError;

/// `ruststacker chat`: the command line.
#[derive(Debug, clap::Args)]
#[command(
    about = "A terminal chat client: interactive on a terminal or piped stdin, or scripted with --rooms, --send or --listen",
    after_help = "Exit codes: 0 ok, 1 other server error, 2 usage or missing credentials, 3 bad credentials or token, 4 a service is unreachable, 5 unknown room or not a member, 6 timed out."
)]
pub struct ChatArgs {
    /// Meta's base URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Send's base URL, used when the registry names no live Send instance (default: where
    /// Meta says, else the server's host, port 8081).
    #[arg(long = "send-url", value_name = "URL")]
    pub send_url: Option<String>,
    /// The registry's base URL (default: where Meta says, else the server's host, port 8084).
    #[arg(long = "registry-url", alias = "registry", value_name = "URL")]
    pub registry_url: Option<String>,
    /// Username (prompted on a terminal when missing).
    #[arg(long, env = "RUSTSTACKER_USER")]
    pub user: Option<String>,
    /// Password (prompted without echo on a terminal when missing). The environment variable
    /// keeps it out of `ps`.
    #[arg(long, env = "RUSTSTACKER_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Register the user first (an existing user is just logged in).
    #[arg(long)]
    pub register: bool,
    /// Nickname when registering.
    #[arg(long, requires = "register")]
    pub nickname: Option<String>,
    /// Print my rooms and exit.
    #[arg(long, conflicts_with_all = ["send", "listen"])]
    pub rooms: bool,
    /// Send TEXT to ROOM (an id or a name), print the message id and seq, and exit.
    #[arg(long, num_args = 2, value_names = ["ROOM", "TEXT"], conflicts_with = "listen")]
    pub send: Option<Vec<String>>,
    /// With --send: also wait for the delivery ACK frame.
    #[arg(long, requires = "send")]
    pub wait_ack: bool,
    /// Print ROOM's messages (an id or a name), one per line, as they arrive.
    #[arg(long, value_name = "ROOM")]
    pub listen: Option<String>,
    /// With --listen: exit after N messages.
    #[arg(long, value_name = "N", requires = "listen")]
    pub count: Option<u64>,
    /// With --listen: print messages after this seq (default: the room's latest at start).
    #[arg(long, value_name = "SEQ", requires = "listen")]
    pub after_seq: Option<i64>,
    /// With --listen: stop after SECS (an error if --count was not reached); with
    /// --wait-ack: how long to wait for the ACK (default 10).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// One JSON object per line (--rooms, --send, --listen).
    #[arg(long)]
    pub json: bool,
    /// How many earlier messages to show when opening a room (interactive).
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub history: u32,
}

/// Runs the client; on failure prints `ruststacker chat: <error>` on stderr. Returns the exit
/// code.
pub async fn main(args: ChatArgs) -> i32 {
    match run(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ruststacker chat: {e}");
            e.exit_code()
        }
    }
}

/// Runs the client.
pub async fn run(args: ChatArgs) -> Result<(), ClientError> {
    let endpoints = Endpoints::new(
        &args.server,
        args.send_url.as_deref(),
        args.registry_url.as_deref(),
    )?;
    let mut api = Api::new(endpoints)?;
    api.discover_services(args.send_url.is_some(), args.registry_url.is_some())
        .await;
    let given = login::Given {
        user: args.user,
        password: args.password.map(login::Password::new),
        register: args.register,
        nickname: args.nickname,
    };
    let me = login::log_in(&mut api, given).await?;
    api.discover_send().await;
    let out = script::Output { json: args.json };
    let timeout = args.timeout.map(Duration::from_secs);
    if args.rooms {
        return script::rooms(&api, &me, out).await;
    }
    if let Some(send) = args.send {
        let [room, text] = send.as_slice() else {
            return Err(ClientError::Usage("--send takes ROOM and TEXT".into()));
        };
        let wait = args.wait_ack.then(|| timeout.unwrap_or(script::ACK_WAIT));
        return script::send(&api, &me, room, text, wait, out).await;
    }
    if let Some(room) = args.listen {
        let what = script::Listen {
            room,
            after_seq: args.after_seq,
            count: args.count,
            timeout,
        };
        return script::listen(&api, &me, what, out).await;
    }
    interactive::run(api, me, args.history).await
}
