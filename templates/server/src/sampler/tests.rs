//! Behaviour of the whole sampler: distributions over many seeded draws, determinism,
//! penalties through `SequenceSampler`, filters' edge cases, NaN logits, logprobs.

use super::*;

const DRAWS: usize = 20_000;

fn sampler(params: SamplingParams) -> SequenceSampler {
    SequenceSampler::new(params.validate().expect("valid params"), &[])
}

fn seeded(seed: u64) -> SamplingParams {
    SamplingParams {
        seed: Some(seed),
        ..Default::default()
    }
}

/// Fraction of `DRAWS` draws (each from a fresh copy of `logits`) that chose each id;
/// the sampler's penalties are off, so draws are independent.
fn frequencies(params: SamplingParams, logits: &[f32]) -> Vec<f64> {
    let mut s = sampler(params);
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..DRAWS {
        let mut row = logits.to_vec();
        counts[s.sample(&mut row).expect("samples").id as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / DRAWS as f64).collect()
}

fn assert_close(got: &[f64], want: &[f64]) {
    // 20k draws: the standard error of a frequency is at most 0.0035; allow ~4 sigma.
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 0.015, "id {i}: got {got:?}, want {want:?}");
    }
}

fn ln(p: &[f32]) -> Vec<f32> {
    p.iter().map(|p| p.ln()).collect()
}

#[test]
fn temperature_one_draws_from_the_softmax() {
    let f = frequencies(seeded(1), &ln(&[0.5, 0.3, 0.2]));
    assert_close(&f, &[0.5, 0.3, 0.2]);
}

#[test]
fn temperature_sharpens_and_flattens() {
    // T = 0.5 squares the probabilities before renormalising.
    let sharp = SamplingParams {
        temperature: 0.5,
        ..seeded(2)
    };
    let z = 0.25 + 0.09 + 0.04;
    assert_close(
        &frequencies(sharp, &ln(&[0.5, 0.3, 0.2])),
        &[0.25 / z, 0.09 / z, 0.04 / z],
    );
    let flat = SamplingParams {
        temperature: 1000.0,
        ..seeded(3)
    };
    assert_close(&frequencies(flat, &[3.0, 0.0, -3.0]), &[1.0 / 3.0; 3]);
}

