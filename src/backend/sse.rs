//! A Server-Sent Events parser for streamed model APIs: frames of `event:`
//! and `data:` lines, ended by a blank line. Bytes arrive in arbitrary
//! chunks; a frame may span chunks.

/// One SSE frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub event: Option<String>,
    pub data: String,
}

#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    current: Frame,
    has_data: bool,
}

impl Parser {
    /// Feeds a chunk; returns the frames it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<Frame> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            self.line(&line, &mut out);
        }
        out
    }

    /// Ends the stream: a last frame without its blank line still counts.
    pub fn finish(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        if !self.buf.is_empty() {
            let rest = String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned();
            self.line(rest.trim_end_matches('\r'), &mut out);
        }
        self.line("", &mut out);
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<Frame>) {
        if line.is_empty() {
            if self.has_data || self.current.event.is_some() {
                out.push(std::mem::take(&mut self.current));
                self.has_data = false;
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.current.event = Some(value.to_string()),
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_across_chunks_and_crlf() {
        let mut p = Parser::default();
        let mut got = p.feed(b"event: message_start\r\ndata: {\"a\"");
        assert!(got.is_empty());
        got.extend(p.feed(b":1}\r\n\r\n: comment\n\ndata: x\ndata: y\n\n"));
        got.extend(p.feed(b"data: [DONE]"));
        got.extend(p.finish());
        assert_eq!(
            got,
            vec![
                Frame {
                    event: Some("message_start".into()),
                    data: "{\"a\":1}".into()
                },
                Frame {
                    event: None,
                    data: "x\ny".into()
                },
                Frame {
                    event: None,
                    data: "[DONE]".into()
                },
            ]
        );
    }
}
