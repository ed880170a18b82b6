//! A tiny RESP client for exactly one question: `INFO commandstats` (and `AUTH` before it when the
//! URL carries a password). Enough to count the calls a run cost Redis, without a Redis crate.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// `redis://[[user]:password@]host[:port][/db]`, the parts this client needs.
struct Target {
    addr: String,
    user: Option<String>,
    password: Option<String>,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = url
        .strip_prefix("redis://")
        .with_context(|| format!("{url}: only redis:// URLs are supported"))?;
    let rest = rest.split('/').next().unwrap_or_default();
    let (auth, hostport) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let (user, password) = match auth {
        None => (None, None),
        Some(a) => match a.split_once(':') {
            Some((u, p)) => ((!u.is_empty()).then(|| u.to_owned()), Some(p.to_owned())),
            None => (None, Some(a.to_owned())),
        },
    };
    if hostport.is_empty() {
        bail!("{url}: no host");
    }
    let addr = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:6379")
    };
    Ok(Target {
        addr,
        user,
        password,
    })
}

fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

async fn read_line(r: &mut BufReader<TcpStream>) -> anyhow::Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        bail!("redis closed the connection");
    }
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// The `calls` of every command in `INFO commandstats`, by command name (`get`, `xadd`, ...).
pub async fn commandstats(url: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let t = parse_url(url)?;
    let stream = TcpStream::connect(&t.addr)
        .await
        .with_context(|| format!("connecting to redis at {}", t.addr))?;
    let mut r = BufReader::new(stream);
    if let Some(pw) = &t.password {
        let cmd = match &t.user {
            Some(u) => command(&["AUTH", u, pw]),
            None => command(&["AUTH", pw]),
        };
        r.get_mut().write_all(&cmd).await?;
        let reply = read_line(&mut r).await?;
        if !reply.starts_with('+') {
            bail!("redis AUTH: {reply}");
        }
    }
    r.get_mut()
        .write_all(&command(&["INFO", "commandstats"]))
        .await?;
    let head = read_line(&mut r).await?;
    let len: usize = head
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("redis INFO answered {head:?}"))?;
    let mut body = vec![0; len + 2];
    r.read_exact(&mut body).await?;
    body.truncate(len);
    Ok(parse_commandstats(&String::from_utf8_lossy(&body)))
}

/// Lines like `cmdstat_xadd:calls=12,usec=80,usec_per_call=6.67,...`.
fn parse_commandstats(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (name, stats) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commandstats() {
        let s = "# Commandstats\r\ncmdstat_xadd:calls=12,usec=80,usec_per_call=6.67,rejected_calls=0\r\n\
                 cmdstat_info:calls=3,usec=1\r\ncmdstat_client|setname:calls=2,usec=1\r\n";
        let m = parse_commandstats(s);
        assert_eq!(m["xadd"], 12);
        assert_eq!(m["info"], 3);
        assert_eq!(m["client|setname"], 2);
    }

    #[test]
    fn parses_urls() {
        let t = parse_url("redis://127.0.0.1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:6379");
        assert!(t.password.is_none());
        let t = parse_url("redis://:pw@h:7000/2").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.password.as_deref()),
            ("h:7000", Some("pw"))
        );
        let t = parse_url("redis://u:pw@h:7000").unwrap();
        assert_eq!(t.user.as_deref(), Some("u"));
        assert!(parse_url("http://h").is_err());
    }
}
