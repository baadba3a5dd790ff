//! Capturing the queries and keys of every layer during one forward pass.
//!
//! llama.cpp names the query and key tensors of layer `il` `Qcur-il` and `Kcur-il`, several times
//! on their way (after the projection, the reshape, RoPE); the last of them is what attention
//! reads. The eval callback keeps the latest 3-D tensor of each name; a layer's tensors of one
//! micro-batch are final when the pass moves on to the next layer. A long pass runs in several
//! micro-batches, each through every layer, so each layer's tokens are appended micro-batch by
//! micro-batch and the layers are handed to the analysis once the pass has ended.

use std::collections::BTreeMap;
use std::ffi::{c_void, CStr};

use llama_cpp_sys_2 as sys;

/// One layer's post-RoPE queries and keys, token-major: q is (tokens, q_heads, head_dim), k is
/// (tokens, kv_heads, head_dim).
pub struct LayerQk {
    pub layer: usize,
    pub head_dim: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
}

struct Tensor {
    data: Vec<f32>,
    ne: [usize; 3],
}

/// State shared with the callback.
pub struct Capture<'a> {
    current: Option<usize>,
    q: Option<Tensor>,
    k: Option<Tensor>,
    /// Every layer's tokens so far (token-major q and k, each tensor's ne).
    layers: BTreeMap<usize, (Tensor, Tensor)>,
    on_layer: Box<dyn FnMut(LayerQk) + 'a>,
    pub layers_seen: usize,
}

impl<'a> Capture<'a> {
    pub fn new(on_layer: impl FnMut(LayerQk) + 'a) -> Capture<'a> {
        Capture {
            current: None,
            q: None,
            k: None,
            layers: BTreeMap::new(),
            on_layer: Box::new(on_layer),
            layers_seen: 0,
        }
    }

    /// Appends the current layer's tensors of this micro-batch to what the layer holds.
    fn settle(&mut self) {
        if let (Some(layer), Some(q), Some(k)) = (self.current, self.q.take(), self.k.take()) {
            let fits = q.ne[2] == k.ne[2] && q.ne[0] == k.ne[0] && q.ne[1] % k.ne[1] == 0;
            match self.layers.get_mut(&layer) {
                Some((lq, lk)) if fits && lq.ne[..2] == q.ne[..2] && lk.ne[..2] == k.ne[..2] => {
                    lq.data.extend_from_slice(&q.data);
                    lq.ne[2] += q.ne[2];
                    lk.data.extend_from_slice(&k.data);
                    lk.ne[2] += k.ne[2];
                }
                None if fits => {
                    self.layers.insert(layer, (q, k));
                }
                _ => {}
            }
        }
        self.current = None;
    }

    /// Hands over every layer, in order (call after the forward pass).
    pub fn finish(&mut self) {
        self.settle();
        for (layer, (q, k)) in std::mem::take(&mut self.layers) {
            self.layers_seen += 1;
            (self.on_layer)(LayerQk {
                layer,
                head_dim: q.ne[0],
                q_heads: q.ne[1],
                kv_heads: k.ne[1],
                q: q.data,
                k: k.data,
            });
        }
    }

    fn offer(&mut self, which: char, layer: usize, tensor: Tensor) {
        if self.current != Some(layer) {
            self.settle();
            self.current = Some(layer);
        }
        match which {
            'Q' => self.q = Some(tensor),
            _ => self.k = Some(tensor),
        }
    }
}

fn parse(name: &str) -> Option<(char, usize)> {
    let (which, rest) = name.split_at_checked(5)?;
    let which = match which {
        "Qcur-" => 'Q',
        "Kcur-" => 'K',
        _ => return None,
    };
    Some((which, rest.parse().ok()?))
}

/// The eval callback: `user_data` is a `*mut Capture`.
pub unsafe extern "C" fn callback(
    t: *mut sys::ggml_tensor,
    ask: bool,
    user_data: *mut c_void,
) -> bool {
    // SAFETY: llama.cpp passes a valid tensor; user_data is the Capture given with the callback.
    let (t, capture) = unsafe { (&*t, &mut *(user_data as *mut Capture)) };
    let name = unsafe { CStr::from_ptr(t.name.as_ptr()) }.to_string_lossy();
    let Some((which, layer)) = parse(&name) else {
        return !ask; // not wanted; keep computing
    };
    let three_d = t.ne[2] > 1 && t.ne[3] == 1 && t.type_ == sys::GGML_TYPE_F32;
    if ask {
        return three_d;
    }
    // SAFETY: a computed tensor; contiguity is checked before reading its bytes.
    if three_d && unsafe { sys::ggml_is_contiguous(t) } {
        let n = (t.ne[0] * t.ne[1] * t.ne[2]) as usize;
        let mut data = vec![0f32; n];
        unsafe { sys::ggml_backend_tensor_get(t, data.as_mut_ptr().cast(), 0, n * 4) };
        capture.offer(
            which,
            layer,
            Tensor {
                data,
                ne: [t.ne[0] as usize, t.ne[1] as usize, t.ne[2] as usize],
            },
        );
    }
    true
}
