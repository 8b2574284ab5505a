//! Cached objects' bodies, kept as JSON compressed against a dictionary of their kind.
//!
//! The requests and assignments caches hold every object of their kind, for the life of the
//! process. As typed Rust values a request took 2.6 KB of heap and an assignment 1.7 KB (a
//! struct of mostly empty `Option`s, and a small allocation per string, vector and map), so
//! at 10,000 of each the two caches alone were 43 MB. Only a few fields of the objects that
//! are not being reconciled are ever read (by the scans that find a namespace's requests for a
//! RoleSetting, say): those stay typed, next to the body (see `cached`). The whole object is
//! needed only by the reconcile of that one object, which decodes it once per pass.
//!
//! zstd with a dictionary that looks like a typical object of the kind (every field name, and
//! the values kube-pim itself writes): what is left to store is mostly the names, uids and
//! times that are the object's own. Decoding costs microseconds, once per reconcile.

use std::{cell::RefCell, sync::LazyLock};

use serde::{Serialize, de::DeserializeOwned};

use crate::error::Error;

/// Compression level: the dictionary does most of the work; higher levels gain a few bytes
/// for many times the CPU.
const LEVEL: i32 = 3;

/// A kind's dictionary, prepared once for both directions.
pub struct Dictionary {
    /// The kind, for error messages.
    kind: &'static str,
    encoder: zstd::dict::EncoderDictionary<'static>,
    decoder: zstd::dict::DecoderDictionary<'static>,
}

impl Dictionary {
    /// A raw-content dictionary: `sample` is a typical object of `kind` as JSON.
    pub fn new(kind: &'static str, sample: &serde_json::Value) -> Self {
        let bytes = serde_json::to_vec(sample).expect("a JSON value serializes");
        Self {
            kind,
            encoder: zstd::dict::EncoderDictionary::copy(&bytes, LEVEL),
            decoder: zstd::dict::DecoderDictionary::copy(&bytes),
        }
    }
}

/// A compression and a decompression context for one dictionary.
type Codec = (
    usize,
    zstd::bulk::Compressor<'static>,
    zstd::bulk::Decompressor<'static>,
);

thread_local! {
    /// Per thread, a context of each direction per dictionary (by its address), kept: making
    /// them for every object was most of the cost of packing or unpacking one (20 µs of 23).
    static CODECS: RefCell<Vec<Codec>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's contexts for `dict`.
fn with_codec<R>(
    dict: &'static Dictionary,
    f: impl FnOnce(
        &mut zstd::bulk::Compressor<'static>,
        &mut zstd::bulk::Decompressor<'static>,
    ) -> std::io::Result<R>,
) -> std::io::Result<R> {
    let key = std::ptr::from_ref(dict) as usize;
    CODECS.with_borrow_mut(|codecs| {
        let i = match codecs.iter().position(|(k, _, _)| *k == key) {
            Some(i) => i,
            None => {
                codecs.push((
                    key,
                    zstd::bulk::Compressor::with_prepared_dictionary(&dict.encoder)?,
                    zstd::bulk::Decompressor::with_prepared_dictionary(&dict.decoder)?,
                ));
                codecs.len() - 1
            }
        };
        let (_, c, d) = &mut codecs[i];
        f(c, d)
    })
}

/// One object's JSON, compressed against its kind's [`Dictionary`].
#[derive(Clone, PartialEq, Eq)]
pub struct Packed {
    bytes: Box<[u8]>,
    /// The JSON's length (0: `bytes` is the JSON itself, not compressed).
    len: u32,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} of {} bytes)", self.bytes.len(), self.len)
    }
}

impl Packed {
    /// `value` as JSON, compressed.
    pub fn pack<T: Serialize>(value: &T, dict: &'static LazyLock<Dictionary>) -> Self {
        let json = serde_json::to_vec(value).expect("kube-pim's types serialize to JSON");
        let compressed = with_codec(LazyLock::force(dict), |c, _| c.compress(&json));
        match (compressed, u32::try_from(json.len())) {
            (Ok(bytes), Ok(len)) if len > 0 => Self {
                bytes: bytes.into_boxed_slice(),
                len,
            },
            // Only when zstd cannot allocate its context: kept as it is, still correct.
            _ => Self {
                bytes: json.into_boxed_slice(),
                len: 0,
            },
        }
    }

    /// The value back.
    pub fn unpack<T: DeserializeOwned>(
        &self,
        dict: &'static LazyLock<Dictionary>,
    ) -> Result<T, Error> {
        let fail = |what: String| {
            Error::Cache(format!(
                "a cached {} does not decode ({what}); this is a bug in kube-pim: restart the operator to rebuild its caches, and report it",
                dict.kind
            ))
        };
        let json = if self.len == 0 {
            std::borrow::Cow::Borrowed(&*self.bytes)
        } else {
            std::borrow::Cow::Owned(
                with_codec(LazyLock::force(dict), |_, d| {
                    d.decompress(&self.bytes, self.len as usize)
                })
                .map_err(|e| fail(e.to_string()))?,
            )
        };
        serde_json::from_slice(&json).map_err(|e| fail(e.to_string()))
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// A body that does not decode (tests of what happens then).
    #[cfg(test)]
    pub fn undecodable() -> Self {
        Self {
            bytes: b"not zstd".to_vec().into_boxed_slice(),
            len: 40,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static DICT: LazyLock<Dictionary> = LazyLock::new(|| {
        Dictionary::new(
            "Thing",
            &serde_json::json!({"metadata": {"name": "x", "namespace": "y"}, "spec": {"a": "b"}}),
        )
    });

    #[test]
    fn a_value_comes_back_as_it_went_in_and_smaller() {
        let v = serde_json::json!({"metadata": {"name": "thing-1", "namespace": "team"},
            "spec": {"a": "b", "list": ["one", "two", "three", "one", "two", "three"]}});
        let p = Packed::pack(&v, &DICT);
        assert!(p.len > 0, "compressed");
        assert!(p.size() < serde_json::to_vec(&v).unwrap().len());
        assert_eq!(p.unpack::<serde_json::Value>(&DICT).unwrap(), v);
    }

    #[test]
    fn a_body_that_does_not_decode_is_an_error_that_says_so() {
        let p = Packed::undecodable();
        let e = p
            .unpack::<serde_json::Value>(&DICT)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cached Thing does not decode"), "{e}");
        let raw = Packed {
            bytes: b"{\"a\": 1}".to_vec().into_boxed_slice(),
            len: 0,
        };
        assert_eq!(
            raw.unpack::<serde_json::Value>(&DICT).unwrap(),
            serde_json::json!({"a": 1})
        );
    }
}
