//! Who may do what to a room: the table of docs/authorization.md as one function over plain
//! values, [`check`], with no I/O and no HTTP. A handler reads the room (under its change lock
//! when it changes it), states the facts (what the room is, the caller's relation to it, the
//! target's), and maps a [`Refusal`] to its status and `error` name; the tests at the bottom are
//! the table again, row by row, to read side by side with the document.
//!
//! Only what depends on who asks is here. What depends on the input or the data (a valid name,
//! the member limit, a pending request, a request id) stays with the handler, in the order the
//! handler checks it, which is part of the answer: a refusal here comes before those.

use proto::api::Role;

/// What the room the operation is about is, as the caller's request finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// No such room, or a dissolved group: the same to everyone.
    Unknown,
    /// A group; `open` lets anyone join without asking.
    Group { open: bool },
    /// A one-to-one room: two plain members and no management.
    Direct,
}

/// A user's relation to a room: the columns of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    Owner,
    Admin,
    Member,
    /// Not in the room (or no room at all).
    Outsider,
}

impl Relation {
    /// The relation of a user with `role` in the room, or of one who is not in it (`None`).
    pub fn of(role: Option<Role>) -> Self {
        match role {
            Some(Role::Owner) => Self::Owner,
            Some(Role::Admin) => Self::Admin,
            Some(Role::Member) => Self::Member,
            None => Self::Outsider,
        }
    }
}

/// The user an operation acts on, as the caller sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The caller themselves.
    Oneself,
    /// Someone else, with their relation to the room.
    Other(Relation),
}

/// An operation on a room: the rows of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `GET /api/group/{room_id}/members`.
    SeeMembers,
    /// `POST /api/group/{room_id}/members`.
    AddMembers,
    /// `DELETE /api/group/{room_id}/members/{user}`.
    RemoveMember(Target),
    /// `POST /api/group/{room_id}/leave`.
    Leave,
    /// `PUT /api/group/{room_id}/members/{user}/role`.
    ChangeRole(Target),
    /// `PUT /api/group/{room_id}/nickname`: one's own group nickname.
    SetNickname,
    /// `DELETE /api/group/{room_id}`.
    Dissolve,
    /// `POST /api/group/{room_id}/transfer`.
    Transfer(Target),
    /// `PUT /api/group/{room_id}/name`.
    Rename,
    /// `PUT /api/group/{room_id}/open`.
    SetOpen,
    /// `POST /api/group/{room_id}/join`.
    Join,
    /// `POST /api/group/{room_id}/requests`.
    RequestToJoin,
    /// `GET /api/group/{room_id}/requests`.
    ListRequests,
    /// `POST /api/group/{room_id}/requests/{id}`.
    AnswerRequest,
}

impl Op {
    /// The operation in words, for the sentence of a refusal ("only the owner may ...").
    pub fn what(self) -> &'static str {
        match self {
            Self::SeeMembers => "see the members",
            Self::AddMembers => "add members",
            Self::RemoveMember(_) => "remove members",
            Self::Leave => "leave the group",
            Self::ChangeRole(_) => "change roles",
            Self::SetNickname => "set a group nickname",
            Self::Dissolve => "dissolve the group",
            Self::Transfer(_) => "transfer the group",
            Self::Rename => "rename the group",
            Self::SetOpen => "open or close the group",
            Self::Join => "join the group",
            Self::RequestToJoin => "ask to join the group",
            Self::ListRequests => "see join requests",
            Self::AnswerRequest => "answer join requests",
        }
    }
}

/// Why an operation is refused; each is one status and `error` name of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 404 `room_not_found`.
    #[error("no such room")]
    RoomNotFound,
    /// 403 `not_a_member`.
    #[error("only members of this room may do that")]
    NotAMember,
    /// 400 `not_a_group`.
    #[error("this is a one-to-one room; it has no member management")]
    NotAGroup,
    /// 403 `not_an_admin`.
    #[error("only the owner and admins may {}", .0.what())]
    NotAnAdmin(Op),
    /// 403 `not_the_owner`.
    #[error("only the owner may {}", .0.what())]
    NotTheOwner(Op),
    /// 403 `not_allowed`: a removal the caller's role does not cover.
    #[error("the owner may remove anyone; admins may remove plain members")]
    NotAllowed,
    /// 400 `cannot_remove_self`.
    #[error("to leave a group use POST /api/group/{{room_id}}/leave")]
    CannotRemoveSelf,
    /// 409 `owner_cannot_leave`.
    #[error("the owner cannot leave; transfer ownership first")]
    OwnerCannotLeave,
    /// 400 `cannot_change_own_role`.
    #[error("the owner's role changes only by transferring ownership")]
    CannotChangeOwnRole,
    /// 400 `already_the_owner`.
    #[error("you own this group already")]
    AlreadyTheOwner,
    /// 404 `member_not_found`: the target is not in the group.
    #[error("that user is not in this group")]
    MemberNotFound,
    /// 409 `already_a_member`.
    #[error("you are in this group already")]
    AlreadyAMember,
    /// 403 `approval_required`.
    #[error("this group is not open: ask to join with POST /api/group/{{room_id}}/requests")]
    ApprovalRequired,
}

