//! Who is in which room, and who sends what where: the shape of a `fanout` run.
//!
//! The users are split into rooms (`--rooms N`, or `--room-sizes a,b,...` in turn); on the server
//! each room is a real one, made through Meta's API by one of its members: a one-to-one room
//! (`POST /api/room/direct`) for two members, a group (`POST /api/group/create`, then
//! `POST /api/group/{id}/members` for a group too big for one request) otherwise. On the
//! bare server the same layout is rooms 1..=N that each socket names on connect. Message `i` goes
//! to room `i mod N`, sent by the room's members in turn, so every room gets its share and every
//! sender is a member of the room it sends to.
//!
//! A layout is set up once per target and reused by every round against it: registering costs
//! the server an argon2 hash per user, which no round should measure or wait for twice.

use anyhow::{Context, bail};
use futures_util::StreamExt;
use proto::api::{AddMembersReply, CreateGroupReply, DirectRoomReply, LoginReply};
use serde_json::{Value, json};

use crate::fanout::call;
use crate::shard::{ConnectTarget, SocketSpec};

/// What a round drives.
pub enum Target {
    Server {
        meta: String,
        send_urls: Vec<String>,
        registry: String,
    },
    /// One bare server, or a fleet of them (the sockets spread over them in turn, every message
    /// posted to each).
    Bare { bases: Vec<String> },
}

/// One room of the run.
pub struct RoomPlan {
    pub id: i64,
    /// Its members, as indices into [`Layout::specs`]; the first made the room.
    pub members: Vec<usize>,
    /// The highest `seq` the room's accepted messages reached in earlier rounds.
    pub last_seq: i64,
}

/// Where the messages go.
pub enum SendTo {
    /// Send's URLs (round-robin) and each user's token, by socket index.
    Server {
        urls: Vec<String>,
        tokens: Vec<String>,
    },
    /// The bare servers' broadcast URLs. One server numbers the messages itself; a fleet is
    /// posted each message with the id and `seq` the coordinator gave it ([`Layout::fleet_body`]).
    Bare { urls: Vec<String> },
}

/// Message ids the coordinator gives a bare fleet's messages start above this (the bare server's
/// own start at 2^40).
const FLEET_FIRST_ID: i64 = 1 << 41;

pub struct Layout {
    pub rooms: Vec<RoomPlan>,
    /// One socket per user, in the order of their index.
    pub specs: Vec<SocketSpec>,
    pub connect: ConnectTarget,
    pub send_to: SendTo,
}

impl Layout {
    /// Message `i`: its room (index into `rooms`) and its sender (index into `specs`).
    pub fn message(&self, i: usize) -> (usize, usize) {
        let r = i % self.rooms.len();
        let members = &self.rooms[r].members;
        (r, members[(i / self.rooms.len()) % members.len()])
    }

    /// The sockets for the next round: each says its room and where that room's earlier rounds
    /// ended.
    pub fn round_specs(&self) -> Vec<SocketSpec> {
        let mut specs = self.specs.clone();
        for room in &self.rooms {
            for &m in &room.members {
                specs[m].after_seq = room.last_seq;
            }
        }
        specs
    }

    /// The request that sends message `i` (the body names its room, sender and a unique id).
    pub fn request(
        &self,
        http: &reqwest::Client,
        prefix: &str,
        i: usize,
    ) -> reqwest::RequestBuilder {
        let (r, sender) = self.message(i);
        let room_id = self.rooms[r].id;
        let mut body = json!({
            "room_id": room_id,
            "content": format!("fanout {prefix} #{i}"),
            "client_msg_id": format!("{prefix}-{i}"),
        });
        match &self.send_to {
            SendTo::Server { urls, tokens } => http
                .post(format!("{}/api/chat/send_message", urls[i % urls.len()]))
                .bearer_auth(&tokens[sender]),
            SendTo::Bare { urls } => {
                body["sender_id"] = json!(self.specs[sender].user_id);
                http.post(&urls[0])
            }
        }
        .json(&body)
    }

    /// The body of message `i` for a bare fleet, given its room's `seq`: the id is unique over
    /// the run's rounds (it is made of the room and the seq) and the same on every server.
    pub fn fleet_body(&self, prefix: &str, i: usize) -> impl Fn(i64) -> Value + Send + 'static {
        let (r, sender) = self.message(i);
        let (room_id, rooms) = (self.rooms[r].id, self.rooms.len() as i64);
        let sender_id = self.specs[sender].user_id;
        let (content, client_msg_id) = (format!("fanout {prefix} #{i}"), format!("{prefix}-{i}"));
        move |seq| {
            json!({
                "room_id": room_id,
                "content": content,
                "client_msg_id": client_msg_id,
                "sender_id": sender_id,
                "message_id": FLEET_FIRST_ID + seq * rooms + r as i64,
                "seq": seq,
            })
        }
    }

    /// How many rooms have each size, e.g. `{"2": 1000}`.
    pub fn sizes_summary(&self) -> Value {
        let mut by_size = std::collections::BTreeMap::<usize, usize>::new();
        for r in &self.rooms {
            *by_size.entry(r.members.len()).or_default() += 1;
        }
        let by_name: std::collections::BTreeMap<String, usize> = by_size
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        json!(by_name)
    }
}

