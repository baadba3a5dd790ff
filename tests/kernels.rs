//! The C kernels of turbo2/turbo3/turbo4, through FFI, against the Rust reference
//! (`turboquant::block`): the quantizer gives the same bytes, dequantization the same values,
//! every SIMD path the scalar result.

use llama_cpp_sys_2 as sys;
use turboquant::block::{TurboType, BLOCK};
use turboquant::random_normal;

fn ggml_type(ty: TurboType) -> sys::ggml_type {
    match ty {
        TurboType::Turbo2 => sys::GGML_TYPE_TURBO2,
        TurboType::Turbo3 => sys::GGML_TYPE_TURBO3,
        TurboType::Turbo4 => sys::GGML_TYPE_TURBO4,
    }
}

fn c_quantize(ty: TurboType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; x.len() / BLOCK * ty.block_bytes()];
    unsafe {
        sys::ggml_turbo_quantize_row_ref(
            ggml_type(ty),
            x.as_ptr(),
            out.as_mut_ptr().cast(),
            x.len() as i64,
        )
    };
    out
}

/// The quantizer the CPU backend uses when it writes the cache (type traits' from_float).
fn cpu_quantize(ty: TurboType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; x.len() / BLOCK * ty.block_bytes()];
    unsafe {
        let traits = &*sys::ggml_get_type_traits_cpu(ggml_type(ty));
        (traits.from_float.expect("turbo types have from_float"))(
            x.as_ptr(),
            out.as_mut_ptr().cast(),
            x.len() as i64,
        );
    }
    out
}

fn c_dequantize(ty: TurboType, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / ty.block_bytes() * BLOCK;
    let mut out = vec![0f32; n];
    unsafe {
        let traits = &*sys::ggml_get_type_traits(ggml_type(ty));
        (traits.to_float.expect("turbo types have to_float"))(
            bytes.as_ptr().cast(),
            out.as_mut_ptr(),
            n as i64,
        );
    }
    out
}

const IMPLS: [(sys::ggml_turbo_impl, &str); 4] = [
    (sys::GGML_TURBO_IMPL_SCALAR, "scalar"),
    (sys::GGML_TURBO_IMPL_AVX2, "avx2"),
    (sys::GGML_TURBO_IMPL_AVX512, "avx512"),
    (sys::GGML_TURBO_IMPL_NEON, "neon"),
];

fn vec_dot(ty: TurboType, imp: sys::ggml_turbo_impl, bytes: &[u8], y: &[f32]) -> Option<f32> {
    let mut s = f32::NAN;
    let ok = unsafe {
        sys::ggml_turbo_cpu_vec_dot(
            ggml_type(ty),
            imp,
            y.len() as i64,
            &mut s,
            bytes.as_ptr().cast(),
            y.as_ptr(),
        )
    };
    ok.then_some(s)
}

fn dequantize_with(ty: TurboType, imp: sys::ggml_turbo_impl, bytes: &[u8]) -> Option<Vec<f32>> {
    let n = bytes.len() / ty.block_bytes() * BLOCK;
    let mut out = vec![f32::NAN; n];
    let ok = unsafe {
        sys::ggml_turbo_cpu_dequantize(
            ggml_type(ty),
            imp,
            n as i64,
            bytes.as_ptr().cast(),
            out.as_mut_ptr(),
        )
    };
    ok.then_some(out)
}

/// Random rows and the adversarial blocks: zeros, a constant, one huge value, tiny values,
/// values beyond fp16, NaN and infinities.
fn test_rows() -> Vec<(String, Vec<f32>)> {
    let mut rows = vec![("gaussian".to_string(), random_normal(BLOCK * 256, 1))];
    let mut scaled = random_normal(BLOCK * 64, 2);
    for (i, v) in scaled.iter_mut().enumerate() {
        *v *= 10f32.powi((i / BLOCK) as i32 % 9 - 4); // blocks from 1e-4 to 1e4
    }
    rows.push(("scales".into(), scaled));
    rows.push(("zeros".into(), vec![0.0; BLOCK]));
    rows.push(("constant".into(), vec![-2.5; BLOCK]));
    let mut spike = vec![0.01f32; BLOCK];
    spike[9] = 3.0e4;
    rows.push(("spike".into(), spike));
    rows.push(("tiny".into(), vec![1e-33; BLOCK]));
    rows.push(("beyond fp16".into(), vec![1e6; BLOCK]));
    let mut bad = random_normal(BLOCK, 3);
    bad[0] = f32::NAN;
    bad[1] = f32::INFINITY;
    bad[2] = f32::NEG_INFINITY;
    rows.push(("nan and inf".into(), bad));
    rows
}

#[test]
fn types_are_registered() {
    for ty in TurboType::ALL {
        let t = ggml_type(ty);
        let name = unsafe { std::ffi::CStr::from_ptr(sys::ggml_type_name(t)) };
        assert_eq!(name.to_str().unwrap(), ty.name());
        assert_eq!(unsafe { sys::ggml_blck_size(t) }, BLOCK as i64);
        assert_eq!(unsafe { sys::ggml_type_size(t) }, ty.block_bytes());
        assert!(unsafe { sys::ggml_is_quantized(t) });
        assert_eq!(unsafe { sys::ggml_row_size(t, 256) }, 4 * ty.block_bytes());
    }
}

