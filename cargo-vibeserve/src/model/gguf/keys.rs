//! Typed look-ups of GGUF metadata keys, with errors that name the key and the file.

use std::collections::BTreeMap;
use std::path::Path;

use super::reader::Value;
use crate::model::ModelError;

/// The metadata of one file, for typed look-ups.
pub(super) struct Keys<'a> {
    kvs: &'a BTreeMap<String, Value>,
    path: &'a Path,
}

impl<'a> Keys<'a> {
    pub(super) fn new(kvs: &'a BTreeMap<String, Value>, path: &'a Path) -> Self {
        Self { kvs, path }
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::MissingKey {
            path: self.path.to_owned(),
            key: key.to_owned(),
        }
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> ModelError {
        ModelError::WrongKeyType {
            path: self.path.to_owned(),
            key: key.to_owned(),
            expected,
            found: found.kind(),
        }
    }

    fn invalid(&self, key: &str, reason: String) -> ModelError {
        ModelError::InvalidValue {
            path: self.path.to_owned(),
            key: key.to_owned(),
            reason,
        }
    }

    pub(super) fn optional_str(&self, key: &str) -> Result<Option<String>, ModelError> {
        match self.kvs.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    pub(super) fn required_str(&self, key: &str) -> Result<String, ModelError> {
        self.optional_str(key)?.ok_or_else(|| self.missing(key))
    }

    /// Any integer type, as long as it is not negative.
    pub(super) fn optional_u64(&self, key: &str) -> Result<Option<u64>, ModelError> {
        let signed =
            |v: i64| u64::try_from(v).map_err(|_| self.invalid(key, format!("is negative ({v})")));
        let Some(value) = self.kvs.get(key) else {
            return Ok(None);
        };
        let n = match *value {
            Value::U8(v) => u64::from(v),
            Value::U16(v) => u64::from(v),
            Value::U32(v) => u64::from(v),
            Value::U64(v) => v,
            Value::I8(v) => signed(i64::from(v))?,
            Value::I16(v) => signed(i64::from(v))?,
            Value::I32(v) => signed(i64::from(v))?,
            Value::I64(v) => signed(v)?,
            ref other => return Err(self.wrong_type(key, "an unsigned integer", other)),
        };
        Ok(Some(n))
    }

    pub(super) fn required_u64(&self, key: &str) -> Result<u64, ModelError> {
        self.optional_u64(key)?.ok_or_else(|| self.missing(key))
    }

    pub(super) fn optional_u32(&self, key: &str) -> Result<Option<u32>, ModelError> {
        self.optional_u64(key)?
            .map(|n| u32::try_from(n).map_err(|_| self.invalid(key, format!("is too large ({n})"))))
            .transpose()
    }

    /// An f32, or an f64 narrowed to f32 (the precision the engine computes in).
    pub(super) fn optional_f32(&self, key: &str) -> Result<Option<f32>, ModelError> {
        match self.kvs.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v)),
            Some(Value::F64(v)) => Ok(Some(*v as f32)),
            Some(other) => Err(self.wrong_type(key, "a float", other)),
        }
    }

    /// The length of the array at `key`; `stands_for` is the key it replaces, named if both are missing.
    pub(super) fn array_len(&self, key: &str, stands_for: &str) -> Result<u64, ModelError> {
        match self.kvs.get(key) {
            None => Err(self.missing(stands_for)),
            Some(Value::Array(items)) => Ok(items.len() as u64),
            Some(other) => Err(self.wrong_type(key, "an array", other)),
        }
    }

    /// `numerator / value of divisor_key`, which must divide it exactly.
    pub(super) fn divide(
        &self,
        numerator: u64,
        divisor_key: &str,
        divisor: u64,
    ) -> Result<u64, ModelError> {
        if divisor == 0 || !numerator.is_multiple_of(divisor) {
            return Err(self.invalid(
                divisor_key,
                format!("({divisor}) does not divide the embedding length ({numerator})"),
            ));
        }
        Ok(numerator / divisor)
    }
}
