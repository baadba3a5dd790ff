//! Work spread over scoped threads, with the results kept in order.

/// Runs `f` on every job, spread over up to `threads` scoped threads in contiguous blocks, and
/// returns the results in the jobs' order, so results (and any sum over them) do not depend on
/// the thread count. A panic in `f` is raised again in the caller.
pub fn map<J: Send, R: Send>(jobs: Vec<J>, threads: usize, f: impl Fn(J) -> R + Sync) -> Vec<R> {
    if threads <= 1 || jobs.len() <= 1 {
        return jobs.into_iter().map(f).collect();
    }
    let per_thread = jobs.len().div_ceil(threads);
    let mut jobs = jobs.into_iter();
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = std::iter::from_fn(|| {
            let part: Vec<J> = jobs.by_ref().take(per_thread).collect();
            (!part.is_empty())
                .then(|| scope.spawn(move || part.into_iter().map(f).collect::<Vec<R>>()))
        })
        .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_order_for_any_thread_count() {
        let jobs: Vec<usize> = (0..10).collect();
        let expected: Vec<usize> = jobs.iter().map(|j| j * j).collect();
        for threads in [0, 1, 3, 4, 10, 16] {
            assert_eq!(
                map(jobs.clone(), threads, |j| j * j),
                expected,
                "{threads} threads"
            );
        }
        assert!(map(Vec::<usize>::new(), 4, |j| j).is_empty());
    }
}
