//! Server-sent events framing, incremental and zero-copy in the common case.
//!
//! [`Framer`] splits a byte stream into whole events (an event ends at a blank line; lines end
//! with LF, CRLF or CR, per the SSE specification) however the bytes are chunked, and keeps only
//! an unfinished event between calls.

/// Largest event held while waiting for its end; past it the framer gives up on the stream
/// (bytes keep flowing to the client, the side parser stops).
pub const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct Framer {
    /// Bytes of the unfinished event.
    pending: Vec<u8>,
    /// The previous byte seen was a CR, so a leading LF belongs to it.
    after_cr: bool,
    /// The current line (in `pending` or the chunk) has no bytes yet.
    line_empty: bool,
    /// An event exceeded [`MAX_EVENT_BYTES`]; framing stopped.
    pub overflowed: bool,
}

impl Framer {
    pub fn new() -> Self {
        Self {
            line_empty: true,
            ..Self::default()
        }
    }

    /// Whether bytes of an unfinished event are held.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Feeds a chunk, calling `on_event` with each complete event's raw bytes (terminator
    /// included). Returns whether the chunk ended exactly on an event boundary with nothing held.
    pub fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(&[u8])) -> bool {
        if self.overflowed {
            return false;
        }
        let mut event_start = 0;
        let mut i = 0;
        while let Some(&b) = chunk.get(i) {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    if self.line_empty {
                        // Blank line: the event ends here.
                        let end = i + 1;
                        let end = if b == b'\r' && chunk.get(end) == Some(&b'\n') {
                            self.after_cr = false;
                            end + 1
                        } else {
                            end
                        };
                        // `event_start <= i < end <= chunk.len()`: the slice always exists.
                        let event = chunk.get(event_start..end).unwrap_or_default();
                        if self.pending.is_empty() {
                            on_event(event);
                        } else {
                            self.pending.extend_from_slice(event);
                            on_event(&self.pending);
                            self.pending.clear();
                        }
                        event_start = end;
                        i = end;
                        self.line_empty = true;
                        continue;
                    }
                    self.line_empty = true;
                }
                _ => self.line_empty = false,
            }
            i += 1;
        }
        if let Some(rest) = chunk.get(event_start..).filter(|r| !r.is_empty()) {
            self.pending.extend_from_slice(rest);
            if self.pending.len() > MAX_EVENT_BYTES {
                self.overflowed = true;
                self.pending = Vec::new();
            }
        }
        self.pending.is_empty()
    }

    /// Takes the bytes of the unfinished event, e.g. to forward them when the stream ends.
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// The `event:` name and the joined `data:` lines of one raw event.
pub fn parse_event(raw: &[u8]) -> (Option<&[u8]>, Vec<u8>) {
    let mut name = None;
    let mut data: Vec<u8> = Vec::new();
    let mut first = true;
    for line in raw.split(|&b| b == b'\n' || b == b'\r') {
        if line.first().is_none_or(|&b| b == b':') {
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(p) => {
                let (f, v) = line.split_at(p);
                let v = v.get(1..).unwrap_or_default();
                (f, v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if !first {
                    data.push(b'\n');
                }
                data.extend_from_slice(value);
                first = false;
            }
            b"event" => name = Some(value),
            _ => {}
        }
    }
    (name, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_all(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut f = Framer::new();
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, |e| out.push(e.to_vec()));
        }
        out
    }

    #[test]
    fn events_survive_any_chunking() {
        let stream = b"data: {\"a\":1}\n\ndata: x\r\n\r\n: comment\nevent: e\ndata: l1\ndata: l2\n\ndata: [DONE]\n\n";
        let whole = frame_all(&[stream]);
        assert_eq!(whole.len(), 4);
        assert_eq!(whole.concat(), stream.to_vec());
        // Any chunking yields the same events and forwards every byte exactly once (a CRLF split
        // across chunks may move its LF into the next event, which reads the same).
        let data = |evs: &[Vec<u8>]| evs.iter().map(|e| parse_event(e).1).collect::<Vec<_>>();
        for split in 1..stream.len() {
            let (a, b) = stream.split_at(split);
            let got = frame_all(&[a, b]);
            assert_eq!(data(&got), data(&whole), "split at {split}");
            assert_eq!(got.concat(), stream.to_vec());
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(data(&frame_all(&bytes)), data(&whole));
        let (name, data) = parse_event(&whole[2]);
        assert_eq!(name, Some(&b"e"[..]));
        assert_eq!(data, b"l1\nl2");
        assert_eq!(parse_event(&whole[3]).1, b"[DONE]");
    }

    #[test]
    fn cr_only_line_endings() {
        let out = frame_all(&[b"data: a\r\rdata: b\r", b"\r"]);
        assert_eq!(out.len(), 2);
        assert_eq!(parse_event(&out[1]).1, b"b");
    }

    #[test]
    fn reports_boundaries() {
        let mut f = Framer::new();
        assert!(f.feed(b"data: a\n\n", |_| {}));
        assert!(!f.feed(b"data: b\n", |_| {}));
        assert!(f.has_pending());
        assert!(f.feed(b"\n", |_| {}));
    }
}
