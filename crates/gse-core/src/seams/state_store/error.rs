//! [`StoreError`]: why a state store could not do what was asked, with a
//! [`StoreErrorKind`] a caller can act on (retry, report a conflict, give
//! up) without reading the message.

use std::fmt;

/// What kind of failure a [`StoreError`] is; each store maps its backend's
/// errors to these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// The backend cannot be reached or is busy (Redis down, a timeout,
    /// SQLite locked or its disk full): the same call may work later.
    Unavailable,
    /// The write collides with what is stored (a uniqueness rule, a
    /// concurrent change): re-read, then decide.
    Conflict,
    /// Something the call needs does not exist.
    NotFound,
    /// The call itself is wrong (an argument out of range, a malformed
    /// record): sending it again fails the same way.
    Invalid,
    /// What is stored cannot be read back (a damaged file, a record this
    /// version does not understand): an operator must look.
    Corrupt,
    /// A bug or an unexpected backend failure.
    Internal,
}

impl StoreErrorKind {
    /// Words for messages: "unavailable", "conflict", ...
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::Unavailable => "unavailable",
            StoreErrorKind::Conflict => "conflict",
            StoreErrorKind::NotFound => "not found",
            StoreErrorKind::Invalid => "invalid request",
            StoreErrorKind::Corrupt => "corrupt data",
            StoreErrorKind::Internal => "internal error",
        }
    }
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the store could not do what was asked: the kind, which store
/// (`backend`: "embedded", "redis"), what it was doing, and the backend's
/// own words.
#[derive(Debug, thiserror::Error)]
#[error("state store {backend} {kind} while {doing}: {message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    backend: &'static str,
    doing: &'static str,
    message: String,
}

impl StoreError {
    pub fn new(
        kind: StoreErrorKind,
        backend: &'static str,
        doing: &'static str,
        message: impl Into<String>,
    ) -> Self {
        StoreError {
            kind,
            backend,
            doing,
            message: message.into(),
        }
    }

    pub fn unavailable(
        backend: &'static str,
        doing: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::new(StoreErrorKind::Unavailable, backend, doing, message)
    }

    pub fn conflict(
        backend: &'static str,
        doing: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::new(StoreErrorKind::Conflict, backend, doing, message)
    }

    pub fn not_found(
        backend: &'static str,
        doing: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::new(StoreErrorKind::NotFound, backend, doing, message)
    }

    pub fn invalid(backend: &'static str, doing: &'static str, message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Invalid, backend, doing, message)
    }

    pub fn corrupt(backend: &'static str, doing: &'static str, message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Corrupt, backend, doing, message)
    }

    pub fn internal(
        backend: &'static str,
        doing: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self::new(StoreErrorKind::Internal, backend, doing, message)
    }

    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Which store failed ("embedded", "redis").
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// What the store was doing ("saving task records").
    pub fn doing(&self) -> &'static str {
        self.doing
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the same call may succeed later unchanged: only when the
    /// backend was unavailable. Writers keep such a batch and send it
    /// again; anything else is reported.
    pub fn is_retryable(&self) -> bool {
        self.kind == StoreErrorKind::Unavailable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_retryable_and_the_message_names_everything() {
        let e = StoreError::unavailable("redis", "listing agents", "connection refused");
        assert!(e.is_retryable());
        assert_eq!(e.kind(), StoreErrorKind::Unavailable);
        assert_eq!(
            e.to_string(),
            "state store redis unavailable while listing agents: connection refused"
        );
        for e in [
            StoreError::conflict("b", "d", "m"),
            StoreError::not_found("b", "d", "m"),
            StoreError::invalid("b", "d", "m"),
            StoreError::corrupt("b", "d", "m"),
            StoreError::internal("b", "d", "m"),
        ] {
            assert!(!e.is_retryable(), "{e}");
        }
    }
}
