//! json: the JSON form of a request (and the JSON part of the binary extension), parsed with
//! every list bounded as it is read and every large value left as text in the body.

use super::*;
use serde::de::{SeqAccess, Visitor};

// The request as parsed: every list bounded as it is read and every value that could be
// large (tensor data, parameter values) left as text in the body, so what a request makes the
// server hold stays a small multiple of its body, whatever its shape.
#[derive(Deserialize)]
pub(super) struct RequestJson<'a> {
    pub(super) id: Option<String>,
    #[serde(default, borrow)]
    pub(super) parameters: Parameters<'a>,
    #[serde(borrow, deserialize_with = "inputs")]
    pub(super) inputs: Vec<InputJson<'a>>,
    #[serde(default, borrow, deserialize_with = "outputs")]
    pub(super) outputs: Vec<OutputJson<'a>>,
}

#[derive(Deserialize)]
pub(super) struct InputJson<'a> {
    pub(super) name: String,
    #[serde(deserialize_with = "shape")]
    pub(super) shape: Vec<i64>,
    pub(super) datatype: String,
    #[serde(default, borrow)]
    pub(super) parameters: Parameters<'a>,
    /// Left as text until the datatype is known (it may come after `data`), then decoded
    /// straight into bytes: no JSON value per element.
    #[serde(borrow)]
    pub(super) data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub(super) struct OutputJson<'a> {
    pub(super) name: String,
    #[serde(default, borrow)]
    pub(super) parameters: Parameters<'a>,
}

pub(super) fn inputs<'de, D: de::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<InputJson<'de>>, D::Error> {
    d.deserialize_seq(AtMost { max: MAX_TENSORS, what: "inputs", items: std::marker::PhantomData })
}

pub(super) fn outputs<'de, D: de::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<OutputJson<'de>>, D::Error> {
    d.deserialize_seq(AtMost { max: MAX_TENSORS, what: "outputs", items: std::marker::PhantomData })
}

pub(super) fn shape<'de, D: de::Deserializer<'de>>(d: D) -> std::result::Result<Vec<i64>, D::Error> {
    d.deserialize_seq(AtMost { max: MAX_RANK, what: "dimensions", items: std::marker::PhantomData })
}

/// A JSON array of at most `max` items, refused as soon as it holds more.
pub(super) struct AtMost<T> {
    pub(super) max: usize,
    pub(super) what: &'static str,
    pub(super) items: std::marker::PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for AtMost<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "an array of at most {} {}", self.max, self.what)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Vec<T>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            if items.len() == self.max {
                return Err(de::Error::custom(too_many(self.max, self.what)));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// `parameters`: at most `MAX_PARAMETERS`, each named once, each a string, number or boolean
/// (as the protocol has them), kept as their JSON text.
#[derive(Default)]
pub(super) struct Parameters<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Parameters<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Entries<'a> {
            type Value = Parameters<'a>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "an object of at most {MAX_PARAMETERS} parameters")
            }

            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut entries: Vec<(String, &'a RawValue)> = Vec::new();
                while let Some((name, value)) = map.next_entry::<String, &'a RawValue>()? {
                    if entries.len() == MAX_PARAMETERS {
                        return Err(de::Error::custom(too_many(MAX_PARAMETERS, "parameters")));
                    }
                    if entries.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!("parameter '{name}' is given twice")));
                    }
                    if !value
                        .get()
                        .starts_with(['"', 't', 'f', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])
                    {
                        return Err(de::Error::custom(format!(
                            "parameter '{name}' must be a string, a number or a boolean"
                        )));
                    }
                    entries.push((name, value));
                }
                Ok(Parameters(entries))
            }
        }
        d.deserialize_map(Entries(std::marker::PhantomData))
    }
}

/// Parameters given as a JSON object elsewhere (a warm-up request's, in model.toml), checked
/// and rendered as a request's are.
pub fn parameters(json: &str) -> Result<Vec<(String, String)>> {
    let parameters: Parameters =
        serde_json::from_str(json).map_err(|e| Error::bad_request(format!("parameters: {e}")))?;
    Ok(parameters.render())
}

impl Parameters<'_> {
    pub(super) fn get(&self, name: &str) -> Option<&RawValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// A boolean parameter, if given.
    pub(super) fn flag(&self, name: &str) -> Result<Option<bool>> {
        self.get(name)
            .map(|v| {
                serde_json::from_str(v.get())
                    .map_err(|_| Error::bad_request(format!("parameter '{name}' must be true or false")))
            })
            .transpose()
    }

    /// As the plugin gets them: strings as they are, numbers and booleans as written.
    pub(super) fn render(self) -> Vec<(String, String)> {
        self.0
            .into_iter()
            .map(|(name, v)| {
                let text = serde_json::from_str::<String>(v.get()).unwrap_or_else(|_| v.get().to_string());
                (name, text)
            })
            .collect()
    }
}

pub(super) fn from_json(json: &[u8], mut binary: &[u8]) -> Result<InferRequest> {
    let request: RequestJson = serde_json::from_slice(json)
        .map_err(|e| Error::bad_request(format!("malformed inference request: {e}")))?;
    let mut inputs = Vec::with_capacity(request.inputs.len());
    for input in request.inputs {
        let datatype = datatype(&input.name, &input.datatype)?;
        let count = element_count(&input.name, &input.shape)?;
        let data = match (input.parameters.get("binary_data_size"), input.data) {
            (Some(size), None) => {
                let size = serde_json::from_str::<u64>(size.get()).map_err(|_| {
                    Error::bad_request(format!(
                        "input '{}': binary_data_size must be a byte count",
                        input.name
                    ))
                })? as usize;
                if size > binary.len() {
                    return Err(Error::bad_request(format!(
                        "input '{}': binary_data_size is {size} but only {} bytes of binary data remain",
                        input.name,
                        binary.len()
                    )));
                }
                let (data, rest) = binary.split_at(size);
                binary = rest;
                data.to_vec()
            }
            (None, Some(data)) => json_data(&input.name, datatype, count, data)?,
            (Some(_), Some(_)) => {
                return Err(Error::bad_request(format!(
                    "input '{}' has both binary_data_size and data",
                    input.name
                )));
            }
            (None, None) => {
                return Err(Error::bad_request(format!("input '{}' has no data", input.name)));
            }
        };
        let tensor = Tensor { name: input.name, datatype, shape: input.shape, data };
        tensor.validate()?;
        inputs.push(tensor);
    }
    if !binary.is_empty() {
        return Err(Error::bad_request(format!(
            "{} bytes of binary data follow the inputs that no input's binary_data_size accounts for",
            binary.len()
        )));
    }
    let binary_outputs = request.parameters.flag("binary_data_output")?.unwrap_or(false);
    let outputs = request
        .outputs
        .into_iter()
        .map(|o| Ok(RequestedOutput { binary: o.parameters.flag("binary_data")?, name: o.name }))
        .collect::<Result<_>>()?;
    Ok(InferRequest { id: request.id, params: request.parameters.render(), inputs, outputs, binary_outputs })
}
