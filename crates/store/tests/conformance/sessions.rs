//! Sessions (refresh token families) and usernames that compare case-insensitively, on both
//! backends; the case-insensitive key's migration over a database that already holds names
//! differing only in case.

use std::path::Path;
use std::sync::Arc;

use store::{Rotation, Store, StoreError};

use super::{MySqlDb, mysql, sqlite, user};

const DAY_MS: i64 = 86_400_000;

async fn session(s: &dyn Store, user: i64, hash: &str) -> i64 {
    s.create_session(user, hash, 10 * DAY_MS, 1)
        .await
        .expect("create session")
}

async fn rotate(s: &dyn Store, old: &str, new: &str, now_ms: i64) -> Rotation {
    s.rotate_refresh_token(old, new, now_ms + 10 * DAY_MS, now_ms)
        .await
        .expect("rotate")
}

async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_session(s: &dyn Store) {
    let alice = user(s, "alice").await;
    let sid = session(s, alice, "h1").await;
    let rotated = Rotation::Rotated {
        session: sid,
        user: alice,
    };
    assert_eq!(rotate(s, "h1", "h2", 10).await, rotated);
    assert_eq!(rotate(s, "h2", "h3", 20).await, rotated);
    // h1 again: someone else holds a copy of a spent token. The whole session goes.
    assert_eq!(
        rotate(s, "h1", "h4", 30).await,
        Rotation::Reused {
            session: sid,
            user: alice
        }
    );
    assert_eq!(
        rotate(s, "h3", "h5", 40).await,
        Rotation::Refused,
        "the latest token of a revoked session is refused too"
    );
    assert_eq!(
        rotate(s, "h4", "h6", 50).await,
        Rotation::Refused,
        "the reuse stored nothing"
    );
    assert_eq!(rotate(s, "nothing", "h7", 60).await, Rotation::Refused);
    // Another session of the same user is untouched.
    let other = session(s, alice, "k1").await;
    assert_ne!(other, sid);
    assert!(matches!(
        rotate(s, "k1", "k2", 70).await,
        Rotation::Rotated { session, .. } if session == other
    ));
}

async fn expired_refresh_tokens_are_refused(s: &dyn Store) {
    let bob = user(s, "bob").await;
    let sid = s.create_session(bob, "e1", 100, 1).await.expect("session");
    assert_eq!(
        s.rotate_refresh_token("e1", "e2", 200, 99)
            .await
            .expect("rotate"),
        Rotation::Rotated {
            session: sid,
            user: bob
        }
    );
    assert_eq!(
        s.rotate_refresh_token("e2", "e3", 300, 200)
            .await
            .expect("rotate"),
        Rotation::Refused,
        "a token is refused from its expiry on"
    );
    // A login prunes the user's expired tokens: the expired session is gone, nothing breaks.
    let next = s
        .create_session(bob, "e4", 1000, 500)
        .await
        .expect("session");
    assert!(matches!(
        s.rotate_refresh_token("e4", "e5", 2000, 600).await.expect("rotate"),
        Rotation::Rotated { session, .. } if session == next
    ));
}

async fn logout_revokes_one_session_of_its_user_only(s: &dyn Store) {
    let carol = user(s, "carol").await;
    let dave = user(s, "dave").await;
    let one = session(s, carol, "c1").await;
    let two = session(s, carol, "c2").await;
    assert!(
        !s.revoke_session(dave, one, 5).await.expect("revoke"),
        "nobody revokes another user's session"
    );
    assert!(s.revoke_session(carol, one, 5).await.expect("revoke"));
    assert!(
        !s.revoke_session(carol, one, 6).await.expect("revoke"),
        "revoked before"
    );
    assert_eq!(rotate(s, "c1", "c3", 10).await, Rotation::Refused);
    assert!(matches!(
        rotate(s, "c2", "c4", 10).await,
        Rotation::Rotated { session, .. } if session == two
    ));
}

