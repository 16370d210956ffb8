//! Changes to a [`Plan`], addressed generically by a field's dotted path.
//!
//! A plan is serialised to a `toml::Value`, the field at the path replaced, and the value
//! deserialised back into a `Plan`: so a move can name any field the `Plan` has (today's
//! and those added later) and every value is type-checked by the `Plan`'s own serde types.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::plan::Plan;

/// The `Plan` field that lists the enabled template parts.
pub const PARTS_FIELD: &str = "parts";

/// One concrete assignment: set the plan field at `field` to `value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// The field's dotted path, e.g. `serving.prefill_chunk`.
    pub field: String,
    /// The new value, as TOML.
    pub value: toml::Value,
}

/// Why a change cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error, miette::Diagnostic)]
pub enum ChangeError {
    /// The path names no field of the plan.
    #[error("the plan has no field `{0}`")]
    NoField(String),
    /// The value does not fit the field's type (or breaks the plan's schema).
    #[error("`{field} = {value}` does not fit the plan: {reason}")]
    BadValue {
        /// The field.
        field: String,
        /// The value, as TOML.
        value: String,
        /// What the plan's types said.
        reason: String,
    },
    /// A move that scales or conserves needs an integer field.
    #[error("`{0}` is not an integer field, so it cannot be scaled")]
    NotInteger(String),
    /// The text is not `FIELD = TOML-VALUE`.
    #[error("`{0}` is not a change (expected `field.path = value`)")]
    Syntax(String),
}

/// The plan as a TOML value (a table).
fn plan_value(plan: &Plan) -> toml::Value {
    // A Plan is plain structs of numbers, strings and sets; serialising cannot fail.
    toml::Value::try_from(plan).expect("a Plan always serialises to TOML")
}

/// The value of the field at `path`, if the plan has one.
pub fn get(plan: &Plan, path: &str) -> Option<toml::Value> {
    let mut value = plan_value(plan);
    for key in path.split('.') {
        value = value.as_table_mut()?.remove(key)?;
    }
    Some(value)
}

/// The integer value of the field at `path`.
pub fn get_integer(plan: &Plan, path: &str) -> Result<i64, ChangeError> {
    match get(plan, path) {
        Some(toml::Value::Integer(n)) => Ok(n),
        Some(_) => Err(ChangeError::NotInteger(path.to_string())),
        None => Err(ChangeError::NoField(path.to_string())),
    }
}

impl Change {
    /// Sets `field` to `value`.
    pub fn new(field: impl Into<String>, value: impl Into<toml::Value>) -> Change {
        Change {
            field: field.into(),
            value: value.into(),
        }
    }

    /// `plan` with this change made; the field must exist and the value fit its type.
    pub fn apply(&self, plan: &Plan) -> Result<Plan, ChangeError> {
        let mut root = plan_value(plan);
        let mut slot = &mut root;
        for key in self.field.split('.') {
            slot = slot
                .as_table_mut()
                .and_then(|t| t.get_mut(key))
                .ok_or_else(|| ChangeError::NoField(self.field.clone()))?;
        }
        if slot.is_table() {
            return Err(ChangeError::NoField(self.field.clone()));
        }
        *slot = self.value.clone();
        root.try_into()
            .map_err(|e: toml::de::Error| ChangeError::BadValue {
                field: self.field.clone(),
                value: self.value.to_string(),
                reason: e.message().to_string(),
            })
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}", self.field, self.value)
    }
}

impl FromStr for Change {
    type Err = ChangeError;

    /// Parses `field.path = TOML-VALUE`, the form [`Display`](fmt::Display) writes.
    fn from_str(text: &str) -> Result<Change, ChangeError> {
        let syntax = || ChangeError::Syntax(text.to_string());
        let (field, value) = text.split_once(" = ").ok_or_else(syntax)?;
        let valid_key = |k: &str| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !field.split('.').all(valid_key) {
            return Err(syntax());
        }
        let mut table: toml::Table =
            toml::from_str(&format!("v = {value}")).map_err(|_| syntax())?;
        let value = table.remove("v").ok_or_else(syntax)?;
        Ok(Change::new(field, value))
    }
}

/// One value of one move of a skill: what a task tries, before it is made concrete
/// against the plan it changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Set `field` to `value`; with `conserve`, scale that integer field by old/new.
    Set {
        /// The field's dotted path.
        field: String,
        /// The new value.
        value: toml::Value,
        /// An integer field whose product with `field` is kept constant.
        conserve: Option<String>,
    },
    /// Multiply the integer `field` by `factor` (rounded, at least 1).
    Scale {
        /// The field's dotted path.
        field: String,
        /// The factor.
        factor: f64,
    },
    /// Enable the template part `part`.
    EnablePart {
        /// The part's name in `template.toml`.
        part: String,
    },
}

impl Choice {
    /// The concrete changes this choice makes to `plan`, in order.
    pub fn resolve(&self, plan: &Plan) -> Result<Vec<Change>, ChangeError> {
        match self {
            Choice::Set {
                field,
                value,
                conserve: None,
            } => Ok(vec![Change::new(field, value.clone())]),
            Choice::Set {
                field,
                value,
                conserve: Some(other),
            } => {
                let old = get_integer(plan, field)?;
                let new = value
                    .as_integer()
                    .ok_or_else(|| ChangeError::NotInteger(field.clone()))?;
                let kept = get_integer(plan, other)?;
                let scaled = (kept.saturating_mul(old) / new.max(1)).max(1);
                Ok(vec![Change::new(field, new), Change::new(other, scaled)])
            }
            Choice::Scale { field, factor } => {
                let old = get_integer(plan, field)?;
                // Plan integers are counts and sizes far below 2^53, exact in an f64.
                let new = ((old as f64 * factor).round() as i64).max(1);
                Ok(vec![Change::new(field, new)])
            }
            Choice::EnablePart { part } => {
                let mut parts = plan.parts.clone();
                parts.insert(part.clone());
                let list: Vec<toml::Value> = parts.into_iter().map(toml::Value::String).collect();
                Ok(vec![Change::new(PARTS_FIELD, list)])
            }
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Choice::Set {
                field,
                value,
                conserve: None,
            } => write!(f, "{field} = {value}"),
            Choice::Set {
                field,
                value,
                conserve: Some(other),
            } => write!(f, "{field} = {value} (keeping {field} × {other})"),
            Choice::Scale { field, factor } => write!(f, "{field} × {factor}"),
            Choice::EnablePart { part } => write!(f, "enable part {part}"),
        }
    }
}

/// `plan` with every change made in order.
pub fn apply_all(plan: &Plan, changes: &[Change]) -> Result<Plan, ChangeError> {
    changes
        .iter()
        .try_fold(plan.clone(), |plan, change| change.apply(&plan))
}

/// The changes that turn `from` into `to`: one per differing leaf field, in path order.
pub fn diff(from: &Plan, to: &Plan) -> Vec<Change> {
    let mut out = Vec::new();
    diff_values("", &plan_value(from), &plan_value(to), &mut out);
    out
}

fn diff_values(path: &str, from: &toml::Value, to: &toml::Value, out: &mut Vec<Change>) {
    match (from, to) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            // Both come from the same `Plan` type, so they have the same keys.
            let mut keys: Vec<&String> = b.keys().collect();
            keys.sort();
            for key in keys {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match a.get(key) {
                    Some(old) => diff_values(&sub, old, &b[key], out),
                    None => out.push(Change::new(sub, b[key].clone())),
                }
            }
        }
        (a, b) if a != b => out.push(Change::new(path, b.clone())),
        _ => {}
    }
}
