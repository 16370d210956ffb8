//! When generation stops, and the text a client sees up to there.
//!
//! `Detokenizer` turns each generated id into text (`StreamDecoder`, so characters
//! split across tokens are held back) and watches for stop ids and stop strings. A stop
//! string can arrive split over several tokens, so text that could still be the start of
//! one is held back until it is either completed (the text before it is emitted, the
//! stop string and anything after it are not, as in OpenAI's API) or ruled out.

use crate::tokenizer::{StreamDecoder, Tokenizer};

use super::ValidSamplingParams;

/// Why a sequence stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// It generated a stop id (end of generation, or one the request named).
    Token(u32),
    /// Its text reached one of the request's stop strings.
    String(String),
}

/// Holds back text that may be the beginning of a stop string.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
}

impl StopStrings {
    /// Watches for `stops` (non-empty strings).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            held: String::new(),
        }
    }

    /// Adds `text`; appends to `out` what can no longer be part of a stop string.
    /// Returns the stop string matched, if any; the text from it on is dropped.
    pub fn push(&mut self, text: &str, out: &mut String) -> Option<String> {
        if self.stops.is_empty() {
            out.push_str(text);
            return None;
        }
        self.held.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|&(at, _)| at);
        if let Some((at, stop)) = first {
            out.push_str(&self.held[..at]);
            let stop = stop.clone();
            self.held.clear();
            return Some(stop);
        }
        let keep = self.longest_stop_prefix_suffix();
        let emit = self.held.len() - keep;
        out.push_str(&self.held[..emit]);
        self.held.drain(..emit);
        None
    }

    /// Appends the held-back text (the sequence ended without completing a stop string).
    pub fn finish(&mut self, out: &mut String) {
        out.push_str(&self.held);
        self.held.clear();
    }

    /// Length in bytes of the longest end of `held` that begins some stop string.
    fn longest_stop_prefix_suffix(&self) -> usize {
        self.stops
            .iter()
            .flat_map(|stop| {
                stop.char_indices()
                    .skip(1)
                    .map(|(end, _)| &stop[..end])
                    .filter(|prefix| self.held.ends_with(prefix))
                    .map(str::len)
            })
            .max()
            .unwrap_or(0)
    }
}

/// Per-sequence output text and stop detection.
#[derive(Debug, Clone)]
pub struct Detokenizer {
    decoder: StreamDecoder,
    strings: StopStrings,
    stop_ids: Vec<u32>,
}

impl Detokenizer {
    /// Stops on the tokenizer's end-of-generation ids (unless `ignore_eos`), the
    /// request's `stop_token_ids` and its `stop` strings. Control tokens are not shown.
    pub fn new(params: &ValidSamplingParams, tokenizer: &Tokenizer) -> Self {
        let p = params.params();
        let mut stop_ids = p.stop_token_ids.clone();
        if !p.ignore_eos {
            stop_ids.extend_from_slice(tokenizer.eos_ids());
        }
        Self {
            decoder: StreamDecoder::new(true),
            strings: StopStrings::new(p.stop.clone()),
            stop_ids,
        }
    }

    /// Takes the next generated id; appends the text that is now final to `out`.
    /// Returns why the sequence stops, if it does: then all remaining text is in `out`.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32, out: &mut String) -> Option<StopReason> {
        if self.stop_ids.contains(&id) {
            self.finish(out);
            return Some(StopReason::Token(id));
        }
        let mut piece = String::new();
        self.decoder.push(tokenizer, id, &mut piece);
        self.strings.push(&piece, out).map(StopReason::String)
    }

    /// Ends the sequence for another reason (length limit, cancellation): appends
    /// whatever text was held back.
    pub fn finish(&mut self, out: &mut String) {
        let mut tail = String::new();
        self.decoder.finish(&mut tail);
        // A stop string completed by the very last bytes still stops the text there.
        if self.strings.push(&tail, out).is_none() {
            self.strings.finish(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>, usize) {
        let mut s = StopStrings::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for (i, piece) in pieces.iter().enumerate() {
            if let Some(stop) = s.push(piece, &mut out) {
                return (out, Some(stop), i);
            }
        }
        s.finish(&mut out);
        (out, None, pieces.len())
    }

    #[test]
    fn stop_string_split_across_tokens_is_found_and_excluded() {
        let (out, stop, at) = run(&["\nUser:"], &["Hello", " there", "\nUs", "er", ": more"]);
        assert_eq!(out, "Hello there");
        assert_eq!(stop.as_deref(), Some("\nUser:"));
        assert_eq!(at, 4, "stops on the token that completes it");
    }

    #[test]
    fn text_after_the_stop_in_the_same_token_is_dropped() {
        let (out, stop, _) = run(&["END"], &["abcENDxyz"]);
        assert_eq!((out.as_str(), stop.as_deref()), ("abc", Some("END")));
    }

    #[test]
    fn a_false_start_is_released() {
        let mut s = StopStrings::new(vec!["STOP".into()]);
        let mut out = String::new();
        assert_eq!(s.push("a ST", &mut out), None);
        assert_eq!(out, "a ", "\"ST\" is held back");
        assert_eq!(s.push("OP?", &mut out).as_deref(), Some("STOP"));
        let (out, stop, _) = run(&["STOP"], &["a ST", "ART"]);
        assert_eq!((out.as_str(), stop), ("a START", None));
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let (out, stop, _) = run(&["cd", "b"], &["abcd"]);
        assert_eq!((out.as_str(), stop.as_deref()), ("a", Some("b")));
    }

    #[test]
    fn multibyte_stop_prefixes_respect_char_boundaries() {
        let (out, stop, _) = run(&["日本語"], &["これは日", "本", "です"]);
        assert_eq!((out.as_str(), stop), ("これは日本です", None));
        let (out, stop, _) = run(&["日本語"], &["これは日", "本", "語です"]);
        assert_eq!((out.as_str(), stop.as_deref()), ("これは", Some("日本語")));
    }

    #[test]
    fn held_text_comes_out_at_the_end() {
        let (out, stop, _) = run(&["<end>"], &["x <en"]);
        assert_eq!((out.as_str(), stop), ("x <en", None));
    }
}
