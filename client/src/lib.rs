//! Client crate (see issue 4).
