//! The crate's error type.

/// Errors returned for invalid parameters or inputs. The crate never panics on user input; every
/// fallible public function returns this error instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A bit width outside the range the operation supports.
    #[error("invalid bit width {bits}: expected {min}..={max}")]
    InvalidBits {
        /// The bit width that was asked for.
        bits: u8,
        /// The smallest accepted width.
        min: u8,
        /// The largest accepted width.
        max: u8,
    },
    /// A vector dimension the operation cannot handle (zero, or not a power of two for the
    /// Hadamard rotation, ...).
    #[error("invalid dimension {dim}: {reason}")]
    InvalidDimension {
        /// The dimension that was asked for.
        dim: usize,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A slice whose length does not match what the operation expects.
    #[error("length mismatch for {what}: expected {expected}, got {actual}")]
    LengthMismatch {
        /// Which argument had the wrong length.
        what: &'static str,
        /// The expected length.
        expected: usize,
        /// The length that was passed.
        actual: usize,
    },
    /// Any other invalid argument (non-finite values, negative weights, bad shapes, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// Shorthand for `std::result::Result<T, turboquant::Error>`.
pub type Result<T> = std::result::Result<T, Error>;

/// Returns `LengthMismatch` unless `actual == expected`.
pub(crate) fn check_len(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            what,
            expected,
            actual,
        })
    }
}

/// Returns `InvalidInput` if any value is NaN or infinite.
pub(crate) fn check_finite(what: &'static str, values: &[f32]) -> Result<()> {
    if values.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(Error::InvalidInput(format!(
            "{what} contains a NaN or infinite value"
        )))
    }
}
