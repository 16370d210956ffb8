//! The engine's per-request state: the client's event channel, the sampler and
//! detokenizer (stop ids and strings), and the latency clocks.

use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::{Event, FinishReason, GenerateRequest, QueuePermit, TokenScore};
use crate::http::metrics::{Metrics, ServingStage};
use crate::plan;
use crate::sampler::{self, Detokenizer, SampledToken, SequenceSampler, StopReason};
use crate::scheduler::{Scheduled, Sequence};
use crate::tokenizer::Tokenizer;

/// One request while it is queued or running.
#[derive(Debug)]
pub(super) struct Active {
    events: UnboundedSender<Event>,
    /// Held while queued; dropped on admission.
    permit: Option<QueuePermit>,
    arrived: Instant,
    last_token: Option<Instant>,
    prompt_tokens: u32,
    generated: u32,
    max_new: usize,
    /// Alternatives per position, when logprobs were requested.
    logprobs: Option<usize>,
    /// Scores of prompt tokens 1.., gathered while the prompt prefills.
    prompt_scores: Option<Vec<TokenScore>>,
    sampler: SequenceSampler,
    detokenizer: Detokenizer,
    finished: bool,
}

impl Active {
    pub(super) fn new(
        req: &GenerateRequest,
        events: UnboundedSender<Event>,
        arrived: Instant,
        permit: QueuePermit,
        tokenizer: &Tokenizer,
    ) -> Self {
        let p = &req.params;
        let score_prompt = p.echo && p.logprobs.is_some();
        Self {
            events,
            permit: Some(permit),
            arrived,
            last_token: None,
            prompt_tokens: u32::try_from(req.prompt.len()).unwrap_or(u32::MAX),
            generated: 0,
            max_new: req.max_new_tokens,
            logprobs: p.logprobs,
            prompt_scores: score_prompt.then(Vec::new),
            sampler: SequenceSampler::new(p.sampling.clone(), &req.prompt),
            detokenizer: Detokenizer::new(&p.sampling, tokenizer),
            finished: false,
        }
    }

    /// Whether the client has gone away (its receiver was dropped).
    pub(super) fn client_gone(&self) -> bool {
        self.events.is_closed()
    }

    pub(super) fn is_finished(&self) -> bool {
        self.finished
    }

    /// The sequence left the queue: give the queue place back, count its prompt and
    /// its time in the queue.
    pub(super) fn admitted(&mut self, metrics: &Metrics) {
        if self.permit.take().is_some() {
            metrics.prompt_tokens.inc_by(u64::from(self.prompt_tokens));
            metrics.add_stage(ServingStage::QueueWait, self.arrived.elapsed());
        }
    }

    /// Scores the prompt tokens that this slice's logits rows predict: row `i`
    /// (position `start + i`) predicts the token at `start + i + 1`.
    pub(super) fn score_prompt_rows(&mut self, seq: &Sequence, item: &Scheduled, logits: &[f32]) {
        let (Some(scores), Some(k)) = (self.prompt_scores.as_mut(), self.logprobs) else {
            return;
        };
        for (i, row) in logits.chunks_exact(plan::VOCAB_SIZE).enumerate() {
            let next = item.start + i + 1;
            if next < seq.prompt_len {
                scores.push(token_score(sampler::score(row, seq.tokens[next], k)));
            }
        }
    }

    /// Sends the prompt's scores, once, when the prefill is done.
    pub(super) fn send_prompt_scores(&mut self) {
        if let Some(scores) = self.prompt_scores.take() {
            self.send(Event::PromptScores(scores));
        }
    }

    /// Samples the next token from `logits` (the row after the sequence's last
    /// token; used as scratch), sends its text, and finishes the sequence on a stop
    /// id, a stop string or `max_tokens`. Returns the token, or `None` (and fails
    /// the sequence) when no token can be sampled. Adds the time spent turning the
    /// token into text to `detokenizing`.
    pub(super) fn next_token(
        &mut self,
        logits: &mut [f32],
        tokenizer: &Tokenizer,
        metrics: &Metrics,
        detokenizing: &mut Duration,
    ) -> Option<u32> {
        let sampled = match self.sampler.sample(logits) {
            Ok(sampled) => sampled,
            Err(e) => {
                self.fail(&format!("sampling failed: {e}"));
                return None;
            }
        };
        let id = sampled.id;
        let score = self.logprobs.map(|_| token_score(sampled));
        Some(self.emit(id, score, tokenizer, metrics, detokenizing))
    }

    /// Whether the next token may be chosen on the device (see
    /// [`SequenceSampler::is_plain_greedy`]).
    pub(super) fn plain_greedy(&self) -> bool {
        self.sampler.is_plain_greedy()
    }

    /// Takes `token`, chosen elsewhere (the device's argmax of a plain greedy row), as
    /// the next token: as [`Active::next_token`] after its sampling.
    pub(super) fn accept_token(
        &mut self,
        token: u32,
        tokenizer: &Tokenizer,
        metrics: &Metrics,
        detokenizing: &mut Duration,
    ) -> u32 {
        self.emit(token, None, tokenizer, metrics, detokenizing)
    }

    /// Sends the text of the next token, finishing on a stop id, a stop string or
    /// `max_tokens`. Adds the time spent turning the token into text to `detokenizing`.
    fn emit(
        &mut self,
        token: u32,
        score: Option<TokenScore>,
        tokenizer: &Tokenizer,
        metrics: &Metrics,
        detokenizing: &mut Duration,
    ) -> u32 {
        self.generated += 1;
        self.clock(metrics);
        let detokenize = Instant::now();
        let mut text = String::new();
        let stop = self.detokenizer.push(tokenizer, token, &mut text);
        let finish = match stop {
            Some(StopReason::Token(_) | StopReason::String(_)) => Some(FinishReason::Stop),
            None if self.generated as usize >= self.max_new => {
                self.detokenizer.finish(&mut text);
                Some(FinishReason::Length)
            }
            None => None,
        };
        *detokenizing += detokenize.elapsed();
        self.send(Event::Token {
            id: token,
            text,
            score,
        });
        if let Some(reason) = finish {
            self.finish(reason, metrics);
        }
        token
    }

    /// Records time to first token or inter-token latency.
    fn clock(&mut self, metrics: &Metrics) {
        let now = Instant::now();
        match self.last_token {
            None => metrics.ttft.observe((now - self.arrived).as_secs_f64()),
            Some(last) => metrics.inter_token.observe((now - last).as_secs_f64()),
        }
        metrics.generated_tokens.inc();
        self.last_token = Some(now);
    }

    /// Ends the sequence normally.
    pub(super) fn finish(&mut self, finish: FinishReason, metrics: &Metrics) {
        if !self.finished {
            self.finished = true;
            metrics.finished.inc();
            self.send(Event::Done {
                finish,
                prompt_tokens: self.prompt_tokens,
                completion_tokens: self.generated,
            });
        }
    }

    /// Ends the sequence with an error.
    pub(super) fn fail(&mut self, message: &str) {
        if !self.finished {
            self.finished = true;
            self.send(Event::Failed(message.to_string()));
        }
    }

    fn send(&self, event: Event) {
        // A closed channel means the client left; the next step drops the sequence.
        let _ = self.events.send(event);
    }
}

/// The engine's score of a token from the sampler's.
fn token_score(sampled: SampledToken) -> TokenScore {
    TokenScore {
        logprob: sampled.logprob.unwrap_or(f32::NEG_INFINITY),
        top: sampled
            .top_logprobs
            .iter()
            .map(|t| (t.id, t.logprob))
            .collect(),
    }
}
