//! The GGUF file format: header, typed metadata, tensor table, and reading one tensor's bytes by offset.
//!
//! Parsing is defensive, because a header may come from anywhere (a peer, a hub, a file a user names): every
//! length and count read from the file is checked against what the rest of the file, at the size it claims, could
//! hold, and against fixed caps ([`MAX_HEADER_BYTES`], [`MAX_STRING_BYTES`], [`MAX_VALUES`], [`MAX_TENSORS`],
//! [`MAX_SPLIT_PARTS`]); containers grow as their items are read, never by a count from the file; sizes computed
//! from dimensions use checked arithmetic. So a truncated, corrupt or hostile header gives a [`GgufError`] instead
//! of a huge allocation, an overflow or a panic. This module knows nothing of models or tensors beyond their byte
//! layout; turning bytes into candle tensors is `weights.rs`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// GGUF magic number: the bytes "GGUF" read as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// The longest header (metadata and tensor table) read; real ones are a few MiB, mostly the vocabulary.
pub const MAX_HEADER_BYTES: u64 = 256 << 20;
/// The longest string in a header; the longest real ones are chat templates and embedded tokenizer JSON.
pub const MAX_STRING_BYTES: u64 = 64 << 20;
/// Metadata values in one header, array items included (a 256k-token vocabulary with its scores, types and merges
/// is about 1.3 million); each takes 32 bytes of memory.
pub const MAX_VALUES: u64 = 1 << 24;
/// Tensors in one file; real models have a few thousand.
pub const MAX_TENSORS: u64 = 1 << 18;
/// Files a split model may have (`split.count`, `…-of-NNNNN.gguf`); gguf-split makes a few dozen at most.
pub const MAX_SPLIT_PARTS: usize = 1024;
/// Nesting of arrays in metadata: an array of arrays of arrays at most.
const MAX_ARRAY_DEPTH: u32 = 3;

/// What can go wrong reading a GGUF file; each message names the file and what to check.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open model file {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a GGUF file (it starts with {magic:02x?}, a GGUF file starts with \"GGUF\")")]
    NotGguf { path: PathBuf, magic: [u8; 4] },
    #[error("{path}: GGUF version {version} is not supported (versions 2 and 3 are)")]
    Version { path: PathBuf, version: u32 },
    #[error("{path} is truncated or corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
    #[error("{path} is truncated: tensor data needs {needed} bytes, the file has {actual}")]
    Truncated { path: PathBuf, needed: u64, actual: u64 },
    #[error("{path}: tensor {tensor} has quantization type {kind}, which this engine does not support (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4)")]
    UnsupportedType { path: PathBuf, tensor: String, kind: String },
    #[error("{path}: I/O error reading {what}: {source}")]
    Io { path: PathBuf, what: String, source: std::io::Error },
}

impl GgufError {
    /// Whether parsing ran out of bytes: the reader ended before the header did.
    pub fn is_short_read(&self) -> bool {
        matches!(self, GgufError::Io { source, .. } if source.kind() == std::io::ErrorKind::UnexpectedEof)
    }
}

type Result<T> = std::result::Result<T, GgufError>;

/// ggml's tensor element types that this engine can load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorType {
    F32,
    F16,
    Bf16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// 32 values: an f16 scale and 4-bit indices into a 16-entry non-linear table.
    Iq4Nl,
    /// 256 values: an f16 scale, eight 6-bit sub-block scales, 4-bit indices into IQ4_NL's table.
    Iq4Xs,
    /// 32 values: an E8M0 shared exponent and 4-bit FP4 (E2M1) codes.
    Mxfp4,
}

