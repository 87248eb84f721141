//! Reading and building the WIT tensors: typed views over their bytes, BYTES elements, and
//! constructors that pick the datatype from the element type.

use crate::{Datatype, PluginError, Tensor, internal, invalid};
use std::marker::PhantomData;

/// Numeric element types a tensor can be read as or built from.
pub trait Element: Copy + 'static {
    /// The datatype of a tensor holding this element type.
    const DATATYPE: Datatype;
    /// Size of one element in bytes.
    const SIZE: usize;
    /// Read one element from `SIZE` little-endian bytes.
    fn read(bytes: &[u8]) -> Self;
    /// Append this element's little-endian bytes.
    fn write(self, out: &mut Vec<u8>);
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => {$(
        impl Element for $t {
            const DATATYPE: Datatype = Datatype::$d;
            const SIZE: usize = size_of::<$t>();
            fn read(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("chunk of SIZE bytes"))
            }
            fn write(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
element!(
    u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64,
    i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64,
    f32 => Fp32, f64 => Fp64
);

/// A tensor's elements as `T`, read in place (the bytes need no alignment).
#[derive(Clone, Copy, Debug)]
pub struct View<'a, T> {
    shape: &'a [i64],
    data: &'a [u8],
    element: PhantomData<T>,
}

impl<'a, T: Element> View<'a, T> {
    /// The dimensions.
    pub fn shape(&self) -> &'a [i64] {
        self.shape
    }

    /// How many elements.
    pub fn len(&self) -> usize {
        self.data.len() / T::SIZE
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Element `i` in row-major order. Panics past the end, like a slice.
    pub fn get(&self, i: usize) -> T {
        T::read(&self.data[i * T::SIZE..][..T::SIZE])
    }

    /// Every element in row-major order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = T> + 'a {
        self.data.chunks_exact(T::SIZE).map(T::read)
    }

    /// The elements, copied out.
    pub fn to_vec(&self) -> Vec<T> {
        self.iter().collect()
    }

    /// The sub-tensors along the first dimension (a batch's rows), each with the remaining
    /// dimensions. A scalar is one row.
    pub fn rows(self) -> impl ExactSizeIterator<Item = View<'a, T>> + 'a {
        let data = self.data;
        let (n, inner) = match self.shape {
            [] => (1, &[][..]),
            [n, inner @ ..] => (usize::try_from(*n).unwrap_or(0), inner),
        };
        let row_bytes = data.len().checked_div(n).unwrap_or(0);
        (0..n).map(move |i| View {
            shape: inner,
            data: &data[i * row_bytes..][..row_bytes],
            element: PhantomData,
        })
    }
}

impl Tensor {
    /// A numeric tensor; the datatype follows from `T`.
    pub fn new<T: Element>(name: &str, shape: impl Into<Vec<i64>>, values: &[T]) -> Tensor {
        let mut data = Vec::with_capacity(values.len() * T::SIZE);
        for &v in values {
            v.write(&mut data);
        }
        Tensor { name: name.into(), datatype: T::DATATYPE, shape: shape.into(), data }
    }

    /// A BYTES tensor from its elements (strings or byte strings).
    pub fn bytes<E: AsRef<[u8]>>(
        name: &str,
        shape: impl Into<Vec<i64>>,
        elements: impl IntoIterator<Item = E>,
    ) -> Tensor {
        let mut data = Vec::new();
        for element in elements {
            crate::wire::push(&mut data, element.as_ref());
        }
        Tensor { name: name.into(), datatype: Datatype::Bytes, shape: shape.into(), data }
    }

    /// The elements as `T`, checked against the datatype and the shape: an internal error
    /// when they disagree (the host has already checked clients' inputs against the config).
    pub fn view<T: Element>(&self) -> Result<View<'_, T>, PluginError> {
        if self.datatype != T::DATATYPE {
            return Err(internal(format!(
                "tensor '{}' is {:?}, read as {:?}",
                self.name,
                self.datatype,
                T::DATATYPE
            )));
        }
        let elements = self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?));
        if elements.and_then(|n| n.checked_mul(T::SIZE)) != Some(self.data.len()) {
            return Err(internal(format!(
                "tensor '{}' has {} bytes of data for shape {:?}",
                self.name,
                self.data.len(),
                self.shape
            )));
        }
        Ok(View { shape: &self.shape, data: &self.data, element: PhantomData })
    }

    /// A BYTES tensor's elements.
    pub fn elements(&self) -> Result<Vec<&[u8]>, PluginError> {
        if self.datatype != Datatype::Bytes {
            return Err(invalid(format!("tensor '{}' must be BYTES, got {:?}", self.name, self.datatype)));
        }
        crate::wire::split(&self.data)
            .ok_or_else(|| invalid(format!("tensor '{}': malformed BYTES data", self.name)))
    }

    /// A BYTES tensor's elements as UTF-8 text: an invalid-input error naming the element
    /// that is not.
    pub fn texts(&self) -> Result<Vec<&str>, PluginError> {
        self.elements()?
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                std::str::from_utf8(e)
                    .map_err(|err| invalid(format!("{}[{i}] is not UTF-8: {err}", self.name)))
            })
            .collect()
    }

    /// The first dimension (a batch's size); 1 for a scalar.
    pub fn rows(&self) -> usize {
        self.shape.first().map_or(1, |&d| usize::try_from(d).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_through_a_view_and_split_into_rows() {
        let t = Tensor::new("x", [2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(t.datatype, Datatype::Fp32);
        let v = t.view::<f32>().unwrap();
        assert_eq!(v.to_vec(), [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let rows: Vec<Vec<f32>> = v.rows().map(|r| r.to_vec()).collect();
        assert_eq!(rows, [vec![1.0, 2.0, 3.0], vec![4.0, 5.0, 6.0]]);
        assert_eq!(v.rows().next().unwrap().shape(), [3]);
        assert!(t.view::<i32>().is_err(), "wrong element type");
        let short = Tensor { data: vec![0; 20], ..t };
        assert!(short.view::<f32>().unwrap_err_message().contains("20 bytes"));
    }

    #[test]
    fn bytes_elements_round_trip_and_malformed_data_is_refused() {
        let t = Tensor::bytes("s", [2], ["héllo", ""]);
        assert_eq!(t.texts().unwrap(), ["héllo", ""]);
        let truncated = Tensor { data: t.data[..t.data.len() - 1].to_vec(), ..t.clone() };
        assert!(truncated.elements().is_err());
        let trailing = Tensor { data: [&t.data[..], &[1, 0]].concat(), ..t.clone() };
        assert!(trailing.elements().is_err(), "two stray bytes after the last element");
        let latin1 = Tensor::bytes("s", [1], [&[0xe9u8][..]]);
        assert!(latin1.texts().unwrap_err_message().contains("s[0] is not UTF-8"));
    }

    trait Message {
        fn unwrap_err_message(self) -> String;
    }
    impl<T: std::fmt::Debug> Message for Result<T, PluginError> {
        fn unwrap_err_message(self) -> String {
            match self.unwrap_err() {
                PluginError::InvalidInput(m) | PluginError::Internal(m) => m,
            }
        }
    }
}
