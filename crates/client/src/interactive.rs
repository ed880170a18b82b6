//! The interactive mode: reads lines from stdin (a terminal or a pipe) while printing what the
//! live connection delivers. A line is a command (`/join`, `/rooms`, …) or a message for the
//! open room. Messages of every room print as `[room] sender: text`, each once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proto::api::{MessageView, RoomView};
use proto::frame::{Notice, NoticeEvent};
use proto::{MessageId, RoomId, Seq, UserId};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::api::Api;
use crate::error::{ClientError, Result};
use crate::live::{Event, Live, Seen};
use crate::login::Me;
use crate::script::client_msg_id;
use crate::view::{self, Names};

/// How long to wait for the first connection before reading input (sending works without it;
/// only live messages and ACKs need it).
const FIRST_CONNECT: Duration = Duration::from_secs(5);
/// How long `/quit` (or the end of input) waits for the ACKs of messages just sent.
const ACK_GRACE: Duration = Duration::from_secs(3);
/// Message ids remembered for deduplication.
const SEEN: usize = 10_000;

const HELP: &str = "\
commands:
  /rooms                 list your rooms (* marks the open one)
  /join ROOM             open a room by id or name (joins an open group you are not in)
  /dm USER               open the one-to-one room with a user (a username or an id)
  /create NAME [U,U]     create a group with these members (usernames or ids) and open it;
                         the last word is the member list: quote a name with spaces and no
                         members, /create \"dev team\"
  /history [N]           show the open room's last N messages (default as --history)
  /help                  this text
  /quit                  leave (also Ctrl-D)
any other line is sent to the open room; start it with // to send a line beginning with /";

/// A parsed input line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    Empty,
    Help,
    Quit,
    Rooms,
    Join(String),
    /// A username or a user id.
    Dm(String),
    /// Members as typed: usernames or user ids.
    Create {
        name: String,
        members: Vec<String>,
    },
    History(Option<u32>),
    Say(String),
    Bad(String),
}

fn parse(line: &str) -> Input {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Input::Empty;
    }
    if let Some(literal) = line.strip_prefix("//") {
        return Input::Say(format!("/{literal}"));
    }
    let Some(command) = line.strip_prefix('/') else {
        return Input::Say(line.to_owned());
    };
    let (name, rest) = command
        .trim()
        .split_once(char::is_whitespace)
        .map_or((command.trim(), ""), |(n, r)| (n, r.trim()));
    match (name, rest) {
        ("help" | "?", _) => Input::Help,
        ("quit" | "exit" | "q", _) => Input::Quit,
        ("rooms", _) => Input::Rooms,
        ("join" | "open", "") => Input::Bad("usage: /join ROOM_ID or /join NAME".into()),
        ("join" | "open", room) => Input::Join(room.to_owned()),
        ("dm", "") => Input::Bad("usage: /dm USER (a username or an id)".into()),
        ("dm", user) if user.contains(char::is_whitespace) => {
            Input::Bad("usage: /dm USER (one username or id)".into())
        }
        ("dm", user) => Input::Dm(user.to_owned()),
        ("create", "") => Input::Bad("usage: /create NAME [USER,USER,...]".into()),
        ("create", args) => parse_create(args),
        ("history", "") => Input::History(None),
        ("history", n) => match n.parse() {
            Ok(n) => Input::History(Some(n)),
            Err(_) => Input::Bad("usage: /history [N]".into()),
        },
        (other, _) => Input::Bad(format!("unknown command /{other}; /help lists them")),
    }
}

