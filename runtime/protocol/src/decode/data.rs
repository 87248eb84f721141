//! data: a JSON tensor's `data` (flat or nested) into wire bytes, element by element as
//! the parser meets them.

use super::*;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};

/// JSON `data` (flat or nested, row-major) into wire bytes, element by element as the
/// parser meets them: a request's memory is its body and its tensors, whatever the nesting.
pub(super) fn json_data(name: &str, datatype: Datatype, count: usize, data: &RawValue) -> Result<Vec<u8>> {
    let text = data.get();
    // Not `count`: a shape may claim far more elements than the body holds.
    let mut out = Vec::with_capacity(count.min(text.len() / 2 + 1) * datatype.size().unwrap_or(8));
    let mut state = Elements { datatype, count, seen: 0, out: &mut out, problem: None };
    let mut parser = serde_json::Deserializer::from_str(text);
    if let Err(e) = (Nested { state: &mut state, depth: 0 }).deserialize(&mut parser) {
        let problem = state.problem.take().unwrap_or_else(|| e.to_string());
        return Err(Error::bad_request(format!("input '{name}': {problem}")));
    }
    if state.seen != count {
        return Err(Error::bad_request(format!(
            "input '{name}': its shape holds {count} elements but data has {}",
            state.seen
        )));
    }
    Ok(out)
}

/// Where `json_data` writes: elements seen so far, and the first problem in words.
pub(super) struct Elements<'a> {
    pub(super) datatype: Datatype,
    pub(super) count: usize,
    pub(super) seen: usize,
    pub(super) out: &'a mut Vec<u8>,
    pub(super) problem: Option<String>,
}

/// A JSON element as the parser gives it.
pub(super) enum Element<'a> {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Str(&'a str),
    /// null, an object: never a tensor element.
    Other,
}

impl Elements<'_> {
    /// Append one element; past `count` only count it (the error will say how many).
    pub(super) fn push<E: de::Error>(&mut self, element: Element) -> std::result::Result<(), E> {
        let index = self.seen;
        self.seen += 1;
        if index >= self.count {
            return Ok(());
        }
        if encode_element(self.out, self.datatype, element).is_none() {
            return Err(self.fail(format!("data[{index}] is not a valid {} value", self.datatype)));
        }
        Ok(())
    }

    pub(super) fn fail<E: de::Error>(&mut self, problem: String) -> E {
        let e = E::custom(&problem);
        self.problem = Some(problem);
        e
    }
}

/// One level of `data`: an array of levels, or an element.
pub(super) struct Nested<'s, 'a> {
    pub(super) state: &'s mut Elements<'a>,
    pub(super) depth: usize,
}

impl<'de> DeserializeSeed<'de> for Nested<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> std::result::Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Nested<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} values, in arrays nested as the shape is", self.state.datatype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> std::result::Result<(), A::Error> {
        if self.depth >= MAX_NESTING {
            return Err(self.state.fail("data is nested too deeply".into()));
        }
        while items.next_element_seed(Nested { state: &mut *self.state, depth: self.depth + 1 })?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<(), E> {
        self.state.push(Element::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<(), E> {
        self.state.push(Element::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<(), E> {
        self.state.push(Element::Uint(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<(), E> {
        self.state.push(Element::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<(), E> {
        self.state.push(Element::Str(v))
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        self.state.push(Element::Other)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> std::result::Result<(), A::Error> {
        self.state.push(Element::Other)
    }
}

/// Append one JSON element as `datatype`; `None` if it does not fit. Floats out of range
/// (1e39 as FP32) are refused like integers out of range: JSON has no infinity to answer with.
/// One element of `datatype` holding the number `value` (a config's, such as a pad value),
/// checked as a JSON request's data is: a whole number in range for an integer type, 0 or 1
/// for BOOL, finite for a float type. `None` where `datatype` cannot hold it.
pub fn number_element(datatype: Datatype, value: f64) -> Option<Vec<u8>> {
    let element = match datatype {
        Datatype::Bool if value == 0.0 || value == 1.0 => Element::Bool(value == 1.0),
        // Whole numbers as integers, so that an integer type takes them (and checks their range).
        _ if value.fract() == 0.0 && value.abs() < 9.2e18 => Element::Int(value as i64),
        _ => Element::Float(value),
    };
    let mut out = Vec::new();
    encode_element(&mut out, datatype, element)?;
    Some(out)
}

pub(super) fn encode_element(out: &mut Vec<u8>, datatype: Datatype, v: Element) -> Option<()> {
    fn int<T: TryFrom<i64> + TryFrom<u64>>(v: &Element) -> Option<T> {
        match *v {
            Element::Int(i) => T::try_from(i).ok(),
            Element::Uint(u) => T::try_from(u).ok(),
            _ => None,
        }
    }
    fn float(v: &Element) -> Option<f64> {
        match *v {
            Element::Int(i) => Some(i as f64),
            Element::Uint(u) => Some(u as f64),
            Element::Float(f) => Some(f),
            _ => None,
        }
    }
    fn finite<T: Copy>(value: T, is_finite: impl Fn(T) -> bool) -> Option<T> {
        is_finite(value).then_some(value)
    }
    match datatype {
        Datatype::Bool => match v {
            Element::Bool(b) => out.push(u8::from(b)),
            _ => return None,
        },
        Datatype::Uint8 => out.push(int::<u8>(&v)?),
        Datatype::Int8 => out.extend(int::<i8>(&v)?.to_le_bytes()),
        Datatype::Uint16 => out.extend(int::<u16>(&v)?.to_le_bytes()),
        Datatype::Int16 => out.extend(int::<i16>(&v)?.to_le_bytes()),
        Datatype::Uint32 => out.extend(int::<u32>(&v)?.to_le_bytes()),
        Datatype::Int32 => out.extend(int::<i32>(&v)?.to_le_bytes()),
        Datatype::Uint64 => out.extend(int::<u64>(&v)?.to_le_bytes()),
        Datatype::Int64 => out.extend(int::<i64>(&v)?.to_le_bytes()),
        Datatype::Fp16 => {
            out.extend(finite(half::f16::from_f64(float(&v)?), half::f16::is_finite)?.to_le_bytes())
        }
        Datatype::Bf16 => {
            out.extend(finite(half::bf16::from_f64(float(&v)?), half::bf16::is_finite)?.to_le_bytes())
        }
        Datatype::Fp32 => out.extend(finite(float(&v)? as f32, f32::is_finite)?.to_le_bytes()),
        Datatype::Fp64 => out.extend(float(&v)?.to_le_bytes()),
        Datatype::Bytes => match v {
            Element::Str(s) => push_bytes_element(out, s.as_bytes()),
            _ => return None,
        },
    }
    Some(())
}
