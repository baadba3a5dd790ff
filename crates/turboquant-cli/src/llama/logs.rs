//! llama.cpp's log, captured.
//!
//! llama.cpp prints a great deal to stderr; we route its log through a callback that keeps the
//! recent lines (shown with `--verbose`, quoted in errors) and lets callers read what llama.cpp
//! reported about a step, such as the KV-cache size line.

use std::collections::VecDeque;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use llama_cpp_sys_2 as sys;

/// How many log lines are kept.
const KEEP: usize = 4000;

struct Log {
    /// Completed lines, oldest first, each with its level.
    lines: VecDeque<(sys::ggml_log_level, String)>,
    /// Total number of lines ever completed (so marks stay valid when old lines drop out).
    total: u64,
    /// Text of a line still being written (llama.cpp logs some lines in pieces).
    partial: String,
    partial_level: sys::ggml_log_level,
}

static LOG: Mutex<Log> = Mutex::new(Log {
    lines: VecDeque::new(),
    total: 0,
    partial: String::new(),
    partial_level: sys::GGML_LOG_LEVEL_INFO,
});
static ECHO: AtomicBool = AtomicBool::new(false);

/// Routes llama.cpp's (and ggml's) log through [`capture`]. With `echo`, lines also go to stderr.
pub fn install(echo: bool) {
    ECHO.store(echo, Ordering::Relaxed);
    // SAFETY: the callback is a plain function that lives for the whole program.
    unsafe { sys::llama_log_set(Some(capture), std::ptr::null_mut()) };
}

unsafe extern "C" fn capture(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for the call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if ECHO.load(Ordering::Relaxed) {
        eprint!("{text}");
    }
    let Ok(mut log) = LOG.lock() else { return };
    if level != sys::GGML_LOG_LEVEL_CONT {
        log.partial_level = level;
    }
    log.partial.push_str(&text);
    while let Some(end) = log.partial.find('\n') {
        let line = log.partial[..end].to_string();
        log.partial.drain(..=end);
        let level = log.partial_level;
        if log.lines.len() == KEEP {
            log.lines.pop_front();
        }
        log.lines.push_back((level, line));
        log.total += 1;
    }
}

/// A position in the log: lines after it can be read back with [`lines_since`].
#[derive(Clone, Copy, Debug)]
pub struct Mark(u64);

pub fn mark() -> Mark {
    Mark(LOG.lock().map(|log| log.total).unwrap_or(0))
}

/// The lines completed after `mark` (those still kept).
pub fn lines_since(mark: Mark) -> Vec<String> {
    let Ok(log) = LOG.lock() else {
        return Vec::new();
    };
    let first_kept = log.total - log.lines.len() as u64;
    let skip = mark.0.saturating_sub(first_kept) as usize;
    log.lines
        .iter()
        .skip(skip)
        .map(|(_, line)| line.clone())
        .collect()
}

/// The warnings and errors logged after `mark`, for error messages.
pub fn problems_since(mark: Mark) -> Vec<String> {
    let Ok(log) = LOG.lock() else {
        return Vec::new();
    };
    let first_kept = log.total - log.lines.len() as u64;
    let skip = mark.0.saturating_sub(first_kept) as usize;
    log.lines
        .iter()
        .skip(skip)
        .filter(|(level, _)| {
            *level == sys::GGML_LOG_LEVEL_ERROR || *level == sys::GGML_LOG_LEVEL_WARN
        })
        .map(|(_, line)| line.trim().to_string())
        .collect()
}