impl TensorType {
    /// The type with ggml's numeric id, or the id's name when it is a type we do not read.
    pub fn from_ggml_id(id: u32) -> std::result::Result<Self, String> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            20 => Self::Iq4Nl,
            23 => Self::Iq4Xs,
            30 => Self::Bf16,
            39 => Self::Mxfp4,
            other => {
                let name = match other {
                    // ggml's 8-bit activation formats: candle cannot load them, and model files do not use them.
                    9 => "Q8_1",
                    15 => "Q8_K",
                    16 => "IQ2_XXS",
                    17 => "IQ2_XS",
                    18 => "IQ3_XXS",
                    19 => "IQ1_S",
                    21 => "IQ3_S",
                    22 => "IQ2_S",
                    24 => "I8",
                    25 => "I16",
                    26 => "I32",
                    27 => "I64",
                    28 => "F64",
                    29 => "IQ1_M",
                    34 => "TQ1_0",
                    35 => "TQ2_0",
                    _ => return Err(format!("unknown type id {other}")),
                };
                return Err(format!("{name} (id {other})"));
            }
        })
    }

    /// (elements per block, bytes per block)
    pub fn block_layout(self) -> (u64, u64) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::Bf16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::Q2K => (256, 84),
            Self::Q3K => (256, 110),
            Self::Q4K => (256, 144),
            Self::Q5K => (256, 176),
            Self::Q6K => (256, 210),
            Self::Iq4Nl => (32, 18),
            Self::Iq4Xs => (256, 136),
            Self::Mxfp4 => (32, 17),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
            Self::Iq4Nl => "IQ4_NL",
            Self::Iq4Xs => "IQ4_XS",
            Self::Mxfp4 => "MXFP4",
        }
    }
}

/// A typed metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, when it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(v) => Some(v),
            _ => None,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F32(_) => "f32",
            Value::F64(_) => "f64",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (the contiguous dimension).
    pub dims: Vec<u64>,
    pub kind: TensorType,
    /// Offset of the tensor's data from the start of the file.
    /// Which part of a multi-part model holds it (0 for a single file).
    pub part: usize,
    /// Byte offset within that part's file.
    pub offset: u64,
    pub size: u64,
}

impl TensorInfo {
    /// Elements in the tensor (saturating: a parsed header's tensors have fewer than 2^48).
    pub fn elements(&self) -> u64 {
        self.dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).unwrap_or(u64::MAX)
    }
}

/// A parsed GGUF file: metadata and tensor table; tensor data stays on disk until [`Gguf::read_tensor`].
/// A GGUF header: metadata and tensor table, parsed from the first bytes of a file.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    /// Tensors, with offsets from the start of the file.
    pub tensors: BTreeMap<String, TensorInfo>,
    /// Where the tensor data starts: the header's length, aligned.
    pub data_start: u64,
}

