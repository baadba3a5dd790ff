//! Reading the text a command works on, with errors that say what is wrong with it.

use std::io::{IsTerminal, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// A whole text file that must be non-empty UTF-8.
pub fn read_text_file(path: &Path) -> Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read text file {}", path.display()))?;
    text_from_bytes(bytes, &path.display().to_string())
}

/// Checks that `bytes` (read from `origin`) are non-empty UTF-8 text.
pub fn text_from_bytes(bytes: Vec<u8>, origin: &str) -> Result<String> {
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{origin} is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    if text.trim().is_empty() {
        bail!("{origin} is empty: there is no text to work on");
    }
    Ok(text)
}

/// The prompt from `-p`, else from the file of `-f`, else from stdin when it is not a terminal.
pub fn prompt(prompt: Option<&str>, file: Option<&Path>) -> Result<String> {
    if let Some(p) = prompt {
        return text_from_bytes(p.as_bytes().to_vec(), "the prompt");
    }
    if let Some(path) = file {
        return read_text_file(path);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!("no prompt: pass -p TEXT, -f FILE, or pipe the prompt into stdin");
    }
    let mut bytes = Vec::new();
    stdin
        .lock()
        .read_to_end(&mut bytes)
        .context("cannot read the prompt from stdin")?;
    text_from_bytes(bytes, "the prompt from stdin")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_and_non_utf8() {
        assert!(text_from_bytes(b"  \n".to_vec(), "x")
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let err = text_from_bytes(vec![b'a', 0xff, b'b'], "x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not UTF-8") && err.contains("offset 1"),
            "{err}"
        );
        assert_eq!(text_from_bytes(b"hi".to_vec(), "x").unwrap(), "hi");
    }
}
