//! Empty: this package exists only to pin the upstream source in Cargo.lock.
