//! Stream entries for "these users get this": the recipients' gateways (from [`Routes`]), and on
//! each gateway the recipients sorted and cut into entries of at most
//! [`MAX_TARGETS_PER_ENTRY`] targets.
//!
//! The sort is load-bearing: every Send instance cuts a room's members into the same chunks, so a
//! gateway knows a chunk by its first target and keeps each chunk's entries in `seq` order (the
//! gateway's reorder window). Fan-out, the pending tracker's re-routing, reclaiming a dead
//! gateway's entries and group notices all plan their entries here.

use std::collections::HashMap;

use proto::UserId;
use proto::stream::{MAX_TARGETS_PER_ENTRY, PushEntry};

use crate::{BusError, GatewayId, Routes};

/// Appends to `out` the entries for `users`, all on `gateway`: sorted, then one entry per
/// [`MAX_TARGETS_PER_ENTRY`] of them, made by `make` from its targets. Returns how many.
pub fn chunk(
    gateway: &GatewayId,
    mut users: Vec<UserId>,
    make: &mut impl FnMut(Vec<UserId>) -> PushEntry,
    out: &mut Vec<(GatewayId, PushEntry)>,
) -> usize {
    users.sort_unstable();
    let before = out.len();
    for targets in users.chunks(MAX_TARGETS_PER_ENTRY) {
        out.push((gateway.clone(), make(targets.to_vec())));
    }
    out.len() - before
}

/// Appends to `out` the entries for every gateway in `located` (gateway -> its users), as
/// [`chunk`] cuts them. Returns how many.
pub fn entries(
    located: HashMap<GatewayId, Vec<UserId>>,
    mut make: impl FnMut(Vec<UserId>) -> PushEntry,
    out: &mut Vec<(GatewayId, PushEntry)>,
) -> usize {
    located
        .into_iter()
        .map(|(gateway, users)| chunk(&gateway, users, &mut make, out))
        .sum()
}

/// Locates `users` and returns their entries ([`entries`]); users connected nowhere get none
/// (they catch up from the database when they return).
pub async fn locate(
    routes: &dyn Routes,
    users: &[UserId],
    make: impl FnMut(Vec<UserId>) -> PushEntry,
) -> Result<Vec<(GatewayId, PushEntry)>, BusError> {
    let located = routes.locate(users).await?;
    let mut out = Vec::new();
    entries(located, make, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proto::frame::{Notice, NoticeEvent};

    use super::*;
    use crate::inproc::InProcRoutes;

    fn notice(targets: Vec<UserId>) -> PushEntry {
        PushEntry::Notice {
            notice: Arc::new(Notice {
                room_id: 1,
                event: NoticeEvent::MemberJoined,
                user_ids: vec![1],
                by: None,
                detail: None,
                request_id: None,
            }),
            targets,
        }
    }

    fn targets(e: &PushEntry) -> &[UserId] {
        match e {
            PushEntry::Notice { targets, .. }
            | PushEntry::Chat { targets, .. }
            | PushEntry::Read { targets, .. }
            | PushEntry::Typing { targets, .. } => targets,
            PushEntry::Ack { .. } | PushEntry::Revoke { .. } | PushEntry::DropDevice { .. } => &[],
        }
    }

    #[test]
    fn users_are_sorted_then_cut_into_entries_of_at_most_100() {
        let g: GatewayId = "g".into();
        let users: Vec<UserId> = (1..=250).rev().collect();
        let mut out = Vec::new();
        assert_eq!(chunk(&g, users, &mut notice, &mut out), 3);
        let cut: Vec<Vec<UserId>> = out.iter().map(|(_, e)| targets(e).to_vec()).collect();
        assert_eq!(cut[0], (1..=100).collect::<Vec<_>>());
        assert_eq!(cut[1], (101..=200).collect::<Vec<_>>());
        assert_eq!(cut[2], (201..=250).collect::<Vec<_>>());
        assert!(out.iter().all(|(gw, _)| gw == &g));
    }

    #[test]
    fn the_same_members_in_any_order_make_the_same_chunks() {
        // Two Send instances see a room's members in different orders; the gateway keys each
        // chunk's order by its first target, so both must cut the same chunks.
        let g: GatewayId = "g".into();
        let mut a = Vec::new();
        let mut b = Vec::new();
        chunk(&g, (1..=201).collect(), &mut notice, &mut a);
        let shuffled: Vec<UserId> = (1..=201).map(|u| (u * 37) % 201 + 1).collect();
        chunk(&g, shuffled, &mut notice, &mut b);
        assert_eq!(a, b);
        let firsts: Vec<UserId> = a.iter().map(|(_, e)| targets(e)[0]).collect();
        assert_eq!(firsts, vec![1, 101, 201]);
    }

    #[test]
    fn nobody_makes_no_entry() {
        let mut out = Vec::new();
        assert_eq!(chunk(&"g".into(), Vec::new(), &mut notice, &mut out), 0);
        assert_eq!(entries(HashMap::new(), notice, &mut out), 0);
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn each_gateway_gets_the_entries_of_its_own_users() {
        let routes = InProcRoutes::default();
        let (g1, g2): (GatewayId, GatewayId) = ("g1".into(), "g2".into());
        for u in [5, 3, 1] {
            routes.connected(u, &g1).await.expect("route");
        }
        routes.connected(2, &g2).await.expect("route");
        let mut planned = locate(&routes, &[1, 2, 3, 4, 5], notice)
            .await
            .expect("located");
        planned.sort_by(|a, b| a.0.cmp(&b.0));
        let got: Vec<(&str, Vec<UserId>)> = planned
            .iter()
            .map(|(g, e)| (&**g, targets(e).to_vec()))
            .collect();
        assert_eq!(got, vec![("g1", vec![1, 3, 5]), ("g2", vec![2])]);
    }
}
