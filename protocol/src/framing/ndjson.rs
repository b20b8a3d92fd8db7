//! An incremental newline-delimited JSON line splitter, fed with whatever
//! byte chunks the network delivers.

/// A line (or an SSE event's data) grew past the limit, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a line of the reply is longer than {0} bytes")]
pub struct LineTooLong(pub usize);

/// Splits a byte stream into its non-blank lines (`\n` or `\r\n` ended).
#[derive(Debug)]
pub struct LineDecoder {
    buf: Vec<u8>,
    max_line: usize,
}

impl LineDecoder {
    pub fn new(max_line: usize) -> Self {
        LineDecoder {
            buf: Vec::new(),
            max_line,
        }
    }

    /// Feeds a chunk; returns the lines it completed, blank ones skipped.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, LineTooLong> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            self.buf.extend_from_slice(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(line) = take_line(&mut self.buf) {
                lines.push(line);
            }
        }
        self.buf.extend_from_slice(rest);
        if self.buf.len() > self.max_line {
            return Err(LineTooLong(self.max_line));
        }
        Ok(lines)
    }

    /// The stream ended: the unterminated last line, if it is not blank.
    pub fn finish(&mut self) -> Option<String> {
        take_line(&mut self.buf)
    }
}

fn take_line(buf: &mut Vec<u8>) -> Option<String> {
    let line = String::from_utf8_lossy(buf).trim().to_owned();
    buf.clear();
    (!line.is_empty()).then_some(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "{\"response\":\"a\",\"done\":false}\n\
        \r\n\
        {\"response\":\"日本\",\"done\":false}\r\n\
        \n\
        {\"response\":\"\",\"done\":true}";

    const EXPECTED: [&str; 3] = [
        "{\"response\":\"a\",\"done\":false}",
        "{\"response\":\"日本\",\"done\":false}",
        "{\"response\":\"\",\"done\":true}",
    ];

    fn decode_all(chunks: &[&[u8]]) -> Vec<String> {
        let mut decoder = LineDecoder::new(1 << 20);
        let mut lines = Vec::new();
        for chunk in chunks {
            lines.extend(decoder.push(chunk).expect("line fits"));
        }
        lines.extend(decoder.finish());
        lines
    }

    #[test]
    fn split_at_every_byte_position() {
        let bytes = STREAM.as_bytes();
        for at in 0..=bytes.len() {
            let (a, b) = bytes.split_at(at);
            assert_eq!(decode_all(&[a, b]), EXPECTED, "split at {at}");
        }
    }

    #[test]
    fn split_at_every_pair_of_positions() {
        let bytes = STREAM.as_bytes();
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let chunks = [&bytes[..i], &bytes[i..j], &bytes[j..]];
                assert_eq!(decode_all(&chunks), EXPECTED, "split at {i},{j}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let chunks: Vec<&[u8]> = STREAM.as_bytes().chunks(1).collect();
        assert_eq!(decode_all(&chunks), EXPECTED);
    }

    #[test]
    fn terminated_last_line_leaves_nothing_at_finish() {
        let mut decoder = LineDecoder::new(64);
        assert_eq!(decoder.push(b"{}\n").expect("fits"), vec!["{}"]);
        assert_eq!(decoder.finish(), None);
    }

    #[test]
    fn overlong_line_is_refused() {
        let mut decoder = LineDecoder::new(8);
        assert_eq!(decoder.push(b"{}\n{\"a\":\"0123"), Err(LineTooLong(8)));
        let mut decoder = LineDecoder::new(8);
        assert_eq!(decoder.push(b"01234567\n"), Ok(vec!["01234567".to_owned()]));
    }
}