#[test]
fn same_seed_same_tokens_other_seed_other_tokens() {
    let logits: Vec<f32> = (0..1000)
        .map(|i| ((i * 7919) % 1000) as f32 / 300.0)
        .collect();
    let run = |seed| {
        let mut s = sampler(seeded(seed));
        (0..200)
            .map(|_| s.sample(&mut logits.clone()).expect("samples").id)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn greedy_is_argmax_whatever_the_seed() {
    let logits = [0.1, 2.5, 2.4, -1.0];
    for seed in 0..20 {
        let mut s = sampler(SamplingParams {
            seed: Some(seed),
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut logits.clone()).expect("samples").id, 1);
        let mut k1 = sampler(SamplingParams {
            top_k: 1,
            ..seeded(seed)
        });
        assert_eq!(k1.sample(&mut logits.clone()).expect("samples").id, 1);
    }
    let mut tie = sampler(SamplingParams::greedy());
    assert_eq!(
        tie.sample(&mut [1.0, 3.0, 3.0]).map(|t| t.id),
        Ok(1),
        "first max"
    );
}

#[test]
fn top_k_keeps_the_k_best_renormalised() {
    let params = SamplingParams {
        top_k: 2,
        ..seeded(4)
    };
    let f = frequencies(params, &ln(&[0.2, 0.5, 0.1, 0.2]));
    // Ties at the cut (ids 0 and 3) go to the lower id.
    assert_close(&f, &[0.2 / 0.7, 0.5 / 0.7, 0.0, 0.0]);
}

fn kept(logits: &[f32], filters: Filters) -> Vec<u32> {
    let mut c = select::Candidates::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    assert!(c.draw(logits, filters, &mut rng).is_some());
    c.kept_ids()
}

fn top_k(k: usize, min_p: f32) -> Filters {
    Filters {
        temperature: 1.0,
        top_k: k,
        top_p: 1.0,
        min_p,
    }
}

#[test]
fn top_k_by_scan_and_by_select_agree_with_sorting() {
    // Distinct logits, with some repeated values to exercise ties.
    let logits: Vec<f32> = (0..1000u32)
        .map(|i| ((i * 7919) % 613) as f32 / 61.0)
        .collect();
    for k in [1, 5, 128, 129, 400, 999] {
        let mut order: Vec<u32> = (0..1000).collect();
        order.sort_by(|&a, &b| {
            logits[b as usize]
                .total_cmp(&logits[a as usize])
                .then(a.cmp(&b))
        });
        let mut want = order[..k].to_vec();
        want.sort_unstable();
        assert_eq!(kept(&logits, top_k(k, 0.0)), want, "k = {k}");
    }
}

#[test]
fn min_p_and_top_k_together_keep_the_intersection() {
    let logits = ln(&[0.5, 0.3, 0.15, 0.05]);
    assert_eq!(kept(&logits, top_k(3, 0.2)), [0, 1, 2]);
    assert_eq!(kept(&logits, top_k(2, 0.2)), [0, 1]);
    assert_eq!(kept(&logits, top_k(200, 0.2)), [0, 1, 2]);
    assert_eq!(kept(&logits, top_k(3, 0.5)), [0, 1]);
}

#[test]
fn top_p_keeps_the_smallest_prefix_reaching_p() {
    let logits = ln(&[0.15, 0.5, 0.05, 0.3]);
    let params = SamplingParams {
        top_p: 0.75,
        ..seeded(5)
    };
    assert_close(
        &frequencies(params, &logits),
        &[0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8],
    );
    let tiny = SamplingParams {
        top_p: 1e-6,
        ..seeded(6)
    };
    assert_close(&frequencies(tiny, &logits), &[0.0, 1.0, 0.0, 0.0]);
}

fn kept_by_top_p(logits: &[f32], top_p: f32) -> Vec<u32> {
    let mut c = select::Candidates::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let filters = Filters {
        temperature: 1.0,
        top_k: 0,
        top_p,
        min_p: 0.0,
    };
    assert!(c.draw(logits, filters, &mut rng).is_some());
    c.kept_ids()
}

#[test]
fn top_p_on_equal_logits_keeps_the_lowest_ids() {
    let kept = kept_by_top_p(&[0.0f32; 49152], 0.5);
    assert_eq!(kept, (0..24576).collect::<Vec<u32>>());
    assert_eq!(kept_by_top_p(&[1.0, 0.0, 0.0, 0.0, 1.0], 0.5), [0, 4]);
}

#[test]
fn top_p_partition_agrees_with_sorting_on_random_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for round in 0..40 {
        let n = [1, 2, 7, 100, 5000][round % 5];
        let logits: Vec<f32> = (0..n)
            .map(|_| rand::RngExt::random::<f32>(&mut rng) * 12.0 - 6.0)
            .collect();
        let top_p = [0.01, 0.3, 0.9, 0.999][round % 4];
        // Reference: sort by weight, keep the shortest prefix reaching top_p.
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sorted: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, (l - max).exp()))
            .collect();
        let total: f64 = sorted.iter().map(|c| f64::from(c.1)).sum();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut acc = 0.0;
        let cut = sorted
            .iter()
            .position(|c| {
                acc += f64::from(c.1);
                acc >= f64::from(top_p) * total
            })
            .map_or(n, |i| i + 1);
        let mut want: Vec<u32> = sorted[..cut].iter().map(|c| c.0).collect();
        want.sort_unstable();
        assert_eq!(kept_by_top_p(&logits, top_p), want, "n {n}, top_p {top_p}");
    }
}

#[test]
fn min_p_drops_tokens_below_a_fraction_of_the_best() {
    let logits = ln(&[0.5, 0.3, 0.15, 0.05]);
    let params = SamplingParams {
        min_p: 0.2,
        ..seeded(7)
    };
    // Threshold 0.2 * 0.5 = 0.1: id 3 goes.
    assert_close(
        &frequencies(params, &logits),
        &[0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0],
    );
    let all_but_best = SamplingParams {
        min_p: 1.0,
        ..seeded(8)
    };
    assert_close(&frequencies(all_but_best, &logits), &[1.0, 0.0, 0.0, 0.0]);
}

#[test]
fn min_p_applies_to_the_tempered_distribution() {
    // T = 0.5: probabilities ∝ p², 0.25 : 0.09 : 0.0225 : 0.0025; min_p 0.2 keeps
    // ≥ 0.05, so only ids 0 and 1.
    let mut c = select::Candidates::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let filters = Filters {
        temperature: 0.5,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.2,
    };
    assert!(
        c.draw(&ln(&[0.5, 0.3, 0.15, 0.05]), filters, &mut rng)
            .is_some()
    );
    assert_eq!(c.kept_ids(), [0, 1]);
}

#[test]
fn nan_logits_are_never_chosen_and_all_nan_is_an_error() {
    let row = [f32::NAN, 1.0, f32::NAN, 0.5];
    for params in [SamplingParams::greedy(), seeded(9)] {
        let mut s = sampler(params);
        for _ in 0..200 {
            let id = s.sample(&mut row.clone()).expect("samples").id;
            assert!(id == 1 || id == 3, "chose NaN id {id}");
        }
        assert_eq!(
            s.sample(&mut [f32::NAN, f32::NEG_INFINITY]),
            Err(SamplingError::NoFiniteLogit)
        );
    }
    let mut inf = sampler(seeded(10));
    assert_eq!(
        inf.sample(&mut [0.0, f32::INFINITY, 1.0]).map(|t| t.id),
        Ok(1)
    );
}