/// `NAME [USER,USER]`: with more than one word, the last is the member list (usernames or ids,
/// comma-separated); `"NAME WITH SPACES" [USER,USER]` quotes a name, which may then stand alone.
fn parse_create(args: &str) -> Input {
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned)
            .collect()
    };
    if let Some(quoted) = args.strip_prefix('"') {
        let Some((name, rest)) = quoted.split_once('"') else {
            return Input::Bad("usage: /create \"NAME\" [USER,USER,...] (a closing quote)".into());
        };
        let rest = rest.trim();
        if rest.contains(char::is_whitespace) {
            return Input::Bad(
                "usage: /create \"NAME\" [USER,USER,...] (members without spaces)".into(),
            );
        }
        return Input::Create {
            name: name.trim().to_owned(),
            members: list(rest),
        };
    }
    match args.rsplit_once(char::is_whitespace) {
        Some((name, last)) => Input::Create {
            name: name.trim().to_owned(),
            members: list(last),
        },
        None => Input::Create {
            name: args.to_owned(),
            members: Vec::new(),
        },
    }
}

/// The session state of the interactive mode.
struct Chat {
    api: Api,
    me: Me,
    live: Live,
    names: Names,
    rooms: Vec<RoomView>,
    open: Option<RoomId>,
    /// Messages shown, by id: history and live frames overlap, and reconnects repeat.
    seen: Seen,
    /// The highest `seq` shown per room, for `sync` after a reconnect.
    last: HashMap<RoomId, Seq>,
    /// My messages stored but not ACKed yet.
    unacked: HashSet<MessageId>,
    connected: bool,
    history: u32,
}

/// Runs the interactive mode until `/quit` or the end of input.
pub async fn run(api: Api, me: Me, history: u32) -> Result<()> {
    let (live, mut events) = Live::spawn(api.clone(), me.user_id);
    let mut chat = Chat {
        api,
        me,
        live,
        names: Names::default(),
        rooms: Vec::new(),
        open: None,
        seen: Seen::new(SEEN),
        last: HashMap::new(),
        unacked: HashSet::new(),
        connected: false,
        history: history.clamp(1, 200),
    };
    println!(
        "logged in as {} (user {}); /help lists the commands",
        chat.me.username, chat.me.user_id
    );
    chat.refresh_rooms().await?;
    chat.print_rooms();
    chat.pump_until(&mut events, Instant::now() + FIRST_CONNECT, |c| c.connected)
        .await?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let line = match line {
                    Ok(Some(l)) => l,
                    Ok(None) => break,
                    Err(e) => return Err(ClientError::Other(format!("cannot read stdin: {e}"))),
                };
                let input = parse(&line);
                if input == Input::Quit {
                    break;
                }
                match chat.handle(input).await {
                    Ok(()) => {}
                    Err(e @ ClientError::Auth(_)) => return Err(e),
                    Err(e) => eprintln!("error: {e}"),
                }
            }
            ev = events.recv() => chat.show(ev).await?,
        }
    }
    if !chat.unacked.is_empty() && chat.connected {
        chat.pump_until(&mut events, Instant::now() + ACK_GRACE, |c| {
            c.unacked.is_empty()
        })
        .await?;
    }
    println!("bye");
    Ok(())
}