/// The least role an operation on a group needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Member,
    Admin,
    Owner,
}

/// Whether `me` may do `op` in `room`: `Ok`, or the first refusal that applies.
pub fn check(op: Op, room: Room, me: Relation) -> Result<(), Refusal> {
    if room == Room::Unknown {
        return Err(Refusal::RoomNotFound);
    }
    match op {
        // Reading the members is for every member of any room, one-to-one rooms included.
        Op::SeeMembers => member(me).map(drop),
        // Joining is for outsiders; a one-to-one room says so before anything about the caller.
        Op::Join | Op::RequestToJoin => {
            let Room::Group { open } = room else {
                return Err(Refusal::NotAGroup);
            };
            if me != Relation::Outsider {
                return Err(Refusal::AlreadyAMember);
            }
            if op == Op::Join && !open {
                return Err(Refusal::ApprovalRequired);
            }
            Ok(())
        }
        Op::AddMembers | Op::Rename | Op::SetOpen | Op::ListRequests | Op::AnswerRequest => {
            manage(op, room, me, Need::Admin).map(drop)
        }
        Op::Dissolve => manage(op, room, me, Need::Owner).map(drop),
        Op::SetNickname => manage(op, room, me, Need::Member).map(drop),
        Op::Leave => match manage(op, room, me, Need::Member)? {
            Role::Owner => Err(Refusal::OwnerCannotLeave),
            Role::Admin | Role::Member => Ok(()),
        },
        Op::RemoveMember(target) => {
            let role = manage(op, room, me, Need::Member)?;
            let theirs = other(target, Refusal::CannotRemoveSelf)?;
            match (role, theirs) {
                (Role::Owner, _) | (Role::Admin, Role::Member) => Ok(()),
                _ => Err(Refusal::NotAllowed),
            }
        }
        Op::ChangeRole(target) => {
            manage(op, room, me, Need::Owner)?;
            other(target, Refusal::CannotChangeOwnRole).map(drop)
        }
        Op::Transfer(target) => {
            manage(op, room, me, Need::Owner)?;
            other(target, Refusal::AlreadyTheOwner).map(drop)
        }
    }
}

/// The caller's role in a room they are in.
fn member(me: Relation) -> Result<Role, Refusal> {
    match me {
        Relation::Owner => Ok(Role::Owner),
        Relation::Admin => Ok(Role::Admin),
        Relation::Member => Ok(Role::Member),
        Relation::Outsider => Err(Refusal::NotAMember),
    }
}

/// The caller's role for managing a group: a member first (an outsider learns nothing more,
/// not even that the room is one-to-one), then a group, then the role `op` needs.
fn manage(op: Op, room: Room, me: Relation, need: Need) -> Result<Role, Refusal> {
    let role = member(me)?;
    if room == Room::Direct {
        return Err(Refusal::NotAGroup);
    }
    match (need, role) {
        (Need::Admin, Role::Member) => Err(Refusal::NotAnAdmin(op)),
        (Need::Owner, Role::Admin | Role::Member) => Err(Refusal::NotTheOwner(op)),
        _ => Ok(role),
    }
}

/// The target's role, when it is someone else in the group; `oneself` when it is the caller.
fn other(target: Target, oneself: Refusal) -> Result<Role, Refusal> {
    match target {
        Target::Oneself => Err(oneself),
        Target::Other(them) => member(them).map_err(|_| Refusal::MemberNotFound),
    }
}

#[cfg(test)]
mod tests {
    //! docs/authorization.md, one test per row, each with the columns in the document's order:
    //! owner, admin, member, outsider. Every row also holds for an unknown (or dissolved) room
    //! and for one-to-one rooms, as the paragraphs under the table say; those are the last two
    //! tests. Rows about accounts, searching and messages are not decided by Meta's policy
    //! (any signed-in user, or Send's membership check), so they are not here.

    use super::Relation::{Admin, Member, Outsider, Owner};
    use super::*;

    const OPEN: Room = Room::Group { open: true };
    const CLOSED: Room = Room::Group { open: false };
    const COLUMNS: [Relation; 4] = [Owner, Admin, Member, Outsider];

