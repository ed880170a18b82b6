//! Latency and errors of every Redis call a [`crate::redis::RedisBus`] makes, measured at the
//! connection: [`Metered`] wraps any async connection and times each command or pipeline, named
//! after its (first) command. The names come from a fixed list, so the label stays bounded.

use std::time::Instant;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Commands named in metrics; anything else is `other`.
const KNOWN: &[&str] = &[
    "PING",
    "XADD",
    "XACK",
    "XAUTOCLAIM",
    "XGROUP",
    "XLEN",
    "XINFO",
    "XPENDING",
    "XREADGROUP",
    "HSET",
    "HGET",
    "HGETALL",
    "HDEL",
    "MGET",
    "GET",
    "SET",
    "DEL",
    "EXISTS",
    "PEXPIRE",
    "EXPIRE",
    "SADD",
    "SREM",
    "SMEMBERS",
    "ZADD",
    "ZREM",
    "ZINCRBY",
    "ZRANGE",
    "ZCARD",
    "PUBLISH",
    "EVAL",
    "EVALSHA",
];

fn op_of(cmd: &Cmd) -> &'static str {
    match cmd.args_iter().next() {
        Some(redis::Arg::Simple(name)) => KNOWN
            .iter()
            .find(|k| k.as_bytes().eq_ignore_ascii_case(name))
            .copied()
            .unwrap_or("other"),
        _ => "other",
    }
}

fn record<T>(op: &'static str, pipelined: bool, started: Instant, r: &redis::RedisResult<T>) {
    let kind = if pipelined { "pipeline" } else { "command" };
    metrics::histogram!("ruststacker_redis_call_duration_seconds", "op" => op, "kind" => kind)
        .record(started.elapsed().as_secs_f64());
    if r.is_err() {
        metrics::counter!("ruststacker_redis_call_errors_total", "op" => op, "kind" => kind)
            .increment(1);
    }
}

/// A connection whose calls are measured.
#[derive(Clone)]
pub struct Metered<C>(pub C);

impl<C: ConnectionLike + Send> ConnectionLike for Metered<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let started = Instant::now();
            let r = self.0.req_packed_command(cmd).await;
            record(op_of(cmd), false, started, &r);
            r
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let started = Instant::now();
            let r = self.0.req_packed_commands(pipeline, offset, count).await;
            // A transaction starts with MULTI; name it after what it does.
            let op = pipeline
                .cmd_iter()
                .map(op_of)
                .find(|op| *op != "other")
                .unwrap_or("other");
            record(op, true, started, &r);
            r
        })
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_named_from_a_fixed_list() {
        assert_eq!(op_of(redis::cmd("xadd").arg("k")), "XADD");
        assert_eq!(op_of(&redis::cmd("HGETALL")), "HGETALL");
        assert_eq!(op_of(redis::cmd("CLIENT").arg("LIST")), "other");
    }
}
