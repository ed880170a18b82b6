//! A log file rotated by size, with the seed's (lumberjack's) semantics: when a write would take
//! the file past `max_size`, it is renamed to `<stem>-<UTC timestamp>.<ext>` next to it and a new
//! file is started; then backups beyond `max_backups` (newest kept) and older than `max_age` are
//! deleted. 0 for either keeps them all.
//!
//! It sits behind `tracing_appender::non_blocking`, so the rotation happens on the appender's own
//! thread, never on a request's. `tracing-appender`'s own rolling files rotate only by time, and
//! `file-rotate` prunes either by count or by age, not both, so this is the ~100 lines it takes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A size-rotated log file. Implements [`Write`]; each `write` is one formatted event, which is
/// never split across two files.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    max_size: u64,
    max_backups: usize,
    max_age: Option<Duration>,
}

impl RotatingFile {
    /// Opens (appending to) `path`, creating its directory. `max_size` in bytes (at least 1),
    /// `max_backups` 0 = no count limit, `max_age` `None` = no age limit.
    pub fn open(
        path: impl Into<PathBuf>,
        max_size: u64,
        max_backups: usize,
        max_age: Option<Duration>,
    ) -> io::Result<Self> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        let me = Self {
            path,
            file,
            size,
            max_size: max_size.max(1),
            max_backups,
            max_age,
        };
        me.prune();
        Ok(me)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f");
        let (stem, ext) = stem_ext(&self.path);
        let mut backup = self.path.with_file_name(format!("{stem}-{stamp}{ext}"));
        // Two rotations in one millisecond (a tiny max_size): never overwrite a backup.
        let mut n = 1;
        while backup.exists() {
            backup = self.path.with_file_name(format!("{stem}-{stamp}.{n}{ext}"));
            n += 1;
        }
        fs::rename(&self.path, &backup)?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        self.prune();
        Ok(())
    }

    /// Backups of this file, oldest first (their names sort by time).
    fn backups(&self) -> Vec<PathBuf> {
        let (stem, ext) = stem_ext(&self.path);
        let prefix = format!("{stem}-");
        let dir = match self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d.to_path_buf(),
            None => PathBuf::from("."),
        };
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&prefix)
                        && n.ends_with(&ext)
                        && n[prefix.len()..].starts_with(|c: char| c.is_ascii_digit())
                })
            })
            .collect();
        found.sort();
        found
    }

    fn prune(&self) {
        let backups = self.backups();
        let over = if self.max_backups == 0 {
            0
        } else {
            backups.len().saturating_sub(self.max_backups)
        };
        let now = SystemTime::now();
        for (i, b) in backups.iter().enumerate() {
            let too_old = self.max_age.is_some_and(|age| {
                fs::metadata(b)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| now.duration_since(t).ok())
                    .is_some_and(|d| d > age)
            });
            if i < over || too_old {
                // A backup we cannot delete is not worth failing a log write for.
                let _ = fs::remove_file(b);
            }
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// `ruststacker.log` -> (`ruststacker`, `.log`); `ruststacker` -> (`ruststacker`, ``).
fn stem_ext(path: &Path) -> (String, String) {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "log".into());
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    (stem, ext)
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size > 0 && self.size + buf.len() as u64 > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rotates_by_size_keeps_whole_lines_and_at_most_max_backups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs/app.log");
        let mut f = RotatingFile::open(&path, 100, 2, None).expect("open");
        let line = format!("{}\n", "x".repeat(39)); // 40 bytes: two lines per file
        for _ in 0..10 {
            f.write_all(line.as_bytes()).expect("write");
        }
        let files = names(path.parent().expect("dir"));
        assert_eq!(files.len(), 3, "the live file and two backups: {files:?}");
        assert!(files.contains(&"app.log".to_string()), "{files:?}");
        for name in &files {
            let text = fs::read_to_string(path.with_file_name(name)).expect("read");
            assert!(text.len() <= 100, "{name} is {} bytes", text.len());
            assert!(
                text.lines().all(|l| l.len() == 39),
                "{name}: lines stay whole"
            );
            if name != "app.log" {
                assert!(
                    name.starts_with("app-2") && name.ends_with(".log"),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn backups_older_than_max_age_are_deleted_and_others_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.log");
        let old = dir.path().join("app-20200101T000000.000.log");
        fs::write(&old, "old\n").expect("write");
        let past = SystemTime::now() - Duration::from_secs(3 * 86_400);
        File::options()
            .write(true)
            .open(&old)
            .and_then(|f| f.set_modified(past))
            .expect("age the backup");
        let unrelated = dir.path().join("app-notes.txt");
        fs::write(&unrelated, "keep\n").expect("write");
        let _f =
            RotatingFile::open(&path, 1000, 0, Some(Duration::from_secs(86_400))).expect("open");
        assert!(!old.exists(), "a backup past max_age is pruned");
        assert!(unrelated.exists(), "only backups of this log are touched");
    }
}