async fn a_password_change_revokes_every_session(s: &dyn Store) {
    let erin = user(s, "erin").await;
    let frank = user(s, "frank").await;
    session(s, erin, "p1").await;
    session(s, erin, "p2").await;
    session(s, frank, "f1").await;
    let version = s
        .change_password(erin, "x", "new-hash", 5)
        .await
        .expect("change");
    assert_eq!(version, Some(1));
    assert_eq!(rotate(s, "p1", "p3", 10).await, Rotation::Refused);
    assert_eq!(rotate(s, "p2", "p4", 10).await, Rotation::Refused);
    assert!(
        matches!(rotate(s, "f1", "f2", 10).await, Rotation::Rotated { .. }),
        "other users keep their sessions"
    );
    // A refused change (wrong old hash) revokes nothing.
    let after = session(s, erin, "p5").await;
    assert_eq!(
        s.change_password(erin, "x", "other", 20)
            .await
            .expect("change"),
        None
    );
    assert!(matches!(
        rotate(s, "p5", "p6", 30).await,
        Rotation::Rotated { session, .. } if session == after
    ));
}

async fn concurrent_spends_of_one_token_rotate_once(s: Arc<dyn Store>) {
    let gina = user(s.as_ref(), "gina").await;
    session(s.as_ref(), gina, "r1").await;
    let spends: Vec<_> = (0..4)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { rotate(s.as_ref(), "r1", &format!("r2-{i}"), 10).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in spends {
        outcomes.push(t.await.expect("task"));
    }
    let rotated = outcomes
        .iter()
        .filter(|o| matches!(o, Rotation::Rotated { .. }))
        .count();
    assert_eq!(rotated, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Rotation::Reused { .. })),
        "the spend right after the first is reuse: {outcomes:?}"
    );
}

/// Registering `name` is refused: someone has it, in some case.
async fn assert_taken(s: &dyn Store, name: &str) {
    let again = s
        .create_user(store::NewUser {
            username: name.into(),
            password_hash: "y".into(),
            nickname: name.into(),
            now_ms: 1,
        })
        .await;
    assert!(
        matches!(again, Err(StoreError::Conflict)),
        "{name}: {again:?}"
    );
}

async fn usernames_are_unique_in_any_case_and_found_by_any_spelling(s: &dyn Store) {
    let id = user(s, "Alice").await;
    for taken in ["alice", "ALICE", "aLiCe"] {
        assert_taken(s, taken).await;
    }
    for spelling in ["Alice", "alice", "ALICE", "\u{ff21}lice"] {
        let found = s
            .user_by_username(spelling)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("{spelling} finds the account"));
        assert_eq!(found.id, id);
        assert_eq!(
            found.username, "Alice",
            "the account keeps its own spelling"
        );
    }
    assert_eq!(s.user_by_username("alicia").await.expect("read"), None);
    assert!(s.username_collisions().await.expect("read").is_empty());
}

/// The migrations of `dir` before the username key's, as an older release ran them (the
/// directory must outlive the migrator's use).
async fn migrations_before_keys(dir: &str) -> (tempfile::TempDir, sqlx::migrate::Migrator) {
    let out = tempfile::tempdir().expect("tempdir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    for entry in std::fs::read_dir(&src).expect("migrations dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        if name.as_str() < "0006" {
            std::fs::copy(&path, out.path().join(&name)).expect("copy migration");
        }
    }
    let migrator = sqlx::migrate::Migrator::new(out.path())
        .await
        .expect("old migrations");
    (out, migrator)
}

/// Users an older release could store side by side: `Bob`, `bob` and `BOB`, and `carol`.
const OLD_USERS: &str = "INSERT INTO users (username, password_hash, nickname, created_at, \
    updated_at) VALUES ('Bob', 'x', 'Bob', 1, 1), ('bob', 'x', 'bob', 1, 1), \
    ('BOB', 'x', 'BOB', 1, 1), ('carol', 'x', 'carol', 1, 1)";