#[test]
fn repetition_penalty_applies_once_per_seen_token() {
    let mut s = sampler(SamplingParams {
        repetition_penalty: 1.5,
        ..SamplingParams::greedy()
    });
    let ids: Vec<u32> = (0..4)
        .map(|_| s.sample(&mut [2.0, 1.9, 0.0]).expect("samples").id)
        .collect();
    // 2.0/1.5 = 1.33 < 1.9, then 1.9/1.5 = 1.27 < 1.33, and counts do not compound.
    assert_eq!(ids, [0, 1, 0, 0]);
}

#[test]
fn frequency_penalty_grows_with_each_repeat() {
    let mut s = sampler(SamplingParams {
        frequency_penalty: 0.4,
        ..SamplingParams::greedy()
    });
    let ids: Vec<u32> = (0..4)
        .map(|_| s.sample(&mut [1.0, 0.5]).expect("samples").id)
        .collect();
    // id 0: 1.0, 0.6, 0.2 after 0, 1, 2 uses; id 1: 0.5, 0.1.
    assert_eq!(ids, [0, 0, 1, 0]);
}

#[test]
fn presence_penalty_counts_the_prompt_only_when_asked() {
    let params = |penalize_prompt| SamplingParams {
        presence_penalty: 0.5,
        penalize_prompt,
        ..SamplingParams::greedy()
    };
    let first = |penalize_prompt| {
        let valid = params(penalize_prompt).validate().expect("valid");
        let mut s = SequenceSampler::new(valid, &[0, 0]);
        s.sample(&mut [1.0, 0.8]).expect("samples").id
    };
    assert_eq!(first(false), 0);
    assert_eq!(first(true), 1);
}

#[test]
fn logprobs_report_the_raw_distribution() {
    let raw = [2.0f32, 1.0, 0.0, -1.0];
    let lse = raw.iter().map(|l| l.exp()).sum::<f32>().ln();
    let mut s = sampler(SamplingParams {
        temperature: 0.7,
        presence_penalty: 2.0,
        frequency_penalty: 2.0,
        top_logprobs: 3,
        ..seeded(11)
    });
    for _ in 0..20 {
        let t = s.sample(&mut raw.clone()).expect("samples");
        let want = raw[t.id as usize] - lse;
        let got = t.logprob.expect("logprob requested");
        assert!((got - want).abs() < 1e-5, "id {}: {got} vs {want}", t.id);
        let top: Vec<u32> = t.top_logprobs.iter().map(|x| x.id).collect();
        assert_eq!(top, [0, 1, 2], "top logprobs ignore penalties");
        assert!((t.top_logprobs[0].logprob - (2.0 - lse)).abs() < 1e-5);
    }
    let mut quiet = sampler(seeded(12));
    let t = quiet.sample(&mut raw.clone()).expect("samples");
    assert_eq!((t.logprob, t.top_logprobs.len()), (None, 0));
}

#[test]
fn score_of_a_known_token_matches_what_sampling_reports() {
    let raw = [0.5f32, -1.0, 2.0, f32::NAN];
    let mut s = sampler(SamplingParams {
        logprobs: true,
        top_logprobs: 2,
        ..SamplingParams::greedy()
    });
    let sampled = s.sample(&mut raw.clone()).expect("samples");
    assert_eq!(score(&raw, 2, 2), sampled);
    let other = score(&raw, 1, 0);
    let lse = [0.5f32, -1.0, 2.0]
        .iter()
        .map(|l| l.exp())
        .sum::<f32>()
        .ln();
    assert_eq!(other.id, 1);
    assert!((other.logprob.expect("always set") - (-1.0 - lse)).abs() < 1e-6);
    assert!(other.top_logprobs.is_empty());
}

#[test]
fn only_greedy_rows_without_penalties_or_logprobs_may_be_chosen_on_the_device() {
    let logits = [0.5, 2.0, -1.0, 1.9];
    let mut plain = sampler(SamplingParams::greedy());
    assert!(plain.is_plain_greedy());
    // What a device would choose (the argmax) is what the sampler chooses.
    assert_eq!(plain.sample(&mut logits.to_vec()).expect("samples").id, 1);
    let needs_row = [
        SamplingParams::default(),
        SamplingParams {
            logprobs: true,
            ..SamplingParams::greedy()
        },
        SamplingParams {
            frequency_penalty: 1.0,
            ..SamplingParams::greedy()
        },
    ];
    for params in needs_row {
        let s = sampler(params.clone());
        assert!(!s.is_plain_greedy(), "{params:?}");
    }
}
