//! GGUF metadata (Cargo feature `generate`): the key/value header of a GGUF model file,
//! where llama.cpp's models keep their tokenizer (vocabulary, merges, special tokens) and
//! their chat template. Only the header is read, never the weights.
//!
//! The format: the magic `GGUF`, a version (2 or 3), the tensor count and the key/value
//! count (u64 each), then each key (a u64 length and UTF-8) with its value type (u32) and
//! value; all little-endian.

use crate::{OrError, PluginError, internal};
use std::collections::HashMap;
use std::io::{BufReader, Read};

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any integer type, widened.
    Int(i64),
    /// f32 or f64.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string (lossily UTF-8 where a vocabulary piece is not).
    String(String),
    /// An array (of any one type).
    Array(Vec<Value>),
}

/// A GGUF file's metadata, by key.
#[derive(Debug, Default)]
pub struct Metadata(HashMap<String, Value>);

/// Most key/value pairs, array elements and string bytes read: far above any real model's
/// (SmolLM2: 49,152 tokens, 48,900 merges), far below what would exhaust the plugin's memory.
const MAX_KEYS: u64 = 1 << 16;
const MAX_ARRAY: u64 = 1 << 22;
const MAX_STRING: u64 = 1 << 24;

impl Metadata {
    /// Read the metadata of the GGUF file at `path` (for a plugin: under `/data`).
    pub fn read(path: &str) -> Result<Self, PluginError> {
        let file = std::fs::File::open(path).or_internal(&format!("opening {path}"))?;
        Self::from_reader(BufReader::with_capacity(1 << 16, file)).map_err(|e| e.context(path))
    }

    /// Read GGUF metadata from `reader`, positioned at the start of the file.
    pub fn from_reader(mut reader: impl Read) -> Result<Self, PluginError> {
        let r = &mut reader;
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic).or_internal("reading the header")?;
        if &magic != b"GGUF" {
            return Err(internal("not a GGUF file"));
        }
        let version = u32::from_le_bytes(bytes(r)?);
        if !(2..=3).contains(&version) {
            return Err(internal(format!("GGUF version {version} is not supported (2 and 3 are)")));
        }
        let _tensors = u64::from_le_bytes(bytes(r)?);
        let count = u64::from_le_bytes(bytes(r)?);
        if count > MAX_KEYS {
            return Err(internal(format!("{count} metadata keys: too many")));
        }
        let mut values = HashMap::new();
        for _ in 0..count {
            let key = string(r)?;
            let kind = u32::from_le_bytes(bytes(r)?);
            let value = value(r, kind)?;
            values.insert(key, value);
        }
        Ok(Self(values))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// The string at `key`.
    pub fn string(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The integer at `key`.
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The boolean at `key`.
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The array of strings at `key` (moved out: vocabularies are large).
    pub fn take_strings(&mut self, key: &str) -> Option<Vec<String>> {
        match self.0.remove(key)? {
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// The array of integers at `key`.
    pub fn ints(&self, key: &str) -> Option<Vec<i64>> {
        match self.get(key)? {
            Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    Value::Int(i) => Some(*i),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }
}

fn bytes<const N: usize>(r: &mut impl Read) -> Result<[u8; N], PluginError> {
    let mut b = [0u8; N];
    r.read_exact(&mut b).or_internal("reading the metadata (is the file whole?)")?;
    Ok(b)
}

fn string(r: &mut impl Read) -> Result<String, PluginError> {
    let len = u64::from_le_bytes(bytes(r)?);
    if len > MAX_STRING {
        return Err(internal(format!("a string of {len} bytes: too long")));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).or_internal("reading a string")?;
    // Vocabularies may hold pieces that are not UTF-8 on their own.
    Ok(String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

fn value(r: &mut impl Read, kind: u32) -> Result<Value, PluginError> {
    Ok(match kind {
        0 => Value::Int(i64::from(u8::from_le_bytes(bytes(r)?))),
        1 => Value::Int(i64::from(i8::from_le_bytes(bytes(r)?))),
        2 => Value::Int(i64::from(u16::from_le_bytes(bytes(r)?))),
        3 => Value::Int(i64::from(i16::from_le_bytes(bytes(r)?))),
        4 => Value::Int(i64::from(u32::from_le_bytes(bytes(r)?))),
        5 => Value::Int(i64::from(i32::from_le_bytes(bytes(r)?))),
        6 => Value::Float(f64::from(f32::from_le_bytes(bytes(r)?))),
        7 => Value::Bool(u8::from_le_bytes(bytes(r)?) != 0),
        8 => Value::String(string(r)?),
        9 => {
            let kind = u32::from_le_bytes(bytes(r)?);
            let len = u64::from_le_bytes(bytes(r)?);
            if len > MAX_ARRAY || kind == 9 {
                return Err(internal(format!("an array of {len} elements of type {kind}: not supported")));
            }
            let mut items = Vec::with_capacity(len as usize);
            for _ in 0..len {
                items.push(value(r, kind)?);
            }
            Value::Array(items)
        }
        10 => Value::Int(u64::from_le_bytes(bytes(r)?) as i64),
        11 => Value::Int(i64::from_le_bytes(bytes(r)?)),
        12 => Value::Float(f64::from_le_bytes(bytes(r)?)),
        other => return Err(internal(format!("unknown metadata type {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string_bytes(s: &str) -> Vec<u8> {
        let mut out = (s.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(s.as_bytes());
        out
    }

    #[test]
    fn reads_scalars_strings_and_arrays() {
        let mut file = b"GGUF".to_vec();
        file.extend(3u32.to_le_bytes());
        file.extend(0u64.to_le_bytes());
        file.extend(3u64.to_le_bytes());
        file.extend(string_bytes("general.architecture"));
        file.extend(8u32.to_le_bytes());
        file.extend(string_bytes("llama"));
        file.extend(string_bytes("tokenizer.ggml.bos_token_id"));
        file.extend(4u32.to_le_bytes());
        file.extend(1u32.to_le_bytes());
        file.extend(string_bytes("tokenizer.ggml.tokens"));
        file.extend(9u32.to_le_bytes());
        file.extend(8u32.to_le_bytes());
        file.extend(2u64.to_le_bytes());
        file.extend(string_bytes("a"));
        file.extend(string_bytes("Ġb"));
        let mut meta = Metadata::from_reader(file.as_slice()).unwrap();
        assert_eq!(meta.string("general.architecture"), Some("llama"));
        assert_eq!(meta.int("tokenizer.ggml.bos_token_id"), Some(1));
        assert_eq!(meta.take_strings("tokenizer.ggml.tokens"), Some(vec!["a".into(), "Ġb".into()]));
        assert!(Metadata::from_reader(&b"GGML...."[..]).is_err());
        // A truncated file is an error, not a panic.
        assert!(Metadata::from_reader(&file[..file.len() - 3]).is_err());
    }
}
