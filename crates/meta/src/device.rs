//! A user's named devices (docs/protocol.md, "Devices"): the gateway records one when a
//! connection names it (`device_id` on `/api/ws`); here the user lists theirs and removes one,
//! which deletes its cursors and closes its connections on every gateway (the path token
//! revocations take, [`crate::notify::Notifier::drop_device`]). Devices unused for
//! `meta.device_ttl_days` are forgotten by [`sweeper`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use kit::auth::AuthUser;
use kit::envelope::Envelope;
use kit::openapi::ErrorReply;
use kit::{ApiError, ApiResult, Path, ok};
use proto::api::{DeviceRemovedReply, DeviceView, DevicesReply};
use proto::error::ErrorCode;
use store::Store;

use crate::{MetaState, db};

/// Devices deleted per statement batch of a sweep.
const SWEEP_BATCH: u32 = 500;

/// Lists the caller's named devices, oldest first. Connections without a `device_id` (the
/// default device) are not listed.
#[utoipa::path(get, path = "/api/user/devices", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's devices", body = Envelope<DevicesReply>),
    ))]
pub(crate) async fn list(State(s): State<MetaState>, me: AuthUser) -> ApiResult<DevicesReply> {
    let devices = s.store().devices(me.user_id).await.map_err(db)?;
    Ok(ok(DevicesReply {
        devices: devices
            .into_iter()
            .map(|d| DeviceView {
                device_id: d.device_id,
                first_seen: kit::rfc3339_ms(d.first_seen_ms),
                last_seen: kit::rfc3339_ms(d.last_seen_ms),
            })
            .collect(),
    }))
}

/// Removes one of the caller's devices: its record and delivery cursors are deleted and its open
/// connections, on every gateway, are closed with 4410. A client that connects with the same
/// `device_id` again is a new device (it starts from the rooms' current messages).
#[utoipa::path(delete, path = "/api/user/devices/{device_id}", tag = "users",
    security(("bearer" = [])),
    params(("device_id" = String, Path, description = "The device (percent-encoded)",
        min_length = 1, max_length = 64, pattern = "^[!-~]{1,64}$")),
    responses(
        (status = 200, description = "Removed", body = Envelope<DeviceRemovedReply>),
        (status = 400, description = "`invalid_device_id`", body = ErrorReply),
        (status = 404, description = "`device_not_found`: the caller has no such device", body = ErrorReply),
    ))]
pub(crate) async fn remove(
    State(s): State<MetaState>,
    me: AuthUser,
    Path(device_id): Path<String>,
) -> ApiResult<DeviceRemovedReply> {
    proto::validate::device_id(&device_id)?;
    let removed = s
        .store()
        .remove_device(me.user_id, &device_id)
        .await
        .map_err(db)?;
    if !removed {
        return Err(ApiError::new(
            ErrorCode::DeviceNotFound,
            "you have no device with this id",
        ));
    }
    s.notifier().drop_device(me.user_id, &device_id).await;
    tracing::info!(user_id = me.user_id, "device removed");
    Ok(ok(DeviceRemovedReply { device_id }))
}

/// Forgets, every `interval`, the devices not seen for `ttl_days` (0: never), with their cursors.
/// Each instance may run it: a device is deleted only while still unseen, once.
pub async fn sweeper(store: Arc<dyn Store>, ttl_days: u32, interval: Duration) {
    if ttl_days == 0 {
        return;
    }
    metrics::counter!("ruststacker_devices_forgotten_total").increment(0);
    let ttl_ms = i64::from(ttl_days) * 86_400_000;
    let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep(store.as_ref(), kit::now_ms() - ttl_ms, SWEEP_BATCH).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(forgotten = n, "unused devices forgotten"),
            Err(e) => tracing::warn!(error = %e, "device sweep failed; will retry"),
        }
    }
}

/// Deletes every device not seen since `before_ms`, `batch` at a time; returns how many.
pub async fn sweep(
    store: &dyn Store,
    before_ms: i64,
    batch: u32,
) -> Result<u64, store::StoreError> {
    let batch = batch.max(1);
    let mut total = 0;
    loop {
        let n = store.forget_devices(before_ms, batch).await?;
        metrics::counter!("ruststacker_devices_forgotten_total").increment(n);
        total += n;
        if n < u64::from(batch) {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use store::sqlite::SqliteStore;
    use store::{DeviceStore, NewUser, UserStore};

    use super::*;

    #[tokio::test]
    async fn a_sweep_forgets_every_unseen_device_batch_after_batch_and_no_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = SqliteStore::open(&dir.path().join("t.db"))
            .await
            .expect("open");
        let user = s
            .create_user(NewUser {
                username: "sweepy".into(),
                password_hash: "x".into(),
                nickname: "s".into(),
                now_ms: 1,
            })
            .await
            .expect("user")
            .id;
        for (i, seen) in [10, 20, 30, 40, 50, 5_000].into_iter().enumerate() {
            s.device_connected(user, &format!("d{i}"), 100, seen)
                .await
                .expect("device");
        }
        assert_eq!(sweep(&s, 1_000, 2).await.expect("sweep"), 5);
        assert_eq!(sweep(&s, 1_000, 2).await.expect("sweep again"), 0);
        let left: Vec<String> = s
            .devices(user)
            .await
            .expect("devices")
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        assert_eq!(left, ["d5"]);
    }
}