impl Chat {
    /// Shows events until `done` holds or `deadline` passes.
    async fn pump_until(
        &mut self,
        events: &mut mpsc::Receiver<Event>,
        deadline: Instant,
        done: impl Fn(&Self) -> bool,
    ) -> Result<()> {
        while !done(self) {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(ev) => self.show(ev).await?,
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    async fn show(&mut self, ev: Option<Event>) -> Result<()> {
        match ev {
            Some(Event::Connected { gateway }) => {
                if self.connected {
                    return Ok(());
                }
                println!("* connected to {gateway}");
                self.connected = true;
                for (&room, &seq) in &self.last {
                    self.live.sync(room, seq);
                }
            }
            Some(Event::Disconnected { reason, retry_in }) => {
                let was = if self.connected {
                    "connection lost"
                } else {
                    "not connected"
                };
                println!(
                    "* {was}: {reason}; retrying in {:.1}s",
                    retry_in.as_secs_f64()
                );
                self.connected = false;
            }
            Some(Event::Chat(m)) => self.print_message(&m).await,
            Some(Event::Ack {
                id, room_id, seq, ..
            }) => {
                if self.unacked.remove(&id) {
                    println!(
                        "[{}] delivered message {id} (seq {seq})",
                        self.names.room(room_id)
                    );
                }
            }
            Some(Event::Notice(n)) => self.print_notice(&n).await,
            Some(Event::Fatal(e)) => return Err(e),
            None => return Err(ClientError::Other("the connection task ended".into())),
        }
        Ok(())
    }

    async fn handle(&mut self, input: Input) -> Result<()> {
        match input {
            Input::Empty | Input::Quit => {}
            Input::Help => println!("{HELP}"),
            Input::Bad(why) => eprintln!("{why}"),
            Input::Rooms => {
                self.refresh_rooms().await?;
                self.print_rooms();
            }
            Input::Join(key) => self.join(&key).await?,
            Input::Dm(user) => {
                let user_id = self.resolve(&user).await?;
                let reply = self.api.direct_room(user_id).await?;
                self.refresh_rooms().await?;
                self.open_room(reply.room.room_id).await?;
            }
            Input::Create { name, members } => {
                let mut ids = Vec::with_capacity(members.len());
                for m in &members {
                    ids.push(self.resolve(m).await?);
                }
                let reply = self.api.create_group(&name, &ids).await?;
                self.refresh_rooms().await?;
                self.open_room(reply.room_id).await?;
            }
            Input::History(n) => {
                let room = self.open.ok_or_else(no_room)?;
                let n = n.unwrap_or(self.history).clamp(1, 200);
                self.show_history(room, n, true).await?;
            }
            Input::Say(text) => {
                let room = self.open.ok_or_else(no_room)?;
                let reply = self.api.send_message(room, &text, &client_msg_id()).await?;
                // The ACK frame may even have come before this reply; not waiting for it then.
                if self.connected {
                    self.unacked.insert(reply.message_id);
                }
            }
        }
        Ok(())
    }

    /// A user named as typed: an id, or a username (ignoring case).
    async fn resolve(&self, user: &str) -> Result<UserId> {
        if let Ok(id) = user.parse::<UserId>() {
            return Ok(id);
        }
        match self.api.user_named(user).await? {
            Some(u) => Ok(u.user_id),
            None => Err(ClientError::NotFound(format!(
                "no user named {user:?} (give a username or a user id)"
            ))),
        }
    }

    async fn join(&mut self, key: &str) -> Result<()> {
        self.refresh_rooms().await?;
        let found: Vec<RoomId> = view::find_rooms(&self.rooms, key, &self.names)
            .iter()
            .map(|r| r.room_id)
            .collect();
        let room_id = match found.as_slice() {
            [one] => *one,
            [] => {
                let Ok(id) = key.parse::<RoomId>() else {
                    return Err(ClientError::NotFound(format!(
                        "no room named {key:?} among yours; /rooms lists them"
                    )));
                };
                // Not a member yet: an open group lets anyone in.
                self.api.join_open_group(id).await?;
                self.refresh_rooms().await?;
                id
            }
            many => {
                return Err(ClientError::Usage(format!(
                    "{} rooms are named {key:?} (ids {many:?}): /join the id",
                    many.len()
                )));
            }
        };
        self.open_room(room_id).await
    }

    async fn open_room(&mut self, room_id: RoomId) -> Result<()> {
        self.open = Some(room_id);
        println!(
            "* now in [{}] (room {room_id}); type to send",
            self.names.room(room_id)
        );
        self.show_history(room_id, self.history, false).await
    }

    /// The room's last `n` messages; with `again`, also those already shown.
    async fn show_history(&mut self, room_id: RoomId, n: u32, again: bool) -> Result<()> {
        let last_seq = self
            .rooms
            .iter()
            .find(|r| r.room_id == room_id)
            .map_or(0, |r| r.last_seq);
        let after = (last_seq - Seq::from(n)).max(0);
        let (messages, _) = self.api.history(room_id, after, n).await?;
        for m in &messages {
            if again {
                let line = self.names.line(&self.api, m).await;
                println!("{line}");
                self.seen.insert(m.id);
            } else {
                self.print_message(m).await;
            }
        }
        Ok(())
    }

    async fn print_message(&mut self, m: &MessageView) {
        if !self.seen.insert(m.id) {
            return;
        }
        let last = self.last.entry(m.room_id).or_default();
        *last = (*last).max(m.seq);
        if self.names.room(m.room_id).starts_with('#') {
            // A room I was just added to: learn its name.
            let _ = self.refresh_rooms().await;
        }
        let line = self.names.line(&self.api, m).await;
        println!("{line}");
    }

    async fn print_notice(&mut self, n: &Notice) {
        let _ = self.refresh_rooms().await;
        let room = self.names.room(n.room_id);
        let mut who = Vec::new();
        for &u in &n.user_ids {
            who.push(self.names.user(&self.api, u).await);
        }
        let by = match n.by {
            Some(u) => format!(" by {}", self.names.user(&self.api, u).await),
            None => String::new(),
        };
        let detail = n
            .detail
            .as_deref()
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        let event = serde_json::to_value(n.event)
            .ok()
            .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
            .unwrap_or_default();
        println!("[{room}] * {event} {}{by}{detail}", who.join(", "));
        if n.event == NoticeEvent::Dissolved && self.open == Some(n.room_id) {
            self.open = None;
            println!("* [{room}] is gone; /rooms, /join another");
        }
    }

    async fn refresh_rooms(&mut self) -> Result<()> {
        self.rooms = self.api.joined_rooms().await?;
        self.names
            .learn_rooms(&self.api, self.me.user_id, &self.rooms)
            .await;
        Ok(())
    }

    fn print_rooms(&self) {
        if self.rooms.is_empty() {
            println!("you are in no room yet: /dm USER or /create NAME USER,USER");
            return;
        }
        println!("your rooms:");
        for r in &self.rooms {
            let mark = if self.open == Some(r.room_id) {
                '*'
            } else {
                ' '
            };
            println!("{mark}{}", view::room_row(r, &self.names));
        }
    }
}

fn no_room() -> ClientError {
    ClientError::Usage("no room is open: /join ROOM first (/rooms lists yours)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_commands_or_messages() {
        assert_eq!(parse("hello"), Input::Say("hello".into()));
        assert_eq!(parse("  "), Input::Empty);
        assert_eq!(parse("//join me"), Input::Say("/join me".into()));
        assert_eq!(parse("/join 12"), Input::Join("12".into()));
        assert_eq!(parse("/join dev team"), Input::Join("dev team".into()));
        assert_eq!(parse("/dm 7"), Input::Dm("7".into()));
        assert_eq!(parse("/dm bob"), Input::Dm("bob".into()));
        assert!(matches!(parse("/dm"), Input::Bad(_)));
        assert!(matches!(parse("/dm bob carol"), Input::Bad(_)));
        assert_eq!(parse("/quit\r\n"), Input::Quit);
        assert_eq!(parse("/history 5"), Input::History(Some(5)));
        assert!(matches!(parse("/frobnicate"), Input::Bad(_)));
    }

    #[test]
    fn create_takes_a_name_and_the_last_word_as_its_members() {
        let create = |name: &str, members: &[&str]| Input::Create {
            name: name.into(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        };
        assert_eq!(
            parse("/create dev team 2,3"),
            create("dev team", &["2", "3"])
        );
        assert_eq!(parse("/create team bob"), create("team", &["bob"]));
        assert_eq!(
            parse("/create team bob,carol"),
            create("team", &["bob", "carol"])
        );
        assert_eq!(parse("/create solo"), create("solo", &[]));
        assert_eq!(parse("/create release 2026"), create("release", &["2026"]));
        assert_eq!(parse("/create \"dev team\""), create("dev team", &[]));
        assert_eq!(
            parse("/create \"dev team\" bob,7"),
            create("dev team", &["bob", "7"])
        );
        assert!(matches!(parse("/create \"dev team"), Input::Bad(_)));
        assert!(matches!(parse("/create \"dev\" bob carol"), Input::Bad(_)));
    }
}
