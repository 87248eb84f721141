//! convert: tensors between the server's form and the plugin world's (`wit/plugin.wit`).

use super::bindings::wasmserve::plugin::types as wit;
use crate::tensor::{Datatype, Tensor};

/// One list, both directions: OIP datatype <-> WIT datatype.
macro_rules! datatypes {
    ($($v:ident),*) => {
        fn to_wit_datatype(d: Datatype) -> wit::Datatype {
            match d { $(Datatype::$v => wit::Datatype::$v),* }
        }
        fn from_wit_datatype(d: wit::Datatype) -> Datatype {
            match d { $(wit::Datatype::$v => Datatype::$v),* }
        }
    };
}
datatypes!(Bool, Uint8, Uint16, Uint32, Uint64, Int8, Int16, Int32, Int64, Fp16, Bf16, Fp32, Fp64, Bytes);

pub(super) fn to_wit(t: Tensor) -> wit::Tensor {
    wit::Tensor { name: t.name, datatype: to_wit_datatype(t.datatype), shape: t.shape, data: t.data }
}

pub(super) fn from_wit(t: wit::Tensor) -> Tensor {
    Tensor { name: t.name, datatype: from_wit_datatype(t.datatype), shape: t.shape, data: t.data }
}