/// The size of each room: `rooms` rooms as even as `users` allow (sizes differ by at most one),
/// or, when `sizes` is given, rooms of those sizes in turn, the last taking what is left (a
/// remainder of one joins the room before it: a room of one would have no receiver but its
/// sender).
pub fn room_sizes(users: usize, rooms: usize, sizes: &[usize]) -> anyhow::Result<Vec<usize>> {
    if users == 0 {
        bail!("--users must be at least 1");
    }
    if sizes.is_empty() {
        if rooms == 0 || rooms > users {
            bail!("--rooms must be between 1 and --users ({users})");
        }
        let (base, extra) = (users / rooms, users % rooms);
        return Ok((0..rooms).map(|r| base + usize::from(r < extra)).collect());
    }
    if sizes.contains(&0) {
        bail!("--room-sizes must all be at least 1");
    }
    let mut out = Vec::new();
    let mut left = users;
    for &size in sizes.iter().cycle() {
        if left == 0 {
            break;
        }
        let mut take = size.min(left);
        if left - take == 1 {
            take += 1;
        }
        out.push(take);
        left -= take;
    }
    Ok(out)
}

/// Splits socket indices `0..` into rooms of the given sizes, in order.
fn members_of(sizes: &[usize]) -> Vec<Vec<usize>> {
    let mut next = 0;
    sizes
        .iter()
        .map(|&n| {
            let m = (next..next + n).collect();
            next += n;
            m
        })
        .collect()
}

struct User {
    id: i64,
    token: String,
}

async fn register_and_login(
    http: &reqwest::Client,
    meta: &str,
    username: String,
) -> anyhow::Result<User> {
    let creds = json!({"username": username, "password": "fanout-password-1"});
    let _: Value = call(http.post(format!("{meta}/api/user/register")).json(&creds))
        .await
        .with_context(|| format!("registering {username}"))?;
    let login: LoginReply = call(http.post(format!("{meta}/api/user/login")).json(&creds))
        .await
        .with_context(|| format!("logging {username} in"))?;
    Ok(User {
        id: login.user_id,
        token: login.token,
    })
}

/// Makes room `members` on the server as its first member: a one-to-one room for two, a group
/// otherwise.
async fn make_room(
    http: &reqwest::Client,
    meta: &str,
    name: String,
    users: &[User],
    members: &[usize],
    group_chunk: usize,
) -> anyhow::Result<i64> {
    let owner = &users[members[0]];
    if let [_, peer] = members {
        let direct: DirectRoomReply = call(
            http.post(format!("{meta}/api/room/direct"))
                .bearer_auth(&owner.token)
                .json(&json!({"user_id": users[*peer].id})),
        )
        .await
        .context("making a one-to-one room")?;
        return Ok(direct.room.room_id);
    }
    let ids: Vec<i64> = members[1..].iter().map(|&m| users[m].id).collect();
    // A big group is made in steps, each request within the server's body limit: created with
    // the first `group_chunk` members, the rest added `group_chunk` at a time.
    let mut chunks = ids.chunks(group_chunk.max(1));
    let first = chunks.next().unwrap_or_default();
    let group: CreateGroupReply = call(
        http.post(format!("{meta}/api/group/create"))
            .bearer_auth(&owner.token)
            .json(&json!({"name": name, "member_ids": first})),
    )
    .await
    .context(
        "creating a group (the server caps a group at meta.max_group_members members, the owner \
         included, 1000 by default)",
    )?;
    for chunk in chunks {
        let _: AddMembersReply = call(
            http.post(format!("{meta}/api/group/{}/members", group.room_id))
                .bearer_auth(&owner.token)
                .json(&json!({"member_ids": chunk})),
        )
        .await
        .context(
            "adding members to a group (the server caps a group at meta.max_group_members \
             members, the owner included, 1000 by default)",
        )?;
    }
    Ok(group.room_id)
}

