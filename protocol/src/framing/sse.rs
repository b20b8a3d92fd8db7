//! An incremental Server-Sent Events decoder (the WHATWG event-stream
//! format), fed with whatever byte chunks the network delivers.

use super::ndjson::LineTooLong;

/// One dispatched event: its `event:` type if any and its joined `data:`
/// lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Decoder state: bytes of an unfinished line plus the fields of the event
/// being built. Lines end with `\n`, `\r\n` or a lone `\r`.
#[derive(Debug)]
pub struct SseDecoder {
    buf: Vec<u8>,
    /// A line just ended with `\r`; a `\n` opening the next chunk belongs to it.
    skip_lf: bool,
    /// No line processed yet (a leading byte-order mark is dropped).
    first_line: bool,
    data: String,
    event: Option<String>,
    max_line: usize,
}

impl SseDecoder {
    /// `max_line` bounds both one line and the data of one event.
    pub fn new(max_line: usize) -> Self {
        SseDecoder {
            buf: Vec::new(),
            skip_lf: false,
            first_line: true,
            data: String::new(),
            event: None,
            max_line,
        }
    }

    /// Feeds a chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, LineTooLong> {
        let mut events = Vec::new();
        let mut chunk = chunk;
        if self.skip_lf && !chunk.is_empty() {
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
            self.skip_lf = false;
        }
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.buf.extend_from_slice(&rest[..at]);
            let line = String::from_utf8_lossy(&self.buf).into_owned();
            self.buf.clear();
            let mut next = at + 1;
            if rest[at] == b'\r' {
                match rest.get(at + 1) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            rest = &rest[next..];
            if let Some(event) = self.line(&line)? {
                events.push(event);
            }
        }
        self.buf.extend_from_slice(rest);
        if self.buf.len() > self.max_line {
            return Err(LineTooLong(self.max_line));
        }
        Ok(events)
    }

    /// The stream ended: processes an unterminated last line and dispatches
    /// an event still being built (lenient: the format would drop it).
    pub fn finish(&mut self) -> Result<Option<SseEvent>, LineTooLong> {
        if !self.buf.is_empty() {
            let line = String::from_utf8_lossy(&self.buf).into_owned();
            self.buf.clear();
            if let Some(event) = self.line(&line)? {
                return Ok(Some(event));
            }
        }
        Ok(self.dispatch())
    }

    fn line(&mut self, line: &str) -> Result<Option<SseEvent>, LineTooLong> {
        let line = if self.first_line {
            self.first_line = false;
            line.strip_prefix('\u{feff}').unwrap_or(line)
        } else {
            line
        };
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.data.len() + value.len() + 1 > self.max_line {
                    return Err(LineTooLong(self.max_line));
                }
                self.data.push_str(value);
                self.data.push('\n');
            }
            "event" => self.event = Some(value.to_owned()),
            // `id`, `retry` and unknown fields do not matter here.
            _ => {}
        }
        Ok(None)
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if self.data.is_empty() {
            return None;
        }
        let mut data = std::mem::take(&mut self.data);
        data.pop();
        Some(SseEvent { event, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::new(1 << 20);
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(decoder.push(chunk).expect("line fits"));
        }
        events.extend(decoder.finish().expect("line fits"));
        events
    }

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    const STREAM: &str = ": keep-alive comment\n\
        data: {\"a\":1}\n\n\
        event: message\r\n\
        id: 7\r\n\
        retry: 1000\r\n\
        data: {\"b\":\r\n\
        data: 2}\r\n\r\n\
        data:no-space\r\r\
        data: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: None,
                data: "{\"a\":1}".into(),
            },
            SseEvent {
                event: Some("message".into()),
                data: "{\"b\":\n2}".into(),
            },
            SseEvent {
                event: None,
                data: "no-space".into(),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
            },
        ]
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        assert_eq!(decode_all(&[STREAM.as_bytes()]), expected());
    }

    #[test]
    fn split_at_every_byte_position() {
        let bytes = STREAM.as_bytes();
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(decode_all(&[a, b]), expected(), "split at {at}");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let bytes = STREAM.as_bytes();
        let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(decode_all(&chunks), expected());
    }

    #[test]
    fn split_at_every_pair_of_positions() {
        let bytes = STREAM.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let chunks = [&bytes[..i], &bytes[i..j], &bytes[j..]];
                assert_eq!(decode_all(&chunks), expected(), "split at {i},{j}");
            }
        }
    }

    #[test]
    fn utf8_split_inside_a_character() {
        let text = "data: héllo 日本\n\n".as_bytes();
        for at in 0..=text.len() {
            let (a, b) = text.split_at(at);
            assert_eq!(data(&decode_all(&[a, b])), vec!["héllo 日本"], "split {at}");
        }
    }

    #[test]
    fn unterminated_last_event_is_dispatched_at_finish() {
        assert_eq!(data(&decode_all(&[b"data: [DONE]"])), vec!["[DONE]"]);
        assert_eq!(data(&decode_all(&[b"data: x\n"])), vec!["x"]);
    }

    #[test]
    fn blank_lines_without_data_dispatch_nothing() {
        assert!(decode_all(&[b"\n\n: ping\n\nevent: x\n\n"]).is_empty());
    }

    #[test]
    fn byte_order_mark_is_dropped() {
        assert_eq!(
            data(&decode_all(&["\u{feff}data: a\n\n".as_bytes()])),
            vec!["a"]
        );
    }

    #[test]
    fn empty_data_field_dispatches_empty_data() {
        assert_eq!(data(&decode_all(&[b"data:\n\n"])), vec![""]);
    }

    #[test]
    fn overlong_line_is_refused() {
        let mut decoder = SseDecoder::new(16);
        assert_eq!(
            decoder.push(b"data: 0123456789abcdefghij"),
            Err(LineTooLong(16))
        );
        let mut decoder = SseDecoder::new(16);
        let err = decoder
            .push(b"data: 0123456789\ndata: 0123456789\n")
            .expect_err("data too long");
        assert_eq!(err, LineTooLong(16));
    }
}
