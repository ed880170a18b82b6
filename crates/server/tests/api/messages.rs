//! Sending and reading messages over HTTP: seq numbering, history paging, types, idempotency and
//! content limits.

use testkit::proto::api::{HistoryReply, MessageType, SendMessageReply};
use testkit::{TestApp, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_message_gets_an_id_the_next_seq_and_a_timestamp() {
    let app = TestApp::spawn().await;
    let users = app.users(&["alice", "bob"]).await;
    let (alice, bob) = (&users[0], &users[1]);
    let room = app.api.create_group_ok(alice, "room", &[bob]).await.room_id;

    let first = app.api.send_ok(alice, room, "hello").await;
    assert_eq!(
        (first.room_id, first.seq, first.duplicate),
        (room, 1, false)
    );
    assert!(first.message_id > 0 && first.message_id < (1 << 53));
    assert!(
        first.timestamp.contains('T'),
        "RFC 3339: {}",
        first.timestamp
    );
    assert_eq!(first.client_msg_id, None);

    let second = app.api.send_ok(bob, room, "hi back").await;
    assert_eq!(second.seq, 2);
    assert_ne!(second.message_id, first.message_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_room_numbers_its_messages_from_one() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let a = app.api.create_group_ok(&alice, "a", &[]).await.room_id;
    let b = app.api.create_group_ok(&alice, "b", &[]).await.room_id;
    assert_eq!(app.api.send_ok(&alice, a, "a1").await.seq, 1);
    assert_eq!(app.api.send_ok(&alice, a, "a2").await.seq, 2);
    assert_eq!(app.api.send_ok(&alice, b, "b1").await.seq, 1);
    assert_eq!(app.api.send_ok(&alice, a, "a3").await.seq, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_returns_what_was_sent_with_every_field() {
    let app = TestApp::spawn().await;
    let users = app.users(&["alice", "bob"]).await;
    let (alice, bob) = (&users[0], &users[1]);
    let room = app.api.create_group_ok(alice, "room", &[bob]).await.room_id;

    let sent: SendMessageReply = app
        .api
        .send_message(
            &alice.token,
            json!({"room_id": room, "content": "https://example.invalid/cat.png", "type": "image", "client_msg_id": "img-1"}),
        )
        .await
        .data();
    assert_eq!(sent.client_msg_id.as_deref(), Some("img-1"));
    let file: SendMessageReply = app
        .api
        .send_message(
            &bob.token,
            json!({"room_id": room, "content": "{\"name\":\"a.pdf\"}", "type": "file"}),
        )
        .await
        .data();
    let text: SendMessageReply = app
        .api
        .send_message(
            &bob.token,
            json!({"room_id": room, "content": "plain", "type": "text"}),
        )
        .await
        .data();

    let history: HistoryReply = app.api.history(&bob.token, room, 0, None).await.data();
    assert_eq!(history.room_id, room);
    assert!(!history.has_more);
    let got: Vec<_> = history
        .messages
        .iter()
        .map(|m| (m.id, m.sender_id, m.seq, m.msg_type, m.content.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                sent.message_id,
                alice.id,
                1,
                MessageType::Image,
                "https://example.invalid/cat.png"
            ),
            (
                file.message_id,
                bob.id,
                2,
                MessageType::File,
                "{\"name\":\"a.pdf\"}"
            ),
            (text.message_id, bob.id, 3, MessageType::Text, "plain"),
        ]
    );
    assert_eq!(history.messages[0].client_msg_id.as_deref(), Some("img-1"));
    assert_eq!(history.messages[0].timestamp, sent.timestamp);
    assert!(history.messages.iter().all(|m| m.room_id == room));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_by_after_seq_and_limit() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let room = app.api.create_group_ok(&alice, "paged", &[]).await.room_id;
    for i in 1..=5 {
        app.api.send_ok(&alice, room, &format!("m{i}")).await;
    }

    let page: HistoryReply = app.api.history(&alice.token, room, 0, Some(2)).await.data();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert!(page.has_more);

    let page: HistoryReply = app.api.history(&alice.token, room, 2, Some(2)).await.data();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert!(page.has_more);

    let page: HistoryReply = app.api.history(&alice.token, room, 4, Some(2)).await.data();
    assert_eq!(
        page.messages
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>(),
        vec!["m5"]
    );
    assert!(!page.has_more);

    let page: HistoryReply = app.api.history(&alice.token, room, 5, None).await.data();
    assert!(page.messages.is_empty() && !page.has_more);

    // Only room_id: everything from the start.
    let all: HistoryReply = app
        .api
        .history_query(&alice.token, &format!("room_id={room}"))
        .await
        .data();
    assert_eq!(
        all.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_defaults_to_fifty_messages_a_page() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let room = app.api.create_group_ok(&alice, "long", &[]).await.room_id;
    for i in 1..=60 {
        app.api.send_ok(&alice, room, &format!("m{i}")).await;
    }
    let page: HistoryReply = app
        .api
        .history_query(&alice.token, &format!("room_id={room}"))
        .await
        .data();
    assert_eq!(page.messages.len(), 50);
    assert!(page.has_more);

    let all = app.api.history_all(&alice, room, 0).await;
    assert_eq!(
        all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=60).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_send_with_the_same_client_msg_id_is_stored_once() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let room = app.api.create_group_ok(&alice, "idem", &[]).await.room_id;
    let body = json!({"room_id": room, "content": "only once", "client_msg_id": "c-42"});

    let first: SendMessageReply = app
        .api
        .send_message(&alice.token, body.clone())
        .await
        .data();
    let retry: SendMessageReply = app.api.send_message(&alice.token, body).await.data();
    assert!(!first.duplicate);
    assert!(retry.duplicate);
    assert_eq!(
        (retry.message_id, retry.seq, retry.room_id),
        (first.message_id, first.seq, first.room_id)
    );
    assert_eq!(retry.client_msg_id.as_deref(), Some("c-42"));

    // The retry consumed no seq.
    assert_eq!(
        app.api.send_ok(&alice, room, "next").await.seq,
        first.seq + 1
    );
    let history = app.api.history_all(&alice, room, 0).await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].id, first.message_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_may_use_the_same_client_msg_id() {
    let app = TestApp::spawn().await;
    let users = app.users(&["alice", "bob"]).await;
    let (alice, bob) = (&users[0], &users[1]);
    let room = app
        .api
        .create_group_ok(alice, "shared-ids", &[bob])
        .await
        .room_id;
    let body = json!({"room_id": room, "content": "mine", "client_msg_id": "same"});
    let a: SendMessageReply = app
        .api
        .send_message(&alice.token, body.clone())
        .await
        .data();
    let b: SendMessageReply = app.api.send_message(&bob.token, body).await.data();
    assert!(!a.duplicate && !b.duplicate);
    assert_ne!(a.message_id, b.message_id);
    assert_eq!((a.seq, b.seq), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_limit_counts_bytes_and_allows_exactly_the_limit() {
    let app = TestApp::spawn().await;
    let alice = app.user("alice").await;
    let room = app.api.create_group_ok(&alice, "big", &[]).await.room_id;

    let at_limit = "x".repeat(16 * 1024);
    let sent = app.api.send_ok(&alice, room, &at_limit).await;
    // 8,193 two-byte characters are 16,386 bytes: over the limit although far fewer characters.
    app.api
        .send(&alice.token, room, &"é".repeat(8 * 1024 + 1))
        .await
        .assert_error(413, "content_too_large");
    // 8,192 of them are exactly the limit.
    app.api.send_ok(&alice, room, &"é".repeat(8 * 1024)).await;

    let history = app.api.history_all(&alice, room, 0).await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].id, sent.message_id);
    assert_eq!(history[0].content, at_limit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_may_resend_and_gets_a_fresh_ack_while_recipients_see_no_repeat() {
    let app = TestApp::spawn().await;
    let users = app.users(&["author", "reader"]).await;
    let (author, reader) = (&users[0], &users[1]);
    let room = app
        .api
        .create_group_ok(author, "resend", &[reader])
        .await
        .room_id;
    let mut author_ws = app.ws(author).await;
    let mut reader_ws = app.ws(reader).await;
    let sent = app.api.send_ok(author, room, "once").await;
    assert_eq!(author_ws.next_ack().await.expect("ack").id, sent.message_id);
    assert_eq!(
        reader_ws.next_new_chat().await.expect("chat").id,
        sent.message_id
    );

    let resend = |who: &testkit::TestUser, id: i64| {
        let token = who.token.clone();
        let api = &app.api;
        async move {
            api.post_json(
                testkit::Service::Send,
                "/api/chat/resend_message",
                Some(&token),
                json!({"message_id": id}),
            )
            .await
        }
    };
    let again: SendMessageReply = resend(author, sent.message_id).await.data();
    assert_eq!((again.message_id, again.seq), (sent.message_id, sent.seq));
    assert!(again.duplicate, "a resend stores nothing new");
    assert_eq!(
        author_ws.next_ack().await.expect("a fresh ack").id,
        sent.message_id
    );
    reader_ws
        .expect_no_chat_within(std::time::Duration::from_millis(300))
        .await
        .expect("the reader already has it: no repeat");

    resend(reader, sent.message_id)
        .await
        .assert_error(403, "not_the_sender");
    resend(author, sent.message_id + 12_345)
        .await
        .assert_error(404, "message_not_found");
    let history = app.api.history_all(reader, room, 0).await;
    assert_eq!(history.len(), 1, "still one message");
}