    /// The row of `op` in `room`, one answer per column.
    fn row(op: Op, room: Room) -> [Result<(), Refusal>; 4] {
        COLUMNS.map(|me| check(op, room, me))
    }

    const OK: Result<(), Refusal> = Ok(());

    fn no(r: Refusal) -> Result<(), Refusal> {
        Err(r)
    }

    #[test]
    fn members_are_seen_by_every_member() {
        for room in [OPEN, CLOSED] {
            assert_eq!(
                row(Op::SeeMembers, room),
                [OK, OK, OK, no(Refusal::NotAMember)]
            );
        }
    }

    #[test]
    fn owner_and_admins_add_members() {
        let op = Op::AddMembers;
        assert_eq!(
            row(op, CLOSED),
            [OK, OK, no(Refusal::NotAnAdmin(op)), no(Refusal::NotAMember)]
        );
    }

    #[test]
    fn removing_a_member_is_for_the_owner_and_admins() {
        let op = Op::RemoveMember(Target::Other(Member));
        assert_eq!(
            row(op, CLOSED),
            [OK, OK, no(Refusal::NotAllowed), no(Refusal::NotAMember)]
        );
    }

    #[test]
    fn removing_an_admin_is_for_the_owner() {
        let op = Op::RemoveMember(Target::Other(Admin));
        assert_eq!(
            row(op, CLOSED),
            [
                OK,
                no(Refusal::NotAllowed),
                no(Refusal::NotAllowed),
                no(Refusal::NotAMember)
            ]
        );
    }

    #[test]
    fn the_owner_is_removed_by_nobody_and_nobody_removes_themselves() {
        let the_owner = Op::RemoveMember(Target::Other(Owner));
        // The owner's own cell is about themselves: the owner is the only one.
        assert_eq!(
            row(the_owner, CLOSED)[1..],
            [
                no(Refusal::NotAllowed),
                no(Refusal::NotAllowed),
                no(Refusal::NotAMember)
            ]
        );
        assert_eq!(
            row(Op::RemoveMember(Target::Oneself), CLOSED),
            [
                no(Refusal::CannotRemoveSelf),
                no(Refusal::CannotRemoveSelf),
                no(Refusal::CannotRemoveSelf),
                no(Refusal::NotAMember)
            ]
        );
    }

    #[test]
    fn removing_someone_not_in_the_group_finds_no_member() {
        // Before the roles are compared: a plain member learns that, as the owner does.
        let op = Op::RemoveMember(Target::Other(Outsider));
        assert_eq!(
            row(op, CLOSED),
            [
                no(Refusal::MemberNotFound),
                no(Refusal::MemberNotFound),
                no(Refusal::MemberNotFound),
                no(Refusal::NotAMember)
            ]
        );
    }

    #[test]
    fn everyone_but_the_owner_leaves() {
        assert_eq!(
            row(Op::Leave, CLOSED),
            [
                no(Refusal::OwnerCannotLeave),
                OK,
                OK,
                no(Refusal::NotAMember)
            ]
        );
    }

    #[test]
    fn the_owner_changes_roles_of_others_in_the_group() {
        for target in [Admin, Member] {
            let op = Op::ChangeRole(Target::Other(target));
            assert_eq!(
                row(op, CLOSED),
                [
                    OK,
                    no(Refusal::NotTheOwner(op)),
                    no(Refusal::NotTheOwner(op)),
                    no(Refusal::NotAMember)
                ]
            );
        }
        assert_eq!(
            check(Op::ChangeRole(Target::Oneself), CLOSED, Owner),
            no(Refusal::CannotChangeOwnRole)
        );
        assert_eq!(
            check(Op::ChangeRole(Target::Other(Outsider)), CLOSED, Owner),
            no(Refusal::MemberNotFound)
        );
    }

    #[test]
    fn every_member_sets_their_own_group_nickname() {
        assert_eq!(
            row(Op::SetNickname, CLOSED),
            [OK, OK, OK, no(Refusal::NotAMember)]
        );
    }

    #[test]
    fn only_the_owner_dissolves() {
        let op = Op::Dissolve;
        assert_eq!(
            row(op, CLOSED),
            [
                OK,
                no(Refusal::NotTheOwner(op)),
                no(Refusal::NotTheOwner(op)),
                no(Refusal::NotAMember)
            ]
        );
    }

    #[test]
    fn only_the_owner_transfers_and_only_to_a_member() {
        for target in [Admin, Member] {
            let op = Op::Transfer(Target::Other(target));
            assert_eq!(
                row(op, CLOSED),
                [
                    OK,
                    no(Refusal::NotTheOwner(op)),
                    no(Refusal::NotTheOwner(op)),
                    no(Refusal::NotAMember)
                ]
            );
        }
        assert_eq!(
            check(Op::Transfer(Target::Oneself), CLOSED, Owner),
            no(Refusal::AlreadyTheOwner)
        );
        assert_eq!(
            check(Op::Transfer(Target::Other(Outsider)), CLOSED, Owner),
            no(Refusal::MemberNotFound)
        );
    }

