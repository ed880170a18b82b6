//! The token issuer and checker every service of a process shares: its JWT secret (configured,
//! or for `all` generated once into the data dir) and, where there is a database, the token
//! versions that revoke older tokens (`tokens.rs`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kit::auth::{Auth, MIN_SECRET_LEN};

use crate::tokens::CachedTokenVersions;
use crate::{AllConfig, check_secret};

/// The process's [`Auth`]. `generate`: the secret may be generated (`all`; see [`jwt_secret`]).
pub(crate) fn auth(
    cfg: &AllConfig,
    generate: bool,
    store: Option<Arc<dyn store::Store>>,
) -> anyhow::Result<Arc<Auth>> {
    let secret = jwt_secret(cfg, generate)?;
    let mut auth = Auth::new(&secret, Duration::from_secs(cfg.jwt.expire_secs))
        .with_refresh_ttl(Duration::from_secs(cfg.jwt.refresh_expire_secs));
    if let Some(store) = store {
        auth = auth.with_versions(Arc::new(CachedTokenVersions::new(
            store,
            Duration::from_secs(cfg.jwt.revocation_check_secs.max(1)),
        )));
    }
    Ok(Arc::new(auth))
}

/// Reads the JWT secret from config; `all` (`generate`) falls back to the data dir, creating it on
/// first start. Separate services share a configured secret and refuse to start without one.
fn jwt_secret(cfg: &AllConfig, generate: bool) -> anyhow::Result<Vec<u8>> {
    if let Some(s) = &cfg.jwt.secret {
        check_secret("jwt.secret", s)?;
        return Ok(s.expose().as_bytes().to_vec());
    }
    if !generate {
        bail!(
            "jwt.secret must be set (the same on every service, at least {MIN_SECRET_LEN} bytes)"
        );
    }
    let path = cfg.data_dir.join("jwt_secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if existing.len() >= MIN_SECRET_LEN {
            return Ok(existing.as_bytes().to_vec());
        }
        bail!("{} is shorter than {MIN_SECRET_LEN} bytes", path.display());
    }
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &hex).with_context(|| format!("writing {}", path.display()))?;
    Ok(hex.into_bytes())
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(contents.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EXAMPLE_SECRET;

    #[test]
    fn separate_services_refuse_a_missing_or_example_secret() {
        let mut cfg = AllConfig::default();
        assert!(jwt_secret(&cfg, false).is_err());
        cfg.jwt.secret = Some(EXAMPLE_SECRET.into());
        assert!(jwt_secret(&cfg, false).is_err());
        cfg.jwt.secret = Some("short".into());
        assert!(jwt_secret(&cfg, false).is_err());
        cfg.jwt.secret = Some("x".repeat(40).into());
        assert!(jwt_secret(&cfg, false).is_ok());
    }

    #[test]
    fn all_generates_a_private_secret_once_and_keeps_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = AllConfig::for_tests(dir.path().to_owned());
        let first = jwt_secret(&cfg, true).expect("generated");
        assert!(first.len() >= MIN_SECRET_LEN);
        assert_eq!(jwt_secret(&cfg, true).expect("read back"), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(dir.path().join("jwt_secret")).expect("written");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        std::fs::write(dir.path().join("jwt_secret"), "short").expect("overwrite");
        assert!(
            jwt_secret(&cfg, true).is_err(),
            "a short file is refused, not replaced"
        );
    }
}