/// Registers the users and makes their rooms (server), or numbers the rooms (bare server).
pub async fn setup(
    http: &reqwest::Client,
    target: &Target,
    sizes: &[usize],
    prefix: &str,
    concurrency: usize,
    group_chunk: usize,
) -> anyhow::Result<Layout> {
    let members = members_of(sizes);
    let n: usize = sizes.iter().sum();
    match target {
        Target::Server {
            meta,
            send_urls,
            registry,
        } => {
            // Users (argon2 on the server: keep the concurrency small), then their rooms.
            let t = std::time::Instant::now();
            let mut users = Vec::with_capacity(n);
            let mut regs = futures_util::stream::iter(0..n)
                .map(|i| register_and_login(http, meta, format!("{prefix}_{i}")))
                .buffered(concurrency.max(1));
            while let Some(u) = regs.next().await {
                users.push(u?);
                if users.len() % 25 == 0 || users.len() == n {
                    eprint!("\rregistered {}/{n}", users.len());
                }
            }
            drop(regs);
            eprintln!(" ({:.1} s)", t.elapsed().as_secs_f64());
            let users = &users;
            let ids: Vec<i64> = futures_util::stream::iter(members.iter().enumerate())
                .map(|(r, m)| {
                    let name = format!("fanout {prefix} {r}");
                    make_room(http, meta, name, users, m, group_chunk)
                })
                .buffered(concurrency.max(1))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<anyhow::Result<_>>()?;
            let mut specs: Vec<SocketSpec> = users
                .iter()
                .enumerate()
                .map(|(index, u)| SocketSpec {
                    index,
                    user_id: u.id,
                    token: Some(u.token.clone()),
                    room_id: 0,
                    after_seq: 0,
                })
                .collect();
            let rooms = plan(ids, members, &mut specs);
            Ok(Layout {
                rooms,
                specs,
                connect: ConnectTarget::Registry {
                    registry: registry.clone(),
                },
                send_to: SendTo::Server {
                    urls: send_urls.clone(),
                    tokens: users.iter().map(|u| u.token.clone()).collect(),
                },
            })
        }
        Target::Bare { bases } => {
            let ws_url = |base: &String| {
                let ws = if let Some(rest) = base.strip_prefix("https://") {
                    format!("wss://{rest}")
                } else if let Some(rest) = base.strip_prefix("http://") {
                    format!("ws://{rest}")
                } else {
                    base.clone()
                };
                format!("{ws}/api/ws")
            };
            let mut specs: Vec<SocketSpec> = (0..n)
                .map(|index| SocketSpec {
                    index,
                    user_id: index as i64 + 1,
                    token: None,
                    room_id: 0,
                    after_seq: 0,
                })
                .collect();
            let ids = (1..=members.len() as i64).collect();
            let rooms = plan(ids, members, &mut specs);
            Ok(Layout {
                rooms,
                specs,
                connect: ConnectTarget::Url {
                    ws_urls: bases.iter().map(ws_url).collect(),
                },
                send_to: SendTo::Bare {
                    urls: bases.iter().map(|b| format!("{b}/api/broadcast")).collect(),
                },
            })
        }
    }
}

/// The rooms, with each member's socket told its room.
fn plan(ids: Vec<i64>, members: Vec<Vec<usize>>, specs: &mut [SocketSpec]) -> Vec<RoomPlan> {
    ids.into_iter()
        .zip(members)
        .map(|(id, members)| {
            for &m in &members {
                specs[m].room_id = id;
            }
            RoomPlan {
                id,
                members,
                last_seq: 0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_split_the_users_evenly_or_in_the_sizes_given() {
        let sizes = |u, r, s: &[usize]| room_sizes(u, r, s).expect("sizes");
        assert_eq!(sizes(2000, 20, &[]), vec![100; 20]);
        assert_eq!(sizes(10, 3, &[]), vec![4, 3, 3]);
        assert_eq!(sizes(14, 1, &[]), vec![14]);
        assert_eq!(sizes(14, 1, &[2, 5]), vec![2, 5, 2, 5]);
        // The last room takes what is left (2 of the next 5)...
        assert_eq!(sizes(11, 1, &[2, 5]), vec![2, 5, 2, 2]);
        // ...and a remainder of one joins the room before it.
        assert_eq!(sizes(10, 1, &[2, 5]), vec![2, 5, 3]);
        assert!(room_sizes(3, 4, &[]).is_err());
        assert!(room_sizes(3, 0, &[]).is_err());
        assert!(room_sizes(3, 1, &[2, 0]).is_err());
    }

    #[test]
    fn messages_go_round_robin_over_rooms_and_their_members() {
        let members = members_of(&[2, 3]);
        assert_eq!(members, vec![vec![0, 1], vec![2, 3, 4]]);
        let layout = Layout {
            rooms: members
                .into_iter()
                .enumerate()
                .map(|(i, members)| RoomPlan {
                    id: i as i64 + 10,
                    members,
                    last_seq: 0,
                })
                .collect(),
            specs: Vec::new(),
            connect: ConnectTarget::Url {
                ws_urls: vec![String::new()],
            },
            send_to: SendTo::Bare {
                urls: vec![String::new()],
            },
        };
        let sent: Vec<(usize, usize)> = (0..6).map(|i| layout.message(i)).collect();
        assert_eq!(sent, vec![(0, 0), (1, 2), (0, 1), (1, 3), (0, 0), (1, 4)]);
    }
}
