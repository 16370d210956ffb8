//! A strict Server-Sent Events decoder for OpenAI-style streams.
//!
//! The SSE specification tells browsers to skip lines they do not understand. A benchmark
//! must not: a server that writes something other than `data:` events, comments or the
//! standard `event`/`id`/`retry` fields is sending a malformed stream, and the harness
//! records it as such instead of silently measuring nothing. That is why this is written
//! here rather than taken from an event-source crate.

use thiserror::Error;

/// The longest line accepted; a longer one means the server is not sending SSE.
const MAX_LINE_BYTES: usize = 4 << 20;

/// Why a byte stream is not a valid event stream.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SseError {
    /// A line is not valid UTF-8.
    #[error("line {line} is not valid UTF-8")]
    Utf8 {
        /// 1-based line number in the stream.
        line: usize,
    },
    /// A line names a field that SSE does not define.
    #[error("line {line} is not an SSE field: {text:?}")]
    UnknownField {
        /// 1-based line number in the stream.
        line: usize,
        /// The start of the offending line.
        text: String,
    },
    /// A line grew past [`MAX_LINE_BYTES`] without a newline.
    #[error("a line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
}

/// Incremental decoder: feed it the body's chunks as they arrive, get whole events out.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of the current, unfinished line.
    pending: Vec<u8>,
    /// The `data` of the event being assembled.
    data: String,
    /// Whether the event being assembled has seen a `data` field.
    has_data: bool,
    /// Lines seen so far, for error messages.
    lines: usize,
}

impl SseDecoder {
    /// Decode `bytes` and append the data of every completed event to `events`.
    pub fn push(&mut self, bytes: &[u8], events: &mut Vec<String>) -> Result<(), SseError> {
        let mut rest = bytes;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..newline]);
            rest = &rest[newline + 1..];
            let mut line = std::mem::take(&mut self.pending);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line(&line, events)?;
        }
        self.pending.extend_from_slice(rest);
        if self.pending.len() > MAX_LINE_BYTES {
            return Err(SseError::LineTooLong);
        }
        Ok(())
    }

    /// Bytes received after the last newline (a stream should end on a blank line).
    pub fn has_partial_line(&self) -> bool {
        !self.pending.is_empty()
    }

    fn line(&mut self, line: &[u8], events: &mut Vec<String>) -> Result<(), SseError> {
        self.lines += 1;
        if line.is_empty() {
            if self.has_data {
                events.push(std::mem::take(&mut self.data));
                self.has_data = false;
            }
            return Ok(());
        }
        let text = std::str::from_utf8(line).map_err(|_| SseError::Utf8 { line: self.lines })?;
        if text.starts_with(':') {
            return Ok(()); // a comment, often a keep-alive
        }
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
                Ok(())
            }
            "event" | "id" | "retry" => Ok(()),
            _ => Err(SseError::UnknownField {
                line: self.lines,
                text: text.chars().take(80).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(stream: &[u8], piece: usize) -> Result<Vec<String>, SseError> {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        for chunk in stream.chunks(piece) {
            decoder.push(chunk, &mut events)?;
        }
        Ok(events)
    }

    #[test]
    fn events_split_across_chunks_decode_the_same_as_whole() {
        let stream = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: [DONE]\n\n";
        let whole = decode_in_pieces(stream, stream.len()).unwrap();
        assert_eq!(whole, vec!["{\"a\":1}".to_string(), "[DONE]".to_string()]);
        for piece in 1..stream.len() {
            assert_eq!(
                decode_in_pieces(stream, piece).unwrap(),
                whole,
                "piece size {piece}"
            );
        }
    }

    #[test]
    fn multi_line_data_joins_with_newlines() {
        let events = decode_in_pieces(b"data: a\ndata:b\n\n", 3).unwrap();
        assert_eq!(events, vec!["a\nb".to_string()]);
    }

    #[test]
    fn an_event_is_only_emitted_at_its_blank_line() {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        decoder.push(b"data: x\n", &mut events).unwrap();
        assert!(events.is_empty());
        decoder.push(b"\n", &mut events).unwrap();
        assert_eq!(events, vec!["x".to_string()]);
        assert!(!decoder.has_partial_line());
    }

    #[test]
    fn a_json_body_instead_of_events_is_malformed() {
        let err = decode_in_pieces(b"{\"id\":\"cmpl\"}\n", 4).unwrap_err();
        assert!(
            matches!(err, SseError::UnknownField { line: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        let err = decode_in_pieces(b"data: \xff\xfe\n\n", 64).unwrap_err();
        assert_eq!(err, SseError::Utf8 { line: 1 });
    }
}