impl GgufHeader {
    /// Parses the header of a GGUF file of `file_size` bytes from `reader`, which yields the file from its start;
    /// `path` names it in errors. The reader may hold only a prefix of the file: when it ends before the header
    /// does, the error is one for which [`GgufError::is_short_read`] holds, and a longer prefix may parse.
    pub fn parse(reader: impl Read, file_size: u64, path: &Path) -> Result<Self> {
        let mut r = HeaderReader { inner: reader, remaining: file_size, consumed: 0, values: 0, path };
        if file_size < 4 {
            let mut magic = [0u8; 4];
            let _ = r.inner.read(&mut magic);
            return Err(GgufError::NotGguf { path: path.to_path_buf(), magic });
        }
        let magic = r.bytes::<4>()?;
        if u32::from_le_bytes(magic) != MAGIC {
            return Err(GgufError::NotGguf { path: path.to_path_buf(), magic });
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version { path: path.to_path_buf(), version });
        }
        // Each tensor entry takes at least 32 bytes (name length, one dimension, type, offset), each metadata
        // entry at least 13 (key length, type, a one-byte value).
        let n_tensors = r.count(32, MAX_TENSORS, "the tensor count")?;
        let n_kv = r.count(13, MAX_VALUES, "the metadata count")?;

        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("a metadata key")?;
            let kind = r.u32()?;
            let value = r.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(r.corrupt(format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        check_split(&metadata).map_err(|what| r.corrupt(what))?;

        // Grown as entries are read: the count is only checked against what the file could hold.
        let mut infos = Vec::new();
        for _ in 0..n_tensors {
            let name = r.string("a tensor name")?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(r.corrupt(format!("tensor {name} has {n_dims} dimensions (1 to 4 expected)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let kind_id = r.u32()?;
            let rel_offset = r.u64()?;
            infos.push((name, dims, kind_id, rel_offset));
        }
        let header_end = r.consumed;
        let data_start = header_end
            .checked_next_multiple_of(alignment)
            .ok_or_else(|| r.corrupt(format!("general.alignment {alignment} puts the tensor data past any file")))?;

        let mut tensors = BTreeMap::new();
        let mut needed = data_start;
        for (name, dims, kind_id, rel_offset) in infos {
            let kind = TensorType::from_ggml_id(kind_id).map_err(|kind| GgufError::UnsupportedType {
                path: path.to_path_buf(),
                tensor: name.clone(),
                kind,
            })?;
            let (block, block_bytes) = kind.block_layout();
            let elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let Some(elements) = elements.filter(|&e| e < (1 << 48)) else {
                return Err(r.corrupt(format!("tensor {name} has impossible dimensions {dims:?}")));
            };
            if dims[0] % block != 0 {
                return Err(r.corrupt(format!(
                    "tensor {name}: row length {} is not a multiple of the {} block size {block}",
                    dims[0],
                    kind.name()
                )));
            }
            let size = (elements / block)
                .checked_mul(block_bytes)
                .ok_or_else(|| r.corrupt(format!("tensor {name} has impossible dimensions {dims:?}")))?;
            let (offset, end) = data_start
                .checked_add(rel_offset)
                .and_then(|o| Some((o, o.checked_add(size)?)))
                .ok_or_else(|| r.corrupt(format!("tensor {name} has an impossible offset {rel_offset}")))?;
            needed = needed.max(end);
            if tensors.contains_key(&name) {
                return Err(r.corrupt(format!("tensor {name} appears twice")));
            }
            tensors.insert(name.clone(), TensorInfo { name, dims, kind, part: 0, offset, size });
        }
        if needed > file_size {
            return Err(GgufError::Truncated { path: path.to_path_buf(), needed, actual: file_size });
        }
        Ok(Self { version, metadata, tensors, data_start })
    }

    /// How many files the model is split in (llama.cpp's `gguf-split` metadata `split.count`; 1 if not split).
    /// A parsed header's count is at most [`MAX_SPLIT_PARTS`].
    pub fn split_count(&self) -> usize {
        split_count(&self.metadata)
    }

    /// This file's index (0-based) among the parts of a split model (`split.no`).
    pub fn split_index(&self) -> usize {
        self.metadata.get("split.no").and_then(Value::as_u64).map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
    }
}

fn split_count(metadata: &BTreeMap<String, Value>) -> usize {
    metadata.get("split.count").and_then(Value::as_u64).map_or(1, |n| usize::try_from(n.max(1)).unwrap_or(usize::MAX))
}

/// Checks `split.count` and `split.no`: a header claiming more parts than [`MAX_SPLIT_PARTS`], or a part
/// outside its count, is corrupt.
fn check_split(metadata: &BTreeMap<String, Value>) -> std::result::Result<(), String> {
    let count = match metadata.get("split.count") {
        None => 1,
        Some(v) => v.as_u64().ok_or_else(|| format!("split.count is {v:?}, not a count of files"))?,
    };
    if count > MAX_SPLIT_PARTS as u64 {
        return Err(format!(
            "split.count says the model has {count} parts; a split model has at most {MAX_SPLIT_PARTS}"
        ));
    }
    if let Some(v) = metadata.get("split.no") {
        match v.as_u64() {
            Some(no) if no < count.max(1) => {}
            _ => return Err(format!("split.no {v:?} is not a part of a model of {} parts", count.max(1))),
        }
    }
    Ok(())
}

/// The file names of all `count` parts of a split model whose first part is `first`
/// (`m-00001-of-00003.gguf` gives `m-00001-of-00003.gguf`, `m-00002-of-00003.gguf`, `m-00003-of-00003.gguf`), or
/// `None` when `first` is not named like a first part of `count`, or `count` is over [`MAX_SPLIT_PARTS`].
pub fn split_part_names(first: &str, count: usize) -> Option<Vec<String>> {
    if count > MAX_SPLIT_PARTS {
        return None;
    }
    let stem = first.strip_suffix(".gguf")?;
    let (rest, total) = stem.rsplit_once("-of-")?;
    let (prefix, index) = rest.rsplit_once('-')?;
    if index.parse::<usize>().ok()? != 1 || total.parse::<usize>().ok()? != count {
        return None;
    }
    let width = index.len();
    Some((1..=count).map(|i| format!("{prefix}-{i:0width$}-of-{total}.gguf")).collect())
}

/// An open GGUF model: its header and the file (or, for a split model, the files) holding its tensor data.
#[derive(Debug)]
pub struct Gguf {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    /// Bytes in all its files together.
    pub file_size: u64,
    files: Vec<File>,
}

struct HeaderReader<'a, R> {
    inner: R,
    /// Bytes of the file, at its claimed size, after what was read.
    remaining: u64,
    /// Bytes of the header read so far.
    consumed: u64,
    /// Metadata values read so far, array items included.
    values: u64,
    path: &'a Path,
}

impl<R: Read> HeaderReader<'_, R> {
    fn corrupt(&self, what: impl Into<String>) -> GgufError {
        GgufError::Corrupt { path: self.path.to_path_buf(), what: what.into() }
    }

    /// Accounts for `n` more bytes of header: within the claimed file and within [`MAX_HEADER_BYTES`].
    fn take(&mut self, n: u64) -> Result<()> {
        if self.remaining < n {
            return Err(self.corrupt("the header ends before its last field"));
        }
        if self.consumed + n > MAX_HEADER_BYTES {
            return Err(self
                .corrupt(format!("the header is longer than {} MiB, more than any model's", MAX_HEADER_BYTES >> 20)));
        }
        self.remaining -= n;
        self.consumed += n;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        self.take(N as u64)?;
        let mut buf = [0u8; N];
        self.inner.read_exact(&mut buf).map_err(|e| GgufError::Io {
            path: self.path.to_path_buf(),
            what: "the header".into(),
            source: e,
        })?;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    /// A count of items that each take at least `min_item_bytes`, checked against what the rest of the file could
    /// hold and against `cap`.
    fn count(&mut self, min_item_bytes: u64, cap: u64, what: &str) -> Result<u64> {
        let n = self.u64()?;
        if n.saturating_mul(min_item_bytes) > self.remaining {
            return Err(self.corrupt(format!("{what} claims {n} entries, more than the file can hold")));
        }
        if n > cap {
            return Err(self.corrupt(format!("{what} claims {n} entries, more than the {cap} a header may have")));
        }
        Ok(n)
    }

    /// A length-prefixed UTF-8 string, read in pieces so that a length the bytes do not back allocates nothing.
    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64()?;
        if len > self.remaining {
            return Err(self.corrupt(format!("{what} claims {len} bytes, more than the file can hold")));
        }
        if len > MAX_STRING_BYTES {
            return Err(self.corrupt(format!(
                "{what} claims {len} bytes, more than the {} MiB a header string may have",
                MAX_STRING_BYTES >> 20
            )));
        }
        self.take(len)?;
        let mut buf = Vec::new();
        let mut piece = [0u8; 8192];
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(piece.len());
            self.inner.read_exact(&mut piece[..n]).map_err(|e| GgufError::Io {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                source: e,
            })?;
            buf.extend_from_slice(&piece[..n]);
            left -= n;
        }
        String::from_utf8(buf).map_err(|_| self.corrupt(format!("{what} is not valid UTF-8")))
    }

    fn value(&mut self, kind: u32, key: &str, depth: u32) -> Result<Value> {
        self.values += 1;
        if self.values > MAX_VALUES {
            return Err(self.corrupt(format!("the metadata has more than {MAX_VALUES} values")));
        }
        Ok(match kind {
            0 => Value::U8(self.bytes::<1>()?[0]),
            1 => Value::I8(i8::from_le_bytes(self.bytes()?)),
            2 => Value::U16(u16::from_le_bytes(self.bytes()?)),
            3 => Value::I16(i16::from_le_bytes(self.bytes()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.bytes()?)),
            6 => Value::F32(f32::from_le_bytes(self.bytes()?)),
            7 => match self.bytes::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.corrupt(format!("metadata {key}: {b} is not a boolean"))),
            },
            8 => Value::String(self.string(&format!("metadata {key}"))?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.corrupt(format!("metadata {key}: arrays nested too deeply")));
                }
                let item_kind = self.u32()?;
                let min = match item_kind {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    other => return Err(self.corrupt(format!("metadata {key}: unknown array item type {other}"))),
                };
                let n = self.count(min, MAX_VALUES, &format!("metadata {key}"))?;
                // Grown as items are read; the count is only checked against what the file could hold.
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.value(item_kind, key, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.bytes()?)),
            12 => Value::F64(f64::from_le_bytes(self.bytes()?)),
            other => return Err(self.corrupt(format!("metadata {key}: unknown value type {other}"))),
        })
    }
}

