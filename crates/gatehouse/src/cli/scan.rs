//! `gatehouse scan`: what redaction would replace in these files, read the way the gateway
//! reads them (each file's text as a JSON string in a request body). Prints one JSON line per
//! finding with its place and kind, never the secret itself, so a user can check a repository
//! before pointing an agent at it, and the redaction bench can score the rules.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use gatehouse_context::redact::Redactor;

/// Files larger than this are skipped: an agent never pastes them whole.
const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;

#[derive(Args, Debug)]
pub struct ScanArgs {
    /// Files or directories (walked recursively; `.git` and binary files are skipped).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
}

pub fn run(args: ScanArgs) -> anyhow::Result<ExitCode> {
    let Some(redactor) = Redactor::shared() else {
        anyhow::bail!("the redaction rules failed to compile");
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut totals = Totals::default();
    for path in &args.paths {
        walk(path, &mut |file| {
            scan_file(redactor, file, &mut out, &mut totals)
        })?;
    }
    out.flush()?;
    eprintln!(
        "scanned {} files ({:.1} MB), skipped {}, {} findings",
        totals.files,
        totals.bytes as f64 / 1e6,
        totals.skipped,
        totals.findings
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Default)]
struct Totals {
    files: u64,
    bytes: u64,
    skipped: u64,
    findings: u64,
}

fn walk(path: &Path, visit: &mut dyn FnMut(&Path) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        if path.file_name().is_some_and(|n| n == ".git") {
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            walk(&entry, visit)?;
        }
        Ok(())
    } else if meta.is_file() {
        visit(path)
    } else {
        Ok(())
    }
}

fn scan_file(
    redactor: &Redactor,
    path: &Path,
    out: &mut dyn Write,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let len = std::fs::metadata(path)?.len();
    let text = if len > MAX_FILE_BYTES {
        None
    } else {
        std::fs::read(path)
            .ok()
            .filter(|b| !b.iter().take(8192).any(|&c| c == 0))
            .and_then(|b| String::from_utf8(b).ok())
    };
    let Some(text) = text else {
        totals.skipped += 1;
        return Ok(());
    };
    totals.files += 1;
    totals.bytes += len;
    let encoded = serde_json::to_string(&text)?;
    for finding in redactor.scan(encoded.as_bytes()) {
        let (line, column) = position(encoded.as_bytes(), finding.range.start);
        let record = serde_json::json!({
            "path": path.display().to_string(),
            "line": line,
            "column": column,
            "kind": finding.kind.as_str(),
            "len": finding.range.len(),
        });
        writeln!(out, "{record}")?;
        totals.findings += 1;
    }
    Ok(())
}

/// The 1-based line and column (in characters) of the decoded text at byte `at` of a JSON
/// string literal, as `serde_json` writes one (only `"`, `\` and control characters escaped).
fn position(encoded: &[u8], at: usize) -> (usize, usize) {
    let (mut line, mut column) = (1, 1);
    let mut i = 1; // after the opening quote
    while i < at {
        match encoded.get(i) {
            Some(b'\\') => {
                let newline = encoded.get(i + 1) == Some(&b'n');
                i += if encoded.get(i + 1) == Some(&b'u') {
                    6
                } else {
                    2
                };
                if newline {
                    line += 1;
                    column = 1;
                } else {
                    column += 1;
                }
            }
            Some(&b) => {
                i += 1;
                // Count characters, not bytes: continuation bytes start no character.
                if b & 0xC0 != 0x80 {
                    column += 1;
                }
            }
            None => break,
        }
    }
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::position;

    #[test]
    fn positions_are_lines_and_characters_of_the_decoded_text() {
        let encoded = serde_json::to_string("ab\n\"é\tkey").unwrap();
        let at = encoded.find("key").unwrap();
        assert_eq!(position(encoded.as_bytes(), at), (2, 4));
        assert_eq!(position(encoded.as_bytes(), 1), (1, 1));
    }
}
