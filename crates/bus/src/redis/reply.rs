//! Stream replies, taken apart leniently. redis-rs reads the fields of `XREAD`, `XREADGROUP` and
//! `XAUTOCLAIM` entries into a `HashMap<String, Value>` and refuses the whole reply when one
//! field name is not UTF-8. By then Redis has handed every entry of the reply to the consumer:
//! refused, the batch (the good entries in it too) would stay pending on a live gateway, neither
//! pushed nor acknowledged, and never reclaimed; on a dead gateway's stream the reclaim would
//! fail on it at every pass. Whoever reaches Redis can write anything to a stream, so here such a
//! name is read lossily, and an entry without a list of fields keeps none (it decodes to nothing
//! and is acknowledged and skipped). Found by the stream fuzz target (`crates/fuzz`).

use std::collections::HashMap;

use redis::Value;
use redis::streams::StreamId;

/// Every entry of an `XREAD` or `XREADGROUP` reply (RESP2 or RESP3), stream after stream, in
/// order; none for a nil reply (the block timed out).
pub(crate) fn read_reply(reply: Value) -> Vec<StreamId> {
    let lists: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|s| match s {
                Value::Array(mut key_and_entries) if key_and_entries.len() == 2 => {
                    key_and_entries.pop()
                }
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    lists.into_iter().flat_map(entries).collect()
}

/// An `XAUTOCLAIM` reply: the cursor to go on from and the entries claimed.
pub(crate) fn autoclaim_reply(reply: Value) -> Option<(String, Vec<StreamId>)> {
    let Value::Array(items) = reply else {
        return None;
    };
    let mut items = items.into_iter();
    let next = text(&items.next()?)?;
    Some((next, entries(items.next()?)))
}

/// The entries of one stream's list.
fn entries(list: Value) -> Vec<StreamId> {
    let Value::Array(list) = list else {
        return Vec::new();
    };
    list.into_iter().filter_map(entry).collect()
}

/// `[id, [field, value, ...]]`; a deleted entry (in a pending list) has nil for its fields.
fn entry(v: Value) -> Option<StreamId> {
    let Value::Array(parts) = v else {
        return None;
    };
    let mut parts = parts.into_iter();
    let id = text(&parts.next()?)?;
    let mut map = HashMap::new();
    if let Some(Value::Array(fields)) = parts.next() {
        let mut fields = fields.into_iter();
        // A repeated field name: the last one counts, as with redis-rs.
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            if let Some(name) = text(&name) {
                map.insert(name, value);
            }
        }
    }
    Some(StreamId {
        id,
        map,
        ..StreamId::default()
    })
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
