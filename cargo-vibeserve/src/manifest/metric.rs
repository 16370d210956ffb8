//! Benchmark metrics, and the objective and constraints written over them.
//!
//! [`METRICS`] is the one list of metric names; the benchmark reports every one of them and
//! the manifest accepts no other. Throughputs end in `_per_s` (higher is better), latencies
//! in `_ms` (lower is better).

use std::fmt;

/// Every metric the benchmark reports, by name.
pub const METRICS: &[&str] = &[
    "output_tokens_per_s",
    "total_tokens_per_s",
    "requests_per_s",
    "goodput_requests_per_s",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p90_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "p90_tpot_ms",
    "p99_tpot_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "p90_itl_ms",
    "p99_itl_ms",
    "mean_e2el_ms",
    "median_e2el_ms",
    "p90_e2el_ms",
    "p99_e2el_ms",
];

/// A metric named in [`METRICS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Metric(&'static str);

impl Metric {
    /// The metric with this name, if it is one of [`METRICS`].
    pub fn from_name(name: &str) -> Option<Metric> {
        METRICS.iter().find(|m| **m == name).map(|m| Metric(m))
    }

    /// The metric's name, as written in Serve.toml and reported by the benchmark.
    pub fn name(self) -> &'static str {
        self.0
    }

    /// Which way is better: throughputs are maximised, latencies minimised.
    pub fn better(self) -> Direction {
        if self.0.ends_with("_ms") {
            Direction::Min
        } else {
            Direction::Max
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl serde::Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Metric {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Metric::from_name(&name).ok_or_else(|| serde::de::Error::unknown_variant(&name, METRICS))
    }
}

/// Whether the objective wants the metric as high or as low as possible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Higher is better.
    Max,
    /// Lower is better.
    Min,
}

impl Direction {
    /// The word used in Serve.toml: `max` or `min`.
    pub fn keyword(self) -> &'static str {
        match self {
            Direction::Max => "max",
            Direction::Min => "min",
        }
    }

    /// Whether `candidate` is strictly better than `incumbent` in this direction.
    pub fn improves(self, candidate: f64, incumbent: f64) -> bool {
        match self {
            Direction::Max => candidate > incumbent,
            Direction::Min => candidate < incumbent,
        }
    }
}

/// What the search optimises: `"max output_tokens_per_s"`, `"min p99_ttft_ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Objective {
    /// Maximise or minimise.
    pub direction: Direction,
    /// The metric.
    pub metric: Metric,
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.direction.keyword(), self.metric)
    }
}

/// A comparison in a constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `<=`
    Le,
    /// `<`
    Lt,
    /// `>=`
    Ge,
    /// `>`
    Gt,
}

impl CmpOp {
    /// The operators in the order the parser tries them (two-character ones first).
    const ALL: [CmpOp; 4] = [CmpOp::Le, CmpOp::Ge, CmpOp::Lt, CmpOp::Gt];

    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Le => "<=",
            CmpOp::Lt => "<",
            CmpOp::Ge => ">=",
            CmpOp::Gt => ">",
        }
    }
}

/// A bound a candidate must meet to be accepted: `"p99_ttft_ms <= 2000"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Constraint {
    /// The metric on the left.
    pub metric: Metric,
    /// The comparison.
    pub op: CmpOp,
    /// The bound on the right, in the metric's unit.
    pub value: f64,
}

impl Constraint {
    /// Whether a measured `value` of the metric satisfies the constraint.
    pub fn holds(&self, value: f64) -> bool {
        match self.op {
            CmpOp::Le => value <= self.value,
            CmpOp::Lt => value < self.value,
            CmpOp::Ge => value >= self.value,
            CmpOp::Gt => value > self.value,
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.metric, self.op.symbol(), self.value)
    }
}

/// Why an objective or constraint string did not parse: what is wrong, where in the string
/// (byte range), and what would be valid.
#[derive(Debug, Clone, PartialEq)]
pub struct ExprError {
    /// What is wrong, in a sentence.
    pub message: String,
    /// What is wrong, in a few words, to label the offending part.
    pub label: String,
    /// The offending bytes of the parsed string.
    pub range: std::ops::Range<usize>,
    /// What would be valid.
    pub help: String,
}

