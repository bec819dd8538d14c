//! Following a file that may not exist yet, be truncated, or be rotated away.
//!
//! Polled, not notified: a poll is one `stat` per file, cheap at the default 250 ms, and it
//! behaves the same on every filesystem (network mounts and editors' atomic renames included).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Most bytes read from one file per poll, so a huge burst is spread over several polls.
const READ_PER_POLL: usize = 1 << 20;
/// A line longer than this is dropped (it cannot be a token figure worth keeping).
const MAX_LINE: usize = 64 * 1024;

/// Where a followed file stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TailState {
    /// The file does not exist (yet).
    Waiting,
    Following,
    /// It exists but cannot be read; retried on every poll.
    Error,
}

#[derive(Debug)]
pub struct Tail {
    path: PathBuf,
    file: Option<File>,
    id: (u64, u64),
    pos: u64,
    partial: Vec<u8>,
    skipping_long_line: bool,
    /// The first open starts at the end; files that appear later are read from the start.
    seen_before: bool,
    pub state: TailState,
    pub rotations: u64,
    pub truncations: u64,
}

#[cfg(unix)]
fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn file_id(_: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

impl Tail {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            file: None,
            id: (0, 0),
            pos: 0,
            partial: Vec::new(),
            skipping_long_line: false,
            seen_before: false,
            state: TailState::Waiting,
            rotations: 0,
            truncations: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what was appended since the last poll; complete lines go to `lines`.
    pub fn poll(&mut self, lines: &mut Vec<String>) -> io::Result<()> {
        // Finish the file we hold first: after a rotation its last lines are still there.
        if self.file.is_some() {
            self.read_available(lines)?;
        }
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.file.take().is_some() {
                    self.rotations += 1;
                }
                self.state = TailState::Waiting;
                self.seen_before = true;
                return Ok(());
            }
            Err(e) => {
                self.state = TailState::Error;
                return Err(e);
            }
        };
        let id = file_id(&meta);
        if self.file.is_none() || id != self.id {
            if self.file.is_some() {
                self.rotations += 1;
            }
            let mut f = match File::open(&self.path) {
                Ok(f) => f,
                Err(e) => {
                    self.state = TailState::Error;
                    return Err(e);
                }
            };
            self.pos = if self.seen_before { 0 } else { meta.len() };
            f.seek(SeekFrom::Start(self.pos))?;
            self.file = Some(f);
            self.id = id;
            self.partial.clear();
            self.skipping_long_line = false;
            self.seen_before = true;
        } else if meta.len() < self.pos {
            // Truncated in place (`> core.log`): start over from the top.
            self.truncations += 1;
            self.pos = 0;
            self.partial.clear();
            self.skipping_long_line = false;
            if let Some(f) = &mut self.file {
                f.seek(SeekFrom::Start(0))?;
            }
        }
        self.state = TailState::Following;
        self.read_available(lines)
    }

    fn read_available(&mut self, lines: &mut Vec<String>) -> io::Result<()> {
        let Some(f) = &mut self.file else {
            return Ok(());
        };
        let mut buf = Vec::new();
        let n = f.take(READ_PER_POLL as u64).read_to_end(&mut buf)?;
        self.pos += n as u64;
        let mut rest = &buf[..];
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let (head, tail) = rest.split_at(i);
            rest = tail.get(1..).unwrap_or_default();
            if self.skipping_long_line {
                self.skipping_long_line = false;
                self.partial.clear();
                continue;
            }
            self.partial.extend_from_slice(head);
            if self.partial.last() == Some(&b'\r') {
                self.partial.pop();
            }
            lines.push(String::from_utf8_lossy(&self.partial).into_owned());
            self.partial.clear();
        }
        if !self.skipping_long_line {
            self.partial.extend_from_slice(rest);
            if self.partial.len() > MAX_LINE {
                self.partial.clear();
                self.skipping_long_line = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn append(p: &Path, s: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap();
        f.write_all(s.as_bytes()).unwrap();
    }

    fn poll(t: &mut Tail) -> Vec<String> {
        let mut v = Vec::new();
        t.poll(&mut v).unwrap();
        v
    }

    #[test]
    fn starts_at_the_end_and_follows_appends() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("core.log");
        append(&p, "old line\n");
        let mut t = Tail::new(&p);
        assert!(poll(&mut t).is_empty());
        assert_eq!(t.state, TailState::Following);
        append(&p, "one\ntw");
        assert_eq!(poll(&mut t), ["one"]);
        append(&p, "o\r\nthree\n");
        assert_eq!(poll(&mut t), ["two", "three"]);
    }

    #[test]
    fn waits_for_a_missing_file_then_reads_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("later.log");
        let mut t = Tail::new(&p);
        assert!(poll(&mut t).is_empty());
        assert_eq!(t.state, TailState::Waiting);
        append(&p, "first\n");
        assert_eq!(poll(&mut t), ["first"]);
    }

    #[test]
    fn truncation_and_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("core.log");
        append(&p, "");
        let mut t = Tail::new(&p);
        poll(&mut t);
        append(&p, "a long first line\n");
        assert_eq!(poll(&mut t), ["a long first line"]);
        std::fs::write(&p, "b\n").unwrap();
        assert_eq!(poll(&mut t), ["b"]);
        assert_eq!(t.truncations, 1);
        // Rotation: the last lines of the old file are read, then the new file from its start.
        append(&p, "last of old\n");
        std::fs::rename(&p, dir.path().join("core.log.1")).unwrap();
        append(&p, "first of new\n");
        assert_eq!(poll(&mut t), ["last of old", "first of new"]);
        assert_eq!(t.rotations, 1);
    }

    #[test]
    fn overlong_lines_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("core.log");
        append(&p, "");
        let mut t = Tail::new(&p);
        poll(&mut t);
        append(&p, &"x".repeat(MAX_LINE + 10));
        assert!(poll(&mut t).is_empty());
        append(&p, "yyy\nok\n");
        assert_eq!(poll(&mut t), ["ok"]);
    }
}