    #[test]
    fn owner_and_admins_rename() {
        let op = Op::Rename;
        assert_eq!(
            row(op, CLOSED),
            [OK, OK, no(Refusal::NotAnAdmin(op)), no(Refusal::NotAMember)]
        );
    }

    #[test]
    fn owner_and_admins_open_and_close() {
        let op = Op::SetOpen;
        for room in [OPEN, CLOSED] {
            assert_eq!(
                row(op, room),
                [OK, OK, no(Refusal::NotAnAdmin(op)), no(Refusal::NotAMember)]
            );
        }
    }

    #[test]
    fn outsiders_join_open_groups_and_ask_to_join_closed_ones() {
        let members = [
            no(Refusal::AlreadyAMember),
            no(Refusal::AlreadyAMember),
            no(Refusal::AlreadyAMember),
        ];
        assert_eq!(row(Op::Join, OPEN)[..3], members);
        assert_eq!(row(Op::Join, OPEN)[3], OK);
        assert_eq!(row(Op::Join, CLOSED)[..3], members);
        assert_eq!(row(Op::Join, CLOSED)[3], no(Refusal::ApprovalRequired));
    }

    #[test]
    fn outsiders_ask_to_join_any_group() {
        for room in [OPEN, CLOSED] {
            assert_eq!(
                row(Op::RequestToJoin, room),
                [
                    no(Refusal::AlreadyAMember),
                    no(Refusal::AlreadyAMember),
                    no(Refusal::AlreadyAMember),
                    OK
                ]
            );
        }
    }

    #[test]
    fn owner_and_admins_see_join_requests() {
        let op = Op::ListRequests;
        assert_eq!(
            row(op, CLOSED),
            [OK, OK, no(Refusal::NotAnAdmin(op)), no(Refusal::NotAMember)]
        );
    }

    #[test]
    fn owner_and_admins_answer_join_requests() {
        let op = Op::AnswerRequest;
        assert_eq!(
            row(op, CLOSED),
            [OK, OK, no(Refusal::NotAnAdmin(op)), no(Refusal::NotAMember)]
        );
    }

    /// Every operation, with every kind of target.
    fn every_op() -> Vec<Op> {
        let targets = [
            Target::Oneself,
            Target::Other(Owner),
            Target::Other(Admin),
            Target::Other(Member),
            Target::Other(Outsider),
        ];
        let mut ops = vec![
            Op::SeeMembers,
            Op::AddMembers,
            Op::Leave,
            Op::SetNickname,
            Op::Dissolve,
            Op::Rename,
            Op::SetOpen,
            Op::Join,
            Op::RequestToJoin,
            Op::ListRequests,
            Op::AnswerRequest,
        ];
        for t in targets {
            ops.extend([Op::RemoveMember(t), Op::ChangeRole(t), Op::Transfer(t)]);
        }
        ops
    }

    #[test]
    fn an_unknown_or_dissolved_room_is_not_found_by_anyone() {
        for op in every_op() {
            assert_eq!(
                row(op, Room::Unknown),
                [no(Refusal::RoomNotFound); 4],
                "{op:?}"
            );
        }
    }

    #[test]
    fn a_one_to_one_room_has_no_management() {
        // Its two members are plain members; reading the members works as in a group. Joining
        // and asking to join say `not_a_group` to anyone; every other group operation says it
        // to the members and `not_a_member` to an outsider.
        for op in every_op() {
            let (peer, outsider) = (
                check(op, Room::Direct, Member),
                check(op, Room::Direct, Outsider),
            );
            match op {
                Op::SeeMembers => assert_eq!((peer, outsider), (OK, no(Refusal::NotAMember))),
                Op::Join | Op::RequestToJoin => assert_eq!(
                    (peer, outsider),
                    (no(Refusal::NotAGroup), no(Refusal::NotAGroup)),
                    "{op:?}"
                ),
                _ => assert_eq!(
                    (peer, outsider),
                    (no(Refusal::NotAGroup), no(Refusal::NotAMember)),
                    "{op:?}"
                ),
            }
        }
    }

    #[test]
    fn relations_follow_roles() {
        assert_eq!(Relation::of(Some(Role::Owner)), Owner);
        assert_eq!(Relation::of(Some(Role::Admin)), Admin);
        assert_eq!(Relation::of(Some(Role::Member)), Member);
        assert_eq!(Relation::of(None), Outsider);
    }
}