/// After the key migration over [`OLD_USERS`]: nothing failed, the two younger `bob`s are
/// reported and log in by their exact names, other spellings reach the oldest, and no new
/// spelling of a taken name can be registered.
async fn old_collisions_are_reported_and_stay_reachable(s: &dyn Store) {
    let collisions: Vec<String> = s
        .username_collisions()
        .await
        .expect("collisions")
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(collisions, ["bob", "BOB"]);
    let name_of = |u: Option<store::User>| u.expect("found").username;
    for (asked, found) in [
        ("Bob", "Bob"),
        ("bob", "bob"),
        ("BOB", "BOB"),
        ("bOb", "Bob"),
        ("CAROL", "carol"),
    ] {
        assert_eq!(
            name_of(s.user_by_username(asked).await.expect("read")),
            found,
            "{asked}"
        );
    }
    for taken in ["boB", "Carol"] {
        assert_taken(s, taken).await;
    }
}

#[tokio::test]
async fn sqlite_refresh_tokens_rotate_and_a_reused_one_revokes_the_session() {
    let (_d, s) = sqlite().await;
    refresh_tokens_rotate_and_a_reused_one_revokes_the_session(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_refresh_tokens_rotate_and_a_reused_one_revokes_the_session() {
    let (_d, s) = mysql().await;
    refresh_tokens_rotate_and_a_reused_one_revokes_the_session(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_expired_refresh_tokens_are_refused() {
    let (_d, s) = sqlite().await;
    expired_refresh_tokens_are_refused(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_expired_refresh_tokens_are_refused() {
    let (_d, s) = mysql().await;
    expired_refresh_tokens_are_refused(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_logout_revokes_one_session_of_its_user_only() {
    let (_d, s) = sqlite().await;
    logout_revokes_one_session_of_its_user_only(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_logout_revokes_one_session_of_its_user_only() {
    let (_d, s) = mysql().await;
    logout_revokes_one_session_of_its_user_only(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_a_password_change_revokes_every_session() {
    let (_d, s) = sqlite().await;
    a_password_change_revokes_every_session(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_a_password_change_revokes_every_session() {
    let (_d, s) = mysql().await;
    a_password_change_revokes_every_session(s.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_spends_of_one_token_rotate_once() {
    let (_d, s) = sqlite().await;
    concurrent_spends_of_one_token_rotate_once(s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_concurrent_spends_of_one_token_rotate_once() {
    let (_d, s) = mysql().await;
    concurrent_spends_of_one_token_rotate_once(s).await;
}

#[tokio::test]
async fn sqlite_usernames_are_unique_in_any_case_and_found_by_any_spelling() {
    let (_d, s) = sqlite().await;
    usernames_are_unique_in_any_case_and_found_by_any_spelling(s.as_ref()).await;
}

#[tokio::test]
async fn mysql_usernames_are_unique_in_any_case_and_found_by_any_spelling() {
    let (_d, s) = mysql().await;
    usernames_are_unique_in_any_case_and_found_by_any_spelling(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_old_collisions_are_reported_and_stay_reachable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.expect("connect");
        let (_dir, old) = migrations_before_keys("migrations/sqlite").await;
        old.run(&pool).await.expect("migrate to the old schema");
        sqlx::query(OLD_USERS)
            .execute(&pool)
            .await
            .expect("old users");
        pool.close().await;
    }
    let s = store::sqlite::SqliteStore::open(&path)
        .await
        .expect("the key migration does not fail on collisions");
    old_collisions_are_reported_and_stay_reachable(&s).await;
}

#[tokio::test]
async fn mysql_old_collisions_are_reported_and_stay_reachable() {
    let db = MySqlDb::create().await;
    {
        let pool = sqlx::MySqlPool::connect(&db.url).await.expect("connect");
        let (_dir, old) = migrations_before_keys("migrations/mysql").await;
        old.run(&pool).await.expect("migrate to the old schema");
        sqlx::query(OLD_USERS)
            .execute(&pool)
            .await
            .expect("old users");
        pool.close().await;
    }
    let s = db.store().await;
    old_collisions_are_reported_and_stay_reachable(&s).await;
}
