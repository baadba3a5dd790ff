use turboquant::codebook::Codebook;
fn main() {
    for bits in 1..=8u8 {
        for (name, f) in [
            ("gauss", 0usize),
            ("s128", 128),
            ("s3", 3),
            ("s4", 4),
            ("s4096", 4096),
            ("s2", 2),
        ] {
            let t = std::time::Instant::now();
            let cb = if f == 0 {
                Codebook::gaussian(1.0, bits).unwrap()
            } else {
                Codebook::sphere(f, bits).unwrap()
            };
            let el = t.elapsed();
            let d = cb.distortion().unwrap() * if f == 0 { 1.0 } else { f as f64 };
            println!(
                "{bits} {name:6} it={:4} conv={} D*d={:.6e} c_max={:.6} t={:?}",
                cb.iterations(),
                cb.converged(),
                d,
                cb.centroids_f64().last().unwrap(),
                el
            );
        }
    }
}
