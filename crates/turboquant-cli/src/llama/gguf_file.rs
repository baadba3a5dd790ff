//! Checking a GGUF file before llama.cpp sees it, and reading its metadata.
//!
//! llama.cpp reports a bad file with a null pointer and a log line; we look first, so that a
//! missing, foreign or truncated file gets a message that says which and why.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use llama_cpp_sys_2 as sys;

/// One metadata value (arrays of anything but integers are not kept).
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    IntArray(Vec<i64>),
    Other,
}

/// A GGUF file whose header, metadata and tensor table were read and found whole.
#[derive(Debug)]
pub struct GgufFile {
    pub path: PathBuf,
    pub size: u64,
    pub metadata: BTreeMap<String, MetaValue>,
}

/// Owns a `gguf_context` read with `no_alloc` (metadata only).
struct RawGguf(*mut sys::gguf_context);

impl Drop for RawGguf {
    fn drop(&mut self) {
        // SAFETY: the pointer came from gguf_init_from_file and is freed once.
        unsafe { sys::gguf_free(self.0) };
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<GgufFile> {
        let meta = std::fs::metadata(path).with_context(|| {
            format!(
                "model file {} not found (pass -m FILE.gguf or a model alias)",
                path.display()
            )
        })?;
        if !meta.is_file() {
            bail!("model path {} is not a file", path.display());
        }
        let size = meta.len();
        let mut magic = [0u8; 4];
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("cannot open model file {}", path.display()))?;
        if size < 4 || file.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
            bail!(
                "{} is not a GGUF file (it does not start with the GGUF magic)",
                path.display()
            );
        }
        drop(file);

        let c_path = CString::new(path.to_string_lossy().as_bytes())
            .context("the model path contains a NUL byte")?;
        let params = sys::gguf_init_params {
            no_alloc: true,
            ctx: std::ptr::null_mut(),
        };
        // SAFETY: a valid C string and plain parameters; the result is checked for null.
        let raw = unsafe { sys::gguf_init_from_file(c_path.as_ptr(), params) };
        if raw.is_null() {
            bail!(
                "{} is not a readable GGUF file: its header or metadata is damaged or cut short",
                path.display()
            );
        }
        let raw = RawGguf(raw);
        let ctx = raw.0.cast_const();

        // SAFETY (all calls below): ctx is a valid gguf_context; ids are within the counts.
        let n_tensors = unsafe { sys::gguf_get_n_tensors(ctx) }.max(0) as u64;
        let data_offset = unsafe { sys::gguf_get_data_offset(ctx) } as u64;
        let mut data_end = data_offset;
        for id in 0..n_tensors as i64 {
            let offset = unsafe { sys::gguf_get_tensor_offset(ctx, id) } as u64;
            let bytes = unsafe { sys::gguf_get_tensor_size(ctx, id) } as u64;
            data_end = data_end.max(data_offset + offset + bytes);
        }
        if data_end > size {
            bail!(
                "{} is truncated: its tensors need {} bytes but the file has {} (an interrupted \
                 download or copy?)",
                path.display(),
                data_end,
                size
            );
        }

        let mut metadata = BTreeMap::new();
        let n_kv = unsafe { sys::gguf_get_n_kv(ctx) };
        for id in 0..n_kv {
            let key = unsafe { CStr::from_ptr(sys::gguf_get_key(ctx, id)) }.to_string_lossy();
            metadata.insert(key.into_owned(), unsafe { read_value(ctx, id) });
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            size,
            metadata,
        })
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            MetaValue::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn architecture(&self) -> Option<&str> {
        self.str("general.architecture")
    }

    /// An integer under the architecture's prefix (`llama.context_length`).
    pub fn arch_int(&self, suffix: &str) -> Option<i64> {
        self.int(&format!("{}.{suffix}", self.architecture()?))
    }

    /// A per-layer integer that GGUF stores either once or as an array of one per layer.
    pub fn arch_per_layer(&self, suffix: &str, n_layers: usize) -> Option<Vec<i64>> {
        match self.get(&format!("{}.{suffix}", self.architecture()?))? {
            MetaValue::Int(v) => Some(vec![*v; n_layers]),
            MetaValue::IntArray(values) if values.len() == n_layers => Some(values.clone()),
            _ => None,
        }
    }
}

