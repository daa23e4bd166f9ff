//! Account tokens: reading their claims (and, with issue 4, verifying them).

pub mod claims;