#[test]
fn c_quantizer_gives_the_reference_bytes() {
    for ty in TurboType::ALL {
        let f = ty.format();
        for (name, x) in test_rows() {
            let expected = f.quantize_row(&x).unwrap();
            assert_eq!(
                c_quantize(ty, &x),
                expected,
                "{} / {name}: reference quantizer",
                ty.name()
            );
            assert_eq!(
                cpu_quantize(ty, &x),
                expected,
                "{} / {name}: CPU backend quantizer",
                ty.name()
            );
        }
    }
}

#[test]
fn dequantization_matches_and_stays_within_the_bound() {
    for ty in TurboType::ALL {
        let f = ty.format();
        for (name, x) in test_rows() {
            let bytes = f.quantize_row(&x).unwrap();
            let values = c_dequantize(ty, &bytes);
            assert_eq!(
                values,
                f.dequantize_row(&bytes).unwrap(),
                "{} / {name}",
                ty.name()
            );
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{} / {name}",
                ty.name()
            );

            // every value inside the codebook's range is within half a level gap of its input
            for (b, chunk) in bytes.chunks_exact(ty.block_bytes()).enumerate() {
                let block = f.unpack(chunk).unwrap();
                let d = block.d.to_f32();
                let bound = f.max_rounding_error(d) * (1.0 + 1e-5) + 1e-30;
                for i in 0..BLOCK {
                    let xi = x[b * BLOCK + i];
                    if xi.is_finite() && xi.abs() <= d {
                        let err = (xi - values[b * BLOCK + i]).abs();
                        assert!(
                            err <= bound,
                            "{} / {name}: |{xi} - {}| = {err} > {bound}",
                            ty.name(),
                            values[b * BLOCK + i]
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn gaussian_round_trip_error_per_type() {
    let x = random_normal(BLOCK * 2048, 9);
    for (ty, limit) in [
        (TurboType::Turbo4, 0.0072),
        (TurboType::Turbo3, 0.0300),
        (TurboType::Turbo2, 0.1140),
    ] {
        let values = c_dequantize(ty, &c_quantize(ty, &x));
        let mse: f64 = x
            .iter()
            .zip(&values)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum::<f64>()
            / x.len() as f64;
        assert!(mse < limit, "{}: mse {mse} (limit {limit})", ty.name());
    }
}

#[test]
fn every_simd_path_equals_the_scalar_path() {
    let chosen = unsafe { sys::ggml_turbo_cpu_impl() };
    let y = random_normal(BLOCK * 64, 7);
    let mut compiled = Vec::new();
    for ty in TurboType::ALL {
        for (name, x) in test_rows() {
            let x: Vec<f32> = x.iter().cycle().take(y.len()).copied().collect();
            let bytes = c_quantize(ty, &x);
            let scalar =
                vec_dot(ty, sys::GGML_TURBO_IMPL_SCALAR, &bytes, &y).expect("scalar path exists");
            let scalar_values = dequantize_with(ty, sys::GGML_TURBO_IMPL_SCALAR, &bytes).unwrap();
            // the scale of the sum, for a tolerance on reassociated float additions
            let magnitude: f32 = scalar_values
                .iter()
                .zip(&y)
                .map(|(a, b)| (a * b).abs())
                .sum();
            for (imp, imp_name) in IMPLS {
                let Some(dot) = vec_dot(ty, imp, &bytes, &y) else {
                    continue;
                };
                compiled.push(imp_name);
                assert!(
                    (dot - scalar).abs() <= 1e-5 * magnitude + 1e-30,
                    "{} / {name} / {imp_name}: {dot} vs scalar {scalar}",
                    ty.name()
                );
                let values = dequantize_with(ty, imp, &bytes).unwrap();
                assert_eq!(
                    values,
                    scalar_values,
                    "{} / {name} / {imp_name}: dequantize",
                    ty.name()
                );
            }
            // and the type traits' vec_dot (what flash attention calls) is the chosen path
            let mut s = 0f32;
            unsafe {
                let traits = &*sys::ggml_get_type_traits_cpu(ggml_type(ty));
                assert_eq!(
                    traits.vec_dot_type,
                    sys::GGML_TYPE_F32,
                    "the query stays in f32"
                );
                (traits.vec_dot.unwrap())(
                    y.len() as i32,
                    &mut s,
                    0,
                    bytes.as_ptr().cast(),
                    0,
                    y.as_ptr().cast(),
                    0,
                    1,
                );
            }
            assert_eq!(
                Some(s),
                vec_dot(ty, chosen, &bytes, &y),
                "{} / {name}",
                ty.name()
            );
        }
    }
    compiled.sort();
    compiled.dedup();
    assert!(compiled.contains(&"scalar"));
    // the path the backend uses is among those held against the scalar one
    let chosen_name = IMPLS.iter().find(|(i, _)| *i == chosen).unwrap().1;
    assert!(compiled.contains(&chosen_name));
    eprintln!("paths compiled and checked: {compiled:?}; the backend uses {chosen_name}");
}