/// SAFETY: `ctx` must be valid and `id` below its key count.
unsafe fn read_value(ctx: *const sys::gguf_context, id: i64) -> MetaValue {
    unsafe {
        match sys::gguf_get_kv_type(ctx, id) {
            sys::GGUF_TYPE_UINT8 => MetaValue::Int(sys::gguf_get_val_u8(ctx, id).into()),
            sys::GGUF_TYPE_INT8 => MetaValue::Int(sys::gguf_get_val_i8(ctx, id).into()),
            sys::GGUF_TYPE_UINT16 => MetaValue::Int(sys::gguf_get_val_u16(ctx, id).into()),
            sys::GGUF_TYPE_INT16 => MetaValue::Int(sys::gguf_get_val_i16(ctx, id).into()),
            sys::GGUF_TYPE_UINT32 => MetaValue::Int(sys::gguf_get_val_u32(ctx, id).into()),
            sys::GGUF_TYPE_INT32 => MetaValue::Int(sys::gguf_get_val_i32(ctx, id).into()),
            sys::GGUF_TYPE_UINT64 => MetaValue::Int(sys::gguf_get_val_u64(ctx, id) as i64),
            sys::GGUF_TYPE_INT64 => MetaValue::Int(sys::gguf_get_val_i64(ctx, id)),
            sys::GGUF_TYPE_FLOAT32 => MetaValue::Float(sys::gguf_get_val_f32(ctx, id).into()),
            sys::GGUF_TYPE_FLOAT64 => MetaValue::Float(sys::gguf_get_val_f64(ctx, id)),
            sys::GGUF_TYPE_BOOL => MetaValue::Bool(sys::gguf_get_val_bool(ctx, id)),
            sys::GGUF_TYPE_STRING => MetaValue::Str(
                CStr::from_ptr(sys::gguf_get_val_str(ctx, id))
                    .to_string_lossy()
                    .into_owned(),
            ),
            sys::GGUF_TYPE_ARRAY => read_int_array(ctx, id),
            _ => MetaValue::Other,
        }
    }
}

unsafe fn read_int_array(ctx: *const sys::gguf_context, id: i64) -> MetaValue {
    unsafe {
        // Only integer arrays: gguf_get_arr_data aborts on arrays of strings.
        let elem = sys::gguf_get_arr_type(ctx, id);
        let integer = [
            sys::GGUF_TYPE_UINT8,
            sys::GGUF_TYPE_INT8,
            sys::GGUF_TYPE_UINT16,
            sys::GGUF_TYPE_INT16,
            sys::GGUF_TYPE_UINT32,
            sys::GGUF_TYPE_INT32,
            sys::GGUF_TYPE_UINT64,
            sys::GGUF_TYPE_INT64,
            sys::GGUF_TYPE_BOOL,
        ];
        if !integer.contains(&elem) {
            return MetaValue::Other;
        }
        let n = sys::gguf_get_arr_n(ctx, id);
        let data = sys::gguf_get_arr_data(ctx, id);
        macro_rules! collect {
            ($t:ty) => {
                std::slice::from_raw_parts(data.cast::<$t>(), n)
                    .iter()
                    .map(|&v| v as i64)
                    .collect()
            };
        }
        let values: Vec<i64> = match elem {
            sys::GGUF_TYPE_UINT8 => collect!(u8),
            sys::GGUF_TYPE_INT8 => collect!(i8),
            sys::GGUF_TYPE_UINT16 => collect!(u16),
            sys::GGUF_TYPE_INT16 => collect!(i16),
            sys::GGUF_TYPE_UINT32 => collect!(u32),
            sys::GGUF_TYPE_INT32 => collect!(i32),
            sys::GGUF_TYPE_UINT64 => collect!(u64),
            sys::GGUF_TYPE_INT64 => collect!(i64),
            sys::GGUF_TYPE_BOOL => collect!(u8),
            _ => return MetaValue::Other,
        };
        MetaValue::IntArray(values)
    }
}
