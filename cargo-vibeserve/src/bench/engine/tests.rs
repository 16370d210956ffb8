//! Parsing of recorded `llama-bench` and `server bench` output, and the arithmetic of
//! medians, ratios and the decode floor.

use super::*;
use crate::model::TensorInfo;

/// `llama-bench -m M -t 2 -p 128 -n 128 -r 1 -o json`, recorded on a loaded machine.
const PP128_TG128: &str =
    include_str!("../../../../tests/fixtures/bench/llama-bench-pp128-tg128-loaded.json");
/// `llama-bench -m M -t 2 -p 64 -n 32 -r 2 -o json`.
const PP64_TG32_R2: &str =
    include_str!("../../../../tests/fixtures/bench/llama-bench-pp64-tg32-r2.json");
/// A recorded `server bench` line.
const OUR_LINE: &str = r#"{"kernel":"Avx2","threads":2,"prompt_tokens":128,"prefill_s":2.297704441,"prefill_tok_s":55.7077741227206,"gen_tokens":128,"decode_s":24.29318194,"decode_tok_s":5.2689680716234735,"bandwidth_bytes":96576768,"bandwidth_bytes_per_s":6023832796.557232}"#;

fn tensor(name: &str, shape: &[u64], n_bytes: u64) -> TensorInfo {
    TensorInfo {
        name: name.into(),
        ggml_type: "Q4_1".into(),
        shape: shape.to_vec(),
        offset: 0,
        n_bytes,
    }
}

fn figures(prefill: &[f64], decode: &[f64]) -> Figures {
    let samples: Vec<Sample> = prefill
        .iter()
        .zip(decode)
        .map(|(&prefill, &decode)| Sample { prefill, decode })
        .collect();
    Figures::of(&samples).expect("non-empty samples")
}

#[test]
fn llama_bench_pp_and_tg_rows_are_read_by_their_token_counts() {
    let s = parse_llama_bench(PP128_TG128, 128, 128).expect("parses");
    assert_eq!(
        s,
        Sample {
            prefill: 17.288182,
            decode: 2.046834
        }
    );
    let s = parse_llama_bench(PP64_TG32_R2, 64, 32).expect("parses");
    assert_eq!(
        s,
        Sample {
            prefill: 12.24032,
            decode: 3.20756
        }
    );
}

#[test]
fn llama_bench_output_without_the_asked_test_is_an_error() {
    let err = parse_llama_bench(PP64_TG32_R2, 128, 32).expect_err("no pp128 row");
    assert!(
        matches!(&err, EngineBenchError::MissingTest { test } if test == "pp128"),
        "{err}"
    );
    let err = parse_llama_bench(PP64_TG32_R2, 64, 128).expect_err("no tg128 row");
    assert!(
        matches!(&err, EngineBenchError::MissingTest { test } if test == "tg128"),
        "{err}"
    );
    let err = parse_llama_bench("| model | size |\n", 64, 32).expect_err("a markdown table");
    assert!(matches!(err, EngineBenchError::Parse { .. }), "{err}");
}

#[test]
fn our_bench_reads_the_last_json_line() {
    let s = parse_our_bench(&format!("some log line\n{OUR_LINE}\n\n")).expect("parses");
    assert_eq!(s.kernel, "Avx2");
    assert_eq!(s.prefill_tok_s, 55.7077741227206);
    assert_eq!(s.decode_tok_s, 5.2689680716234735);
    assert_eq!(s.bandwidth_bytes_per_s, 6023832796.557232);
    let err = parse_our_bench("prompt tokens 128, prefill 55.7 tok/s\n").expect_err("not JSON");
    assert!(matches!(err, EngineBenchError::Parse { .. }), "{err}");
}

#[test]
fn spread_median_is_the_middle_or_the_mean_of_the_middle_two() {
    let s = Spread::of(&[3.0, 1.0, 2.0]).expect("non-empty");
    assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    assert_eq!(s.samples, [3.0, 1.0, 2.0], "samples keep their order");
    let s = Spread::of(&[4.0, 1.0, 3.0, 2.0]).expect("non-empty");
    assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
    assert_eq!(Spread::of(&[]), None);
}

#[test]
fn a_tied_embedding_is_read_whole_as_the_lm_head() {
    let tied = [
        tensor("token_embd.weight", &[10, 50], 1000),
        tensor("blk.0.ffn_up.weight", &[10, 20], 200),
    ];
    assert_eq!(weight_bytes_per_token(&tied), 1200);
}

#[test]
fn an_untied_embedding_contributes_one_row() {
    let untied = [
        tensor("token_embd.weight", &[10, 50], 1000),
        tensor("blk.0.ffn_up.weight", &[10, 20], 200),
        tensor("output.weight", &[10, 50], 700),
    ];
    assert_eq!(weight_bytes_per_token(&untied), 1000 / 50 + 200 + 700);
}

#[test]
fn floor_is_median_bandwidth_over_bytes_per_token() {
    let ours = figures(&[300.0, 310.0, 320.0], &[90.0, 100.0, 110.0]);
    let theirs = figures(&[280.0, 290.0, 300.0], &[40.0, 50.0, 60.0]);
    let f = floor(100_000_000, &[30e9, 10e9, 20e9], &ours, Some(&theirs)).expect("samples");
    assert_eq!(f.bandwidth_gb_s.median, 20.0);
    assert_eq!(f.decode_tok_s, 200.0);
    assert_eq!(f.ours_fraction, 0.5);
    assert_eq!(f.llama_cpp_fraction, Some(0.25));
    assert!(floor(1, &[], &ours, None).is_none());
}

#[test]
fn table_shows_medians_spreads_ratios_and_the_floor() {
    let ours = figures(&[300.0, 310.0, 320.0], &[90.0, 100.0, 110.0]);
    let theirs = figures(&[280.0, 290.0, 300.0], &[40.0, 50.0, 60.0]);
    let floor = floor(100_000_000, &[20e9], &ours, Some(&theirs)).expect("samples");
    let report = EngineReport {
        target: "t".into(),
        model: "m.gguf".into(),
        machine: Machine::detect(),
        threads: 2,
        kernel: "Avx2".into(),
        prompt_tokens: 128,
        gen_tokens: 128,
        reps: 3,
        prefill_ratio: Some(310.0 / 290.0),
        decode_ratio: Some(2.0),
        floor,
        ours,
        llama_cpp: Some(theirs),
    };
    let text = table(&report);
    for want in [
        "100.0 (90.0-110.0)",
        "50.0 (40.0-60.0)",
        "1.07x",
        "2.00x",
        "100.0 MB",
        "= 200.0 tok/s",
        "ours 50%, llama.cpp 25%",
    ] {
        assert!(text.contains(want), "{want:?} missing from\n{text}");
    }
}

#[test]
fn peer_bin_may_be_the_binary_or_its_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let err = find_llama_bench(Some(dir.path())).expect_err("empty folder");
    assert!(
        matches!(err, EngineBenchError::PeerNotFound { .. }),
        "{err}"
    );
    let bin = dir.path().join("llama-bench");
    std::fs::write(&bin, "").expect("write");
    assert_eq!(
        find_llama_bench(Some(dir.path())).expect("found in folder"),
        bin
    );
    assert_eq!(find_llama_bench(Some(&bin)).expect("found as file"), bin);
}