impl Gguf {
    /// Opens a GGUF file: parses its header, metadata and tensor table and checks that every tensor's data lies
    /// inside the file; reads no tensor data. A split model opens from its first part (`…-00001-of-0000N.gguf`),
    /// with the other parts beside it, as one model.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let (header, file, size) = Self::open_part(path)?;
        let count = header.split_count();
        let GgufHeader { version, metadata, mut tensors, .. } = header;
        let mut files = vec![file];
        let mut file_size = size;
        if count > 1 {
            let corrupt = |what: String| GgufError::Corrupt { path: path.to_path_buf(), what };
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let names = split_part_names(name, count).ok_or_else(|| {
                corrupt(format!(
                    "it is one of the {count} parts of a split model; open the first part, named like \
                     model-00001-of-{count:05}.gguf"
                ))
            })?;
            for (i, part_name) in names.iter().enumerate().skip(1) {
                let part_path = path.with_file_name(part_name);
                let (part, file, size) = Self::open_part(&part_path)?;
                if part.split_index() != i {
                    let what =
                        format!("it says it is part {} of the model, its name part {}", part.split_index() + 1, i + 1);
                    return Err(GgufError::Corrupt { path: part_path, what });
                }
                for (name, mut info) in part.tensors {
                    info.part = i;
                    if tensors.insert(name.clone(), info).is_some() {
                        return Err(corrupt(format!("tensor {name} appears in two parts")));
                    }
                }
                files.push(file);
                file_size = file_size.saturating_add(size);
            }
        }
        Ok(Self { path: path.to_path_buf(), version, metadata, tensors, file_size, files })
    }

    fn open_part(path: &Path) -> Result<(GgufHeader, File, u64)> {
        let open_err = |e| GgufError::Open { path: path.to_path_buf(), source: e };
        let file = File::open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if meta.is_dir() {
            return Err(GgufError::Open {
                path: path.to_path_buf(),
                source: std::io::Error::other("it is a directory, not a file"),
            });
        }
        let size = meta.len();
        let header = GgufHeader::parse(BufReader::with_capacity(1 << 20, &file), size, path)?;
        Ok((header, file, size))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Reads one tensor's raw bytes from the file (by offset; nothing else is read).
    pub fn read_tensor(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        let len = usize::try_from(info.size).map_err(|_| GgufError::Corrupt {
            path: self.path.clone(),
            what: format!("tensor {} is too large for this machine", info.name),
        })?;
        let mut buf = vec![0u8; len];
        let file = self.files.get(info.part).ok_or_else(|| GgufError::Corrupt {
            path: self.path.clone(),
            what: format!("tensor {} names part {} of a model of {} parts", info.name, info.part + 1, self.files.len()),
        })?;
        file.read_exact_at(&mut buf, info.offset).map_err(|e| GgufError::Io {
            path: self.path.clone(),
            what: format!("tensor {}", info.name),
            source: e,
        })?;
        Ok(buf)
    }

    /// A description of a metadata value's type, for error messages.
    pub fn describe(&self, key: &str) -> String {
        match self.metadata.get(key) {
            None => "missing".to_string(),
            Some(v) => format!("a {}", v.type_name()),
        }
    }
}