/// Split `text` into whitespace-separated words with their byte ranges.
fn words(text: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        match (start, c.is_whitespace()) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                out.push((s..i, &text[s..i]));
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// The metric named `word` (at `range` in the parsed text), or an error listing the known ones.
fn metric_at(word: &str, range: std::ops::Range<usize>) -> Result<Metric, ExprError> {
    Metric::from_name(word).ok_or_else(|| ExprError {
        message: format!("unknown metric `{word}`"),
        label: "unknown metric".into(),
        range,
        help: match crate::manifest::error::closest(word, METRICS.iter().copied()) {
            Some(near) => format!(
                "did you mean `{near}`? Known metrics: {}",
                METRICS.join(", ")
            ),
            None => format!("known metrics: {}", METRICS.join(", ")),
        },
    })
}

/// Parse `"max output_tokens_per_s"` / `"min p99_ttft_ms"`.
pub fn parse_objective(text: &str) -> Result<Objective, ExprError> {
    const FORM: &str = "write `max METRIC` or `min METRIC`, e.g. \"max output_tokens_per_s\"";
    let words = words(text);
    let [(dir_range, dir), (metric_range, metric)] = words.as_slice() else {
        return Err(ExprError {
            message: "an objective is a direction and a metric".into(),
            label: "expected `max METRIC` or `min METRIC`".into(),
            range: 0..text.len(),
            help: FORM.into(),
        });
    };
    let direction = match *dir {
        "max" => Direction::Max,
        "min" => Direction::Min,
        other => {
            return Err(ExprError {
                message: format!("unknown direction `{other}`"),
                label: "expected max or min".into(),
                range: dir_range.clone(),
                help: FORM.into(),
            });
        }
    };
    let metric = metric_at(metric, metric_range.clone())?;
    if metric.better() != direction {
        return Err(ExprError {
            message: format!(
                "`{}` of `{metric}` optimises the wrong way",
                direction.keyword()
            ),
            label: format!(
                "{} is better",
                metric
                    .better()
                    .keyword()
                    .replace("max", "higher")
                    .replace("min", "lower")
            ),
            range: 0..text.len(),
            help: format!(
                "`{metric}` is better when {}: write \"{} {metric}\"",
                if metric.better() == Direction::Max {
                    "higher"
                } else {
                    "lower"
                },
                metric.better().keyword()
            ),
        });
    }
    Ok(Objective { direction, metric })
}

/// Parse `"p99_ttft_ms <= 2000"` (spaces around the operator optional).
pub fn parse_constraint(text: &str) -> Result<Constraint, ExprError> {
    const FORM: &str =
        "write `METRIC OP NUMBER` with OP one of <=, <, >=, >, e.g. \"p99_ttft_ms <= 2000\"";
    let skip_space = |from: usize| from + (text[from..].len() - text[from..].trim_start().len());
    let start = skip_space(0);
    let name_len = text[start..]
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len() - start);
    if name_len == 0 {
        return Err(ExprError {
            message: "a constraint starts with a metric name".into(),
            label: "expected a metric".into(),
            range: 0..text.len(),
            help: FORM.into(),
        });
    }
    let metric = metric_at(&text[start..start + name_len], start..start + name_len)?;
    let op_start = skip_space(start + name_len);
    let Some(op) = CmpOp::ALL
        .into_iter()
        .find(|op| text[op_start..].starts_with(op.symbol()))
    else {
        let token = text[op_start..].split_whitespace().next().unwrap_or("");
        let end = op_start + token.len();
        let help = match token {
            "=<" | "=>" => format!(
                "did you mean `{}`? {FORM}",
                token.chars().rev().collect::<String>()
            ),
            "==" | "=" => format!("a constraint is a bound, not an equality; {FORM}"),
            _ => FORM.to_string(),
        };
        return Err(ExprError {
            message: if token.is_empty() {
                format!("no comparison operator after `{metric}`")
            } else {
                format!("`{token}` is not a comparison operator")
            },
            label: "expected <=, <, >= or >".into(),
            range: if token.is_empty() {
                0..text.len()
            } else {
                op_start..end
            },
            help,
        });
    };
    let num_start = skip_space(op_start + op.symbol().len());
    let number = text[num_start..].trim_end();
    let value = match number.parse::<f64>() {
        Ok(v) if v.is_finite() => v,
        _ => {
            return Err(ExprError {
                message: if number.is_empty() {
                    format!("no bound after `{}`", op.symbol())
                } else {
                    format!("`{number}` is not a number")
                },
                label: "expected a number".into(),
                range: if number.is_empty() {
                    op_start..text.len()
                } else {
                    num_start..num_start + number.len()
                },
                help: format!(
                    "the bound is a plain number in the metric's unit (ms or per second); {FORM}"
                ),
            });
        }
    };
    Ok(Constraint { metric, op, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objective_parses_direction_and_metric() {
        let o = parse_objective("max output_tokens_per_s").unwrap();
        assert_eq!(o.direction, Direction::Max);
        assert_eq!(o.metric.name(), "output_tokens_per_s");
        let o = parse_objective("  min   p99_ttft_ms ").unwrap();
        assert_eq!(
            (o.direction, o.metric.name()),
            (Direction::Min, "p99_ttft_ms")
        );
        assert_eq!(o.to_string(), "min p99_ttft_ms");
    }

    #[test]
    fn objective_rejects_unknown_metric_with_its_range_and_a_suggestion() {
        let e = parse_objective("max output_token_per_s").unwrap_err();
        assert_eq!(e.range, 4..22);
        assert!(
            e.help.starts_with("did you mean `output_tokens_per_s`?"),
            "{}",
            e.help
        );
    }

    #[test]
    fn objective_rejects_bad_direction_and_shape() {
        assert_eq!(
            parse_objective("maximise requests_per_s")
                .unwrap_err()
                .range,
            0..8
        );
        assert_eq!(parse_objective("max").unwrap_err().range, 0..3);
        assert!(parse_objective("max a b").is_err());
    }

    #[test]
    fn objective_rejects_the_wrong_direction_for_a_metric() {
        let e = parse_objective("min output_tokens_per_s").unwrap_err();
        assert!(e.help.contains("\"max output_tokens_per_s\""), "{}", e.help);
        assert!(parse_objective("max p99_ttft_ms").is_err());
    }

    #[test]
    fn constraint_parses_every_operator_with_or_without_spaces() {
        for (text, op) in [
            ("p99_ttft_ms <= 2000", CmpOp::Le),
            ("p99_ttft_ms<2000", CmpOp::Lt),
            ("requests_per_s >= 1.5", CmpOp::Ge),
            ("requests_per_s>1e-1", CmpOp::Gt),
        ] {
            let c = parse_constraint(text).unwrap();
            assert_eq!(c.op, op, "{text}");
        }
        let c = parse_constraint("median_tpot_ms <= 12.5").unwrap();
        assert_eq!((c.metric.name(), c.value), ("median_tpot_ms", 12.5));
    }

    #[test]
    fn constraint_holds_follows_the_operator_at_the_bound() {
        let le = parse_constraint("p99_ttft_ms <= 2000").unwrap();
        assert!(le.holds(2000.0) && le.holds(1.0) && !le.holds(2000.1));
        let lt = parse_constraint("p99_ttft_ms < 2000").unwrap();
        assert!(!lt.holds(2000.0) && lt.holds(1999.9));
        let ge = parse_constraint("requests_per_s >= 2").unwrap();
        assert!(ge.holds(2.0) && !ge.holds(1.9));
        let gt = parse_constraint("requests_per_s > 2").unwrap();
        assert!(!gt.holds(2.0) && gt.holds(2.1));
    }

    #[test]
    fn constraint_errors_point_at_the_offending_part() {
        let e = parse_constraint("p99_ttft_ms == 2000").unwrap_err();
        assert_eq!(
            (e.range.clone(), e.message.as_str()),
            (12..14, "`==` is not a comparison operator")
        );
        let e = parse_constraint("p99_ttft_ms =< 2000").unwrap_err();
        assert!(e.help.starts_with("did you mean `<=`?"), "{}", e.help);
        let e = parse_constraint("p99_ttft_ms").unwrap_err();
        assert_eq!(e.message, "no comparison operator after `p99_ttft_ms`");
        assert!(parse_constraint("<= 2000").is_err());
        let e = parse_constraint("p99_ttft_ms <= 2000 ms").unwrap_err();
        assert_eq!(
            (e.range.clone(), e.message.as_str()),
            (15..22, "`2000 ms` is not a number")
        );
        let e = parse_constraint("p99_latency <= 2000").unwrap_err();
        assert_eq!(
            (e.range.clone(), e.message.as_str()),
            (0..11, "unknown metric `p99_latency`")
        );
        let e = parse_constraint("p99_ttft_ms <= fast").unwrap_err();
        assert_eq!(e.range, 15..19);
        let e = parse_constraint("p99_ttft_ms <= inf").unwrap_err();
        assert_eq!(e.range, 15..18);
        let e = parse_constraint("p99_ttft_ms <=").unwrap_err();
        assert_eq!(
            (e.range.clone(), e.message.as_str()),
            (12..14, "no bound after `<=`")
        );
    }

    #[test]
    fn metrics_know_their_better_direction() {
        assert_eq!(
            Metric::from_name("goodput_requests_per_s")
                .unwrap()
                .better(),
            Direction::Max
        );
        assert_eq!(
            Metric::from_name("mean_e2el_ms").unwrap().better(),
            Direction::Min
        );
        assert!(Metric::from_name("p95_ttft_ms").is_none());
        assert!(Direction::Min.improves(1.0, 2.0) && !Direction::Max.improves(1.0, 2.0));
    }
}
