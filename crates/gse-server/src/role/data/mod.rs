//! Data role (in progress).