#[cfg(test)]
impl Gguf {
    /// A model with this metadata and no tensors or files, for tests of what reads metadata.
    pub(crate) fn with_metadata(metadata: BTreeMap<String, Value>) -> Self {
        Self {
            path: PathBuf::from("test.gguf"),
            version: 3,
            metadata,
            tensors: BTreeMap::new(),
            file_size: 0,
            files: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Writes a minimal GGUF file: the given metadata and one F32 tensor of `n` elements.
    pub(crate) fn write_gguf(path: &Path, kv: &[(&str, Value)], n: u64, data: Option<&[u8]>) {
        write_gguf_tensor(path, kv, "t", n, data)
    }

    /// As `write_gguf`, with the tensor named `tensor`.
    fn write_gguf_tensor(path: &Path, kv: &[(&str, Value)], tensor: &str, n: u64, data: Option<&[u8]>) {
        fn put_str(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }
        fn put_val(out: &mut Vec<u8>, v: &Value) {
            match v {
                Value::U16(x) => out.extend(x.to_le_bytes()),
                Value::U32(x) => out.extend(x.to_le_bytes()),
                Value::U64(x) => out.extend(x.to_le_bytes()),
                Value::F32(x) => out.extend(x.to_le_bytes()),
                Value::String(s) => put_str(out, s),
                Value::Bool(b) => out.push(*b as u8),
                _ => unimplemented!("test writer"),
            }
        }
        fn kind(v: &Value) -> u32 {
            match v {
                Value::U16(_) => 2,
                Value::U32(_) => 4,
                Value::U64(_) => 10,
                Value::F32(_) => 6,
                Value::Bool(_) => 7,
                Value::String(_) => 8,
                _ => unimplemented!("test writer"),
            }
        }
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend(1u64.to_le_bytes());
        out.extend((kv.len() as u64).to_le_bytes());
        for (k, v) in kv {
            put_str(&mut out, k);
            out.extend(kind(v).to_le_bytes());
            put_val(&mut out, v);
        }
        put_str(&mut out, tensor);
        out.extend(1u32.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend(0u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        while out.len() % 32 != 0 {
            out.push(0);
        }
        match data {
            Some(d) => out.extend(d),
            None => out.extend(std::iter::repeat_n(0u8, n as usize * 4)),
        }
        File::create(path).unwrap().write_all(&out).unwrap();
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("exo-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn reads_metadata_and_tensor() {
        let p = tmp("ok.gguf");
        let data: Vec<u8> = (0..8u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        write_gguf(&p, &[("a.b", Value::U32(7)), ("s", Value::String("hi".into()))], 8, Some(&data));
        let g = Gguf::open(&p).unwrap();
        assert_eq!(g.get("a.b").and_then(Value::as_u64), Some(7));
        assert_eq!(g.get("s").and_then(Value::as_str), Some("hi"));
        let t = &g.tensors["t"];
        assert_eq!((t.kind, t.size, t.offset % 32), (TensorType::F32, 32, 0));
        assert_eq!(g.read_tensor(t).unwrap(), data);
    }

    #[test]
    fn truncated_data_is_reported() {
        let p = tmp("trunc.gguf");
        write_gguf(&p, &[], 1024, None);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
        let e = Gguf::open(&p).unwrap_err();
        assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    }

    #[test]
    fn truncated_header_is_reported() {
        let p = tmp("trunc-header.gguf");
        write_gguf(&p, &[("key", Value::String("value".into()))], 4, None);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..30]).unwrap();
        let e = Gguf::open(&p).unwrap_err();
        assert!(matches!(e, GgufError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn not_gguf_is_reported() {
        let p = tmp("text.gguf");
        std::fs::write(&p, b"hello, this is text").unwrap();
        assert!(matches!(Gguf::open(&p).unwrap_err(), GgufError::NotGguf { .. }));
        std::fs::write(&p, b"GG").unwrap();
        assert!(matches!(Gguf::open(&p).unwrap_err(), GgufError::NotGguf { .. }));
    }

    #[test]
    fn garbage_lengths_do_not_allocate() {
        let p = tmp("garbage.gguf");
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend(0u64.to_le_bytes());
        out.extend(1u64.to_le_bytes());
        out.extend(u64::MAX.to_le_bytes()); // key length
        out.extend([0u8; 64]);
        std::fs::write(&p, &out).unwrap();
        let e = Gguf::open(&p).unwrap_err();
        assert!(e.to_string().contains("more than the file can hold"), "{e}");
    }

    #[test]
    fn unsupported_type_is_named() {
        let p = tmp("iq.gguf");
        write_gguf(&p, &[], 256, None);
        let mut bytes = std::fs::read(&p).unwrap();
        // The tensor type id sits 12 bytes before the end of the tensor table (type u32, offset u64).
        let table_end = 4 + 4 + 8 + 8 + (8 + 1) + 4 + 8 + 4 + 8;
        bytes[table_end - 12..table_end - 8].copy_from_slice(&16u32.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let e = Gguf::open(&p).unwrap_err();
        assert!(e.to_string().contains("IQ2_XXS"), "{e}");
    }

    #[test]
    fn iq4_and_mxfp4_tensors_open_with_ggml_block_sizes() {
        let table_end = 4 + 4 + 8 + 8 + (8 + 1) + 4 + 8 + 4 + 8;
        for (id, kind, size) in
            [(20u32, TensorType::Iq4Nl, 8 * 18), (23, TensorType::Iq4Xs, 136), (39, TensorType::Mxfp4, 8 * 17)]
        {
            let p = tmp(&format!("type{id}.gguf"));
            write_gguf(&p, &[], 256, None);
            let mut bytes = std::fs::read(&p).unwrap();
            bytes[table_end - 12..table_end - 8].copy_from_slice(&id.to_le_bytes());
            std::fs::write(&p, &bytes).unwrap();
            let g = Gguf::open(&p).unwrap();
            let t = &g.tensors["t"];
            assert_eq!((t.kind, t.size), (kind, size), "{}", kind.name());
        }
    }

    #[test]
    fn split_models_open_as_one() {
        assert_eq!(
            split_part_names("m-00001-of-00003.gguf", 3).unwrap(),
            ["m-00001-of-00003.gguf", "m-00002-of-00003.gguf", "m-00003-of-00003.gguf"]
        );
        assert_eq!(split_part_names("m-00002-of-00003.gguf", 3), None);
        assert_eq!(split_part_names("m-00001-of-00003.gguf", 2), None);
        assert_eq!(split_part_names("m.gguf", 1), None);

        let dir = tmp("split");
        std::fs::create_dir_all(&dir).unwrap();
        let a: Vec<u8> = (0..8u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let b: Vec<u8> = (0..4u32).flat_map(|i| (10.0 + i as f32).to_le_bytes()).collect();
        let split = |no: u16| [("split.no", Value::U16(no)), ("split.count", Value::U16(2))];
        let first = dir.join("m-00001-of-00002.gguf");
        let second = dir.join("m-00002-of-00002.gguf");
        write_gguf_tensor(&first, &split(0), "a", 8, Some(&a));
        write_gguf_tensor(&second, &split(1), "b", 4, Some(&b));
        let g = Gguf::open(&first).unwrap();
        assert_eq!((g.tensors["a"].part, g.tensors["b"].part), (0, 1));
        assert_eq!(g.read_tensor(&g.tensors["a"]).unwrap(), a);
        assert_eq!(g.read_tensor(&g.tensors["b"]).unwrap(), b);
        assert_eq!(g.file_size, std::fs::metadata(&first).unwrap().len() + std::fs::metadata(&second).unwrap().len());

        let e = Gguf::open(&second).unwrap_err().to_string();
        assert!(e.contains("open the first part"), "{e}");
        std::fs::remove_file(&second).unwrap();
        let e = Gguf::open(&first).unwrap_err();
        assert!(matches!(e, GgufError::Open { ref path, .. } if path == &second), "{e}");
    }

    #[test]
    fn a_prefix_of_the_header_is_a_short_read() {
        let p = tmp("prefix.gguf");
        write_gguf(&p, &[("key", Value::String("a longer value".into()))], 8, None);
        let bytes = std::fs::read(&p).unwrap();
        let size = bytes.len() as u64;
        let e = GgufHeader::parse(&bytes[..40], size, &p).unwrap_err();
        assert!(e.is_short_read(), "{e}");
        let h = GgufHeader::parse(&bytes[..], size, &p).unwrap();
        assert_eq!(h.tensors["t"].offset, h.data_start);
        assert!(!GgufHeader::parse(&b"GGUF\x09\0\0\0"[..], size, &p).unwrap_err().is_short_read());
    }

    /// The start of a version 3 header with `n_tensors` tensors and `n_kv` metadata entries.
    fn header_start(n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend(b"GGUF");
        out.extend(3u32.to_le_bytes());
        out.extend(n_tensors.to_le_bytes());
        out.extend(n_kv.to_le_bytes());
        out
    }

    /// Parses `prefix` as the first bytes of a file that claims to be `claimed` bytes long.
    fn parse_prefix(prefix: &[u8], claimed: u64) -> GgufError {
        GgufHeader::parse(prefix, claimed, Path::new("claimed.gguf")).unwrap_err()
    }

    #[test]
    fn a_string_longer_than_the_cap_is_refused_before_it_is_read() {
        // A claimed 4 TiB file whose first key says it is 1 TiB long: only 64 bytes are at hand.
        let mut out = header_start(0, 1);
        out.extend((1u64 << 40).to_le_bytes());
        out.extend([b'k'; 64]);
        let e = parse_prefix(&out, 1 << 42);
        assert!(matches!(e, GgufError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("64 MiB a header string may have"), "{e}");
        // Under the cap, a length the prefix does not hold is a short read, with nothing allocated ahead.
        let mut out = header_start(0, 1);
        out.extend((32u64 << 20).to_le_bytes());
        out.extend([b'k'; 64]);
        assert!(parse_prefix(&out, 1 << 42).is_short_read());
    }

    #[test]
    fn an_array_count_over_the_cap_is_refused_before_items_are_read() {
        let mut out = header_start(0, 1);
        out.extend(1u64.to_le_bytes());
        out.push(b'a');
        out.extend(9u32.to_le_bytes()); // array
        out.extend(0u32.to_le_bytes()); // of u8
        out.extend((1u64 << 36).to_le_bytes());
        out.extend([0u8; 64]);
        let e = parse_prefix(&out, 1 << 40);
        assert!(e.to_string().contains(&format!("more than the {MAX_VALUES} a header may have")), "{e}");
        // Within the caps but beyond the bytes at hand: a short read.
        let mut out = out[..out.len() - 72].to_vec();
        out.extend((1u64 << 20).to_le_bytes());
        out.extend([0u8; 64]);
        assert!(parse_prefix(&out, 1 << 40).is_short_read());
    }

    #[test]
    fn a_tensor_count_over_the_cap_is_refused() {
        let mut out = header_start(1 << 30, 0);
        out.extend([0u8; 64]);
        let e = parse_prefix(&out, 1 << 40);
        assert!(e.to_string().contains(&format!("more than the {MAX_TENSORS} a header may have")), "{e}");
        // And a count the claimed file cannot hold.
        let mut out = header_start(1 << 10, 0);
        out.extend([0u8; 64]);
        assert!(parse_prefix(&out, 1000).to_string().contains("more than the file can hold"));
    }

    #[test]
    fn arrays_nested_too_deeply_are_corrupt() {
        let mut out = header_start(0, 1);
        out.extend(1u64.to_le_bytes());
        out.push(b'a');
        out.extend(9u32.to_le_bytes());
        for _ in 0..4 {
            out.extend(9u32.to_le_bytes()); // items are arrays
            out.extend(1u64.to_le_bytes()); // one of them
        }
        out.extend([0u8; 64]);
        let e = parse_prefix(&out, out.len() as u64);
        assert!(e.to_string().contains("nested too deeply"), "{e}");
    }

    #[test]
    fn dimensions_and_offsets_that_overflow_are_corrupt() {
        let p = tmp("overflow.gguf");
        write_gguf(&p, &[], 8, None);
        let bytes = std::fs::read(&p).unwrap();
        // The single tensor's table entry: name (8 + 1), n_dims, dims[0], type, offset.
        let dims_at = 4 + 4 + 8 + 8 + 9 + 4;
        let mut two_dims = bytes[..dims_at - 4].to_vec();
        two_dims.extend(2u32.to_le_bytes());
        two_dims.extend((1u64 << 32).to_le_bytes());
        two_dims.extend((1u64 << 32).to_le_bytes());
        two_dims.extend(&bytes[dims_at + 8..]);
        let e = GgufHeader::parse(&two_dims[..], two_dims.len() as u64, &p).unwrap_err();
        assert!(e.to_string().contains("impossible dimensions"), "{e}");
        let mut far = bytes.clone();
        far[dims_at + 12..dims_at + 20].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = GgufHeader::parse(&far[..], far.len() as u64, &p).unwrap_err();
        assert!(e.to_string().contains("impossible offset"), "{e}");
        assert_eq!(
            TensorInfo { dims: vec![u64::MAX, 2], ..Gguf::open(&p).unwrap().tensors["t"].clone() }.elements(),
            u64::MAX
        );
    }

    #[test]
    fn a_header_claiming_too_many_split_parts_is_corrupt() {
        assert_eq!(split_part_names("m-00001-of-99999999999.gguf", 99_999_999_999), None);
        assert_eq!(split_part_names("m-0001-of-2000.gguf", 2000), None);
        assert_eq!(split_part_names("m-0001-of-1024.gguf", 1024).map(|n| n.len()), Some(1024));
        let dir = tmp("many-parts");
        std::fs::create_dir_all(&dir).unwrap();
        let first = dir.join("m-00001-of-99999999999.gguf");
        write_gguf(&first, &[("split.no", Value::U16(0)), ("split.count", Value::U64(99_999_999_999))], 8, None);
        let e = Gguf::open(&first).unwrap_err();
        assert!(matches!(e, GgufError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("at most 1024"), "{e}");
        let bad_no = dir.join("m-00001-of-00002.gguf");
        write_gguf(&bad_no, &[("split.no", Value::U16(5)), ("split.count", Value::U16(2))], 8, None);
        assert!(Gguf::open(&bad_no).unwrap_err().to_string().contains("split.no"));
    }

    #[test]
    fn missing_file_is_reported() {
        let e = Gguf::open("/nonexistent/model.gguf").unwrap_err();
        assert!(matches!(e, GgufError::Open { .. }));
    }
}
