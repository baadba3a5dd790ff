//! A model and a context made through the raw bindings, for what llama-cpp-2 does not expose:
//! an eval callback that sees the tensors of a forward pass (to capture Q, K and V), and the
//! turbo-cache parameters a context measured.

use std::ffi::{c_void, CString};
use std::marker::PhantomData;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use llama_cpp_sys_2 as sys;

use super::{backend, logs, KvTypes};

/// Called for every graph node: with `ask` true, return whether you want its data; then once more
/// with `ask` false and the data computed.
pub type EvalCallback = unsafe extern "C" fn(*mut sys::ggml_tensor, bool, *mut c_void) -> bool;

pub struct RawModel {
    ptr: *mut sys::llama_model,
}

impl RawModel {
    pub fn load(path: &Path, n_gpu_layers: u32) -> Result<RawModel> {
        super::GgufFile::open(path)?;
        backend();
        let c_path =
            CString::new(path.to_string_lossy().as_bytes()).context("NUL in the model path")?;
        let mark = logs::mark();
        // SAFETY: default parameters, a valid path; the result is checked for null.
        let ptr = unsafe {
            let mut params = sys::llama_model_default_params();
            params.n_gpu_layers = n_gpu_layers as i32;
            sys::llama_model_load_from_file(c_path.as_ptr(), params)
        };
        if ptr.is_null() {
            bail!(
                "llama.cpp could not load {}: {}",
                path.display(),
                logs::problems_since(mark).join("; ")
            );
        }
        Ok(RawModel { ptr })
    }

    /// Tokens of `text`, with the model's BOS if it adds one.
    pub fn tokenize(&self, text: &str) -> Result<Vec<i32>> {
        // SAFETY: the vocab belongs to the live model; buffers are sized before the call.
        unsafe {
            let vocab = sys::llama_model_get_vocab(self.ptr);
            let mut tokens = vec![0i32; text.len() + 8];
            let n = sys::llama_tokenize(
                vocab,
                text.as_ptr().cast(),
                text.len() as i32,
                tokens.as_mut_ptr(),
                tokens.len() as i32,
                true,
                false,
            );
            if n < 0 {
                bail!("the text does not tokenize");
            }
            tokens.truncate(n as usize);
            Ok(tokens)
        }
    }
}

impl Drop for RawModel {
    fn drop(&mut self) {
        // SAFETY: loaded by llama_model_load_from_file, freed once.
        unsafe { sys::llama_model_free(self.ptr) };
    }
}

/// The largest micro-batch a context computes at once. llama.cpp reserves compute buffers for a
/// micro-batch in which every token outputs logits: with Gemma-3's 262144-token vocabulary, one of
/// 32768 tokens asks for 37 GB. Longer batches are computed in micro-batches of this size.
const MAX_UBATCH: u32 = 2048;

pub struct RawContext<'m> {
    ptr: *mut sys::llama_context,
    n_batch: u32,
    _model: PhantomData<&'m RawModel>,
}

impl<'m> RawContext<'m> {
    /// A context of `n_ctx` tokens that decodes up to `n_batch` tokens in one call (in micro-batches
    /// of at most `MAX_UBATCH`), with the given cache types and, optionally, an eval callback and its data (which must outlive the
    /// context).
    pub fn new(
        model: &'m RawModel,
        n_ctx: u32,
        n_batch: u32,
        threads: i32,
        types: KvTypes,
        callback: Option<(EvalCallback, *mut c_void)>,
    ) -> Result<RawContext<'m>> {
        let _one_at_a_time = super::CONTEXT_CREATION
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mark = logs::mark();
        // SAFETY: plain parameters; the callback data outlives the context (the caller's promise).
        let ptr = unsafe {
            let mut params = sys::llama_context_default_params();
            params.n_ctx = n_ctx;
            params.n_batch = n_batch;
            params.n_ubatch = n_batch.min(MAX_UBATCH);
            params.n_threads = threads;
            params.n_threads_batch = threads;
            params.type_k = types.k.to_llama().into();
            params.type_v = types.v.to_llama().into();
            params.flash_attn_type = sys::LLAMA_FLASH_ATTN_TYPE_ENABLED;
            params.swa_full = false;
            if let Some((cb, data)) = callback {
                params.cb_eval = Some(cb);
                params.cb_eval_user_data = data;
            }
            sys::llama_init_from_model(model.ptr, params)
        };
        if ptr.is_null() {
            bail!(
                "llama.cpp could not create a context of {n_ctx} tokens: {}",
                logs::problems_since(mark).join("; ")
            );
        }
        Ok(RawContext {
            ptr,
            n_batch,
            _model: PhantomData,
        })
    }

    /// Decodes `tokens` after what the cache holds, in batches.
    pub fn decode(&mut self, tokens: &[i32]) -> Result<()> {
        for chunk in tokens.chunks(self.n_batch as usize) {
            let mut chunk = chunk.to_vec();
            // SAFETY: the batch points into `chunk`, alive for the call.
            let status = unsafe {
                let batch = sys::llama_batch_get_one(chunk.as_mut_ptr(), chunk.len() as i32);
                sys::llama_decode(self.ptr, batch)
            };
            if status != 0 {
                return Err(anyhow!("llama_decode failed ({status})"));
            }
        }
        Ok(())
    }

    /// The calibrated turbo transform of layer `il` (mean and scales, KV head by KV head), if the
    /// layer has a turbo cache.
    pub fn turbo_params(&self, il: usize, n: usize) -> Option<(Vec<f32>, Vec<f32>)> {
        let mut mu = vec![0f32; n];
        let mut scale = vec![0f32; n];
        // SAFETY: buffers of n floats each.
        let ok = unsafe {
            sys::llama_turbo_layer_params(
                self.ptr,
                il as i32,
                mu.as_mut_ptr(),
                scale.as_mut_ptr(),
                n as i64,
            )
        };
        ok.then_some((mu, scale))
    }
}

impl Drop for RawContext<'_> {
    fn drop(&mut self) {
        // SAFETY: created by llama_init_from_model, freed once.
        unsafe { sys::llama_free(self.ptr) };
    }
}
